# syntax=docker/dockerfile:1
#
# EdgeSAM Label Studio ML backend, three stages:
#   build  - a wheel of this project
#   export - PyTorch (CPU) + this project: fetches the weights and exports encoder.onnx/decoder.onnx
#            into /models/onnx (run once as a job on the models volume; see docker-compose.yml)
#   serve  - onnxruntime only, no torch: `edgesam serve` on port 9090 (the default target)
#
#   docker build --target export -t edgesam-export .
#   docker build -t edgesam-backend .
#   docker run --rm -v edgesam-models:/models edgesam-export
#   docker run -p 9090:9090 -v edgesam-models:/models:ro \
#       -e LABEL_STUDIO_URL=http://label-studio:8080 -e LABEL_STUDIO_API_KEY=... edgesam-backend

ARG PYTHON_VERSION=3.11

# --- build ---------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgesam_backend ./edgesam_backend
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- export (torch) ------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS export
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
# weights are cached in the volume too, so a re-run does not download again
ENV EDGESAM_HOME=/models/cache EDGESAM_CHECKPOINT=edge_sam_3x EDGESAM_ONNX_DIR=/models/onnx
VOLUME ["/models"]
# idempotent: exports only when the ONNX files are missing (delete /models/onnx to re-export)
CMD ["sh", "-c", "if [ -f \"$EDGESAM_ONNX_DIR/encoder.onnx\" ] && [ -f \"$EDGESAM_ONNX_DIR/decoder.onnx\" ]; then echo \"ONNX files present in $EDGESAM_ONNX_DIR\"; else edgesam export --checkpoint \"$EDGESAM_CHECKPOINT\" --out \"$EDGESAM_ONNX_DIR\"; fi"]

# --- serve (onnxruntime, no torch) ---------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS serve
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 edgesam
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
ENV HOST=0.0.0.0 \
    PORT=9090 \
    MODEL_DIR=/models \
    EDGESAM_HOME=/models/cache \
    LOG_LEVEL=INFO \
    WORKERS=1 \
    THREADS=4
USER edgesam
EXPOSE 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=4)" || exit 1
CMD ["edgesam", "serve"]
