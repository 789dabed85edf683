# syntax=docker/dockerfile:1
# The product's images, one build with two targets (docs/deploy.md):
#   docker build --target gateway -t tf-ensemble-gateway:0.1.0 .   # ensemble serve / sync, mlflow server; no TensorFlow
#   docker build --target trainer -t tf-ensemble-trainer:0.1.0 .   # ensemble train-member / assemble / sync, TensorFlow + CUDA
# Dependencies go in a layer of their own, before the source, so a code change rebuilds only the last layers.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim-bookworm AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# One fixed non-root uid for both images: the Kubernetes manifests run as it (runAsNonRoot needs a number).
RUN groupadd --system --gid 10001 ensemble \
    && useradd --system --uid 10001 --gid ensemble --home-dir /home/ensemble --create-home \
       --shell /usr/sbin/nologin ensemble \
    && mkdir -p /models /mlartifacts /workspace /var/lib/ensemble \
    && chown ensemble:ensemble /models /mlartifacts /workspace /var/lib/ensemble
# ^ Mount points owned by that uid: a new named volume takes the image's ownership, so the
#   sync, MLflow, training and the gateway (its last-known-good manifest) write their volumes
#   without running as root.

# ---------------------------------------------------------------------------------------------------
FROM python-base AS gateway-build
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/
RUN python deploy/docker/requirements.py pyproject.toml serving registry > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
# The gateway's layers: contracts at the bottom, serving, registry for the alias source and the
# sync, and the command line on top. No training/: nothing the gateway runs imports it
# (tests/test_layering.py); the training commands register only where training/ is installed.
COPY contracts/ contracts/
COPY serving/ serving/
COPY registry/ registry/
COPY cli/ cli/
RUN pip install --no-cache-dir --no-deps .

FROM python-base AS gateway
LABEL org.opencontainers.image.title="tf-ensemble gateway" \
      org.opencontainers.image.description="Ensemble gateway speaking TF Serving's REST and gRPC API; no TensorFlow" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=gateway-build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/lib/ensemble/healthcheck.py
ENV HOME=/home/ensemble
WORKDIR /home/ensemble
USER 10001:10001
# gRPC (TF Serving's port) and REST (TF Serving's usual REST port, also /healthz, /readyz, /metrics).
EXPOSE 8500 8501
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/ensemble/healthcheck.py"]
ENTRYPOINT ["ensemble", "serve"]

# ---------------------------------------------------------------------------------------------------
FROM python-base AS trainer-build
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml ./
COPY deploy/docker/requirements.py deploy/docker/
# tensorflow[and-cuda]: CUDA and cuDNN arrive as wheels, so only the host's NVIDIA driver is needed.
RUN python deploy/docker/requirements.py pyproject.toml training registry --gpu > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
COPY contracts/ contracts/
COPY serving/ serving/
COPY registry/ registry/
COPY training/ training/
COPY cli/ cli/
RUN pip install --no-cache-dir --no-deps .

FROM python-base AS trainer
LABEL org.opencontainers.image.title="tf-ensemble trainer" \
      org.opencontainers.image.description="Ensemble training (TensorFlow with GPU support), assembly and registry sync" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=trainer-build /opt/venv /opt/venv
# Caches go to /tmp so the container runs with a read-only root filesystem and /tmp as a volume.
ENV HOME=/home/ensemble \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/tmp/keras \
    TF_CPP_MIN_LOG_LEVEL=1
WORKDIR /home/ensemble
USER 10001:10001
ENTRYPOINT ["ensemble"]
CMD ["--help"]
