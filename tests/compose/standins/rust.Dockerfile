# Stand-in for the official rust:<version>-<release> image (tests/compose/base-images builds it
# where no registry can be reached): Debian's compilers plus the machine's own Rust toolchain at
# the official image's paths and environment. Build context: a tar stream with `toolchain/`
# (the active toolchain without its docs) and `rustup` (the rustup binary).
ARG BASE=debian:bookworm
FROM ${BASE}
ARG RUST_VERSION
ARG TOOLCHAIN
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl git gcc libc6-dev make pkg-config \
    && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=${RUST_VERSION}
COPY toolchain/ /usr/local/rustup/toolchains/${TOOLCHAIN}/
COPY rustup /usr/local/cargo/bin/rustup
RUN printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' "${TOOLCHAIN}" \
        >/usr/local/rustup/settings.toml \
    && for t in /usr/local/rustup/toolchains/${TOOLCHAIN}/bin/*; do \
         n=${t##*/}; [ -e /usr/local/cargo/bin/$n ] || ln /usr/local/cargo/bin/rustup /usr/local/cargo/bin/$n; done \
    && rustc --version && cargo --version
