# pdscaler container image: `pdscaler` as the entrypoint, running as uid/gid 65532 (non-root).
#   docker build -t ghcr.io/pdscaler/pdscaler:0.1.0 .
#   docker run --rm ghcr.io/pdscaler/pdscaler:0.1.0 serve --config /etc/pdscaler/config.yaml
# The manifests (manifests/base/deployment.yaml) run it with a read-only root filesystem and an
# emptyDir at /tmp, where Prophet/cmdstan write their temporary files (HOME=/tmp).

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/pdscaler
WORKDIR /src
# Only what the package build needs (see .dockerignore).
COPY pyproject.toml README.md NOTICE ./
COPY scaler ./scaler
COPY forecasting ./forecasting
# Binary wheels only: every dependency (prophet with its bundled cmdstan model, pmdarima, grpcio,
# numpy) publishes manylinux wheels for CPython 3.12, so no compiler is needed in the image.
RUN /opt/pdscaler/bin/pip install --only-binary=:all: --no-binary=pdscaler . \
 && /opt/pdscaler/bin/pdscaler --version

FROM python:3.12-slim
LABEL org.opencontainers.image.title="pdscaler" \
      org.opencontainers.image.description="Predictive KEDA external scaler for disaggregated LLM serving" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/pdscaler /opt/pdscaler
COPY NOTICE /usr/share/doc/pdscaler/NOTICE
ENV PATH=/opt/pdscaler/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# The same uid/gid as the Deployment's securityContext (runAsUser 65532), so the image also runs
# non-root outside Kubernetes.
USER 65532:65532
WORKDIR /tmp
EXPOSE 6000 9090
ENTRYPOINT ["pdscaler"]
CMD ["--help"]
