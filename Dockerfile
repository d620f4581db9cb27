# visit-gateway image (docs/deployment.md): `podman build -t visit-gateway .` or `docker build ...`.
# BASE is any image with Python 3.11 and its venv module: by default the official slim image of
# Debian 12 (the release pinned, not a moving `slim`); tests/deploy/test_image.py builds on a
# Debian 12 base made with mmdebstrap (no registry there).
ARG BASE=python:3.11-slim-bookworm

# --- build: the gateway and its dependencies installed into a venv ----------------------------
FROM ${BASE} AS build
# The extras installed with it: `otel` by default, so that tracing.opentelemetry = true can start
# from this image; `--build-arg EXTRAS=` builds without them (smaller, tracing unavailable).
ARG EXTRAS=otel
# pip reads these from the environment: another index (a mirror), and a CA bundle for a network
# whose TLS is re-signed (the test mounts the host's bundle: --volume and --build-arg PIP_CERT).
ARG PIP_INDEX_URL="https://pypi.org/simple" \
    PIP_CERT=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Neither pip nor setuptools is needed to run, so they leave the venv before the final stage.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install "/src${EXTRAS:+[$EXTRAS]}" \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && /opt/venv/bin/gateway --help >/dev/null

# --- final: the venv only, run as an unprivileged user ------------------------------------------
FROM ${BASE}
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
# Listen on every interface: inside a container 127.0.0.1 is unreachable from outside.
# Configuration: GATEWAY_* variables, or a file mounted and named by GATEWAY_CONFIG.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_HOST=0.0.0.0
# 8080: the API (server.port); 9102: /metrics, for Prometheus only (metrics.port).
EXPOSE 8080 9102
USER 10001:10001
ENTRYPOINT ["gateway", "serve"]
