# Stand-in for the official node:<major>-<release>-slim image: the machine's own Node.js (the
# same major version) at the official paths (/usr/local/bin/node, npm in
# /usr/local/lib/node_modules), the `node` user (uid 1000). Node keeps its own CA list: as on
# the machine, NODE_EXTRA_CA_CERTS adds the system bundle (with the machine's extra CA).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 node \
    && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
COPY node /usr/local/bin/node
COPY npm/ /usr/local/lib/node_modules/npm/
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && node --version && npm --version
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
