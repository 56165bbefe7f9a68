# Stand-in for the official python:<3.x>-slim-<release> image: Debian's python3 with a venv at
# /usr/local, so `python`, `pip` and site-packages are where the official image has them, and
# pip trusts the system CA bundle (the machine's extra CA included), as pip does on the machine.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates netbase tzdata python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local \
    && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ndisable-pip-version-check = true\n' >/etc/pip.conf \
    && python --version && pip --version
ENV LANG=C.UTF-8
CMD ["python3"]
