# Stand-in for matrixdotorg/synapse:v<version>: Synapse from PyPI in the python stand-in, with
# curl (the official image's health check uses it), /data as its volume and port 8008.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG SYNAPSE_VERSION
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir "matrix-synapse==${SYNAPSE_VERSION}" \
    && python -c 'import synapse; print("synapse", synapse.__version__)'
VOLUME ["/data"]
EXPOSE 8008/tcp
WORKDIR /data
HEALTHCHECK --start-period=5s --interval=15s --timeout=5s CMD curl -fSs http://localhost:8008/health || exit 1
ENTRYPOINT ["python", "-m", "synapse.app.homeserver"]
