# Container image of readiness-sidecar. Build from the repository root:
#   docker build -t ghcr.io/example/readiness-sidecar:0.1.0 .
# The builder stage makes a wheel of the project and installs it with its dependencies into
# a virtual environment; the final stage copies only that environment onto the same base,
# so neither the build tools nor pip end up in the image.

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/

# The environment gets no pip of its own: the base image's pip installs into it. Only binary
# wheels are accepted for the dependencies, because the slim base has no compiler.
RUN python -m venv --without-pip /opt/venv \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /src/dist . \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir \
        --only-binary=:all: /src/dist/readiness_sidecar-*.whl


FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="readiness-sidecar" \
      org.opencontainers.image.description="Probes a Pod's dependencies and serves /ready, /live and /metrics" \
      org.opencontainers.image.licenses="Apache-2.0"

# The scripts in the environment name /opt/venv/bin/python in their first line, so the
# environment keeps the path it was built at.
COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    SIDECAR_CONFIG=/etc/readiness-sidecar/config.yaml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A numeric user, so that the kubelet can enforce runAsNonRoot without a passwd entry.
USER 65532:65532
EXPOSE 8558

# Exec form: the sidecar is PID 1 and receives SIGTERM itself, with no shell in between.
ENTRYPOINT ["readiness-sidecar"]
CMD ["serve", "--config", "/etc/readiness-sidecar/config.yaml"]
