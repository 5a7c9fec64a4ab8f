# One project image for every role of the Docker deployment: Flower's SuperLink, SuperNodes and
# SuperExec executors (all in the `flwr` package), the Fleet gateway (Debian's nginx), and the
# one-shot steps (certificates, synthetic silo data, registration and submission of the run).
#
#   docker compose build                                   # online: public base image and PyPI
#   deploy/prepare-offline.sh && BASE_IMAGE=mergerec-base:bookworm PIP_SOURCE=wheelhouse docker compose build
#                                                          # offline: a local Debian base + a wheelhouse
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG PIP_SOURCE=index

# A debootstrap base has no Python: take Debian's (3.11 on bookworm, the wheelhouse's version).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates nginx-light \
    && if ! command -v python3 >/dev/null; then \
         apt-get install -y --no-install-recommends python3 python3-venv; fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 1000 app
ENV PATH=/opt/venv/bin:$PATH \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY deploy/wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md ./
COPY common ./common
COPY silos ./silos
COPY coordinator ./coordinator
COPY experiments ./experiments
# online: the CPU build of torch from its own index (PyPI's default is a multi-GB CUDA build)
RUN if [ "$PIP_SOURCE" = wheelhouse ]; then \
         pip install --no-cache-dir --no-index --find-links /wheelhouse . ; \
    else \
         pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . ; \
    fi \
    && rm -rf /wheelhouse \
    && python -c "import common, silos.client_app, coordinator.server_app, torch; assert '+cpu' in torch.__version__" \
    && mkdir -p /data /work /results /state \
    && chown app:app /app /data /work /results /state
USER app
