# LLPF Explorer: the Streamlit dashboard (served: app/serve.py, docs/threat-model.md) and the `python -m llpf_core`
# CLI in one image.
#
#   CPU:  docker build -t llpf .
#         docker run --rm -p 127.0.0.1:8501:8501 -e STREAMLIT_SERVER_ADDRESS=0.0.0.0 -v llpf-workspace:/workspace llpf
#   GPU:  docker build --build-arg BASE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 -t llpf-gpu .
#         docker run --rm --gpus all -p 127.0.0.1:8501:8501 -e STREAMLIT_SERVER_ADDRESS=0.0.0.0 \
#           -v llpf-workspace:/workspace llpf-gpu
#
# The server listens on 127.0.0.1 inside the container unless STREAMLIT_SERVER_ADDRESS opts in; see the
# README's Docker section for why the run commands above are still local only.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# A CUDA base image has no Python: install the distribution's. Version pins would tie the file to one
# base image, so apt takes the distribution's current packages.
# hadolint ignore=DL3008
RUN if ! command -v python3 > /dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 llpf \
    && useradd --system --no-log-init --create-home --uid 10001 --gid llpf --home-dir /home/llpf llpf \
    && mkdir -p /workspace \
    && chown llpf:llpf /workspace

WORKDIR /app
COPY requirements.txt requirements-ray.txt ./
RUN pip install --no-cache-dir -r requirements.txt -r requirements-ray.txt

# The code stays owned by root: the app's user can read it, and can write the workspace only.
COPY llpf_core/ llpf_core/
COPY assets/ assets/
COPY app/ app/

ENV PYTHONPATH=/app \
    LLPF_HOME=/workspace \
    STREAMLIT_SERVER_ADDRESS=127.0.0.1 \
    STREAMLIT_SERVER_PORT=8501 \
    STREAMLIT_SERVER_HEADLESS=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false
VOLUME ["/workspace"]
USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4)"]
CMD ["streamlit", "run", "app/serve.py"]
