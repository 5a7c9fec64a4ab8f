# Executor image for the ServerApp (coordinator) and the ClientApps (silos): Flower's SuperExec
# with this project and its dependencies baked in, so runs need no runtime installation.
ARG FLWR_VERSION=1.42.0
FROM flwr/superexec:${FLWR_VERSION}

WORKDIR /app
# CPU build of torch first (the default index would pull a multi-GB CUDA build).
RUN python -m pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app common ./common
COPY --chown=app:app silos ./silos
COPY --chown=app:app coordinator ./coordinator
COPY --chown=app:app experiments ./experiments
RUN python -m pip install --no-cache-dir . \
    && python -c "import common, silos.client_app, coordinator.server_app"
USER root
RUN mkdir -p /work /app/results && chown app:app /work /app/results   # silo and coordinator volumes
USER app
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
ENTRYPOINT ["flower-superexec"]
