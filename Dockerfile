# Tactician proxy. Mirrors the README: scripts/setup installs everything into .venv,
# scripts/serve runs the proxy with config.yaml.
FROM python:3.11-slim-bookworm

# A compiler and CMake for llama-cpp-python, which builds from source.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 cmake=3.25.1-1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# PyPI's Linux torch wheel is the CUDA build (gigabytes of NVIDIA libraries); the
# proxy and the CPU learner need the CPU one, which PyTorch's own index serves as
# torch==2.13.0+cpu (pip prefers it: a local version label sorts above the plain one).
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.txt requirements-dev.txt ./
COPY scripts/ scripts/
RUN scripts/setup

COPY proxy/ proxy/
COPY learner/ learner/
COPY config.yaml ./

# Listen on all interfaces inside the container; state lives in the /app/data volume.
ENV TACTICIAN_CONFIG=/app/config.yaml \
    TACTICIAN_LISTEN=0.0.0.0:8787
VOLUME ["/app/data"]
EXPOSE 8787
CMD ["scripts/serve"]
