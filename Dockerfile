# The tfx-gpt2 image for Kubeflow Pipelines (pipelines/kubeflow_runner.py): the package and the
# pinned stack on Python 3.10, with TFX's Kubeflow V2 entrypoint module available to `python -m`.
# The same image serves a registered model (docs/serving.md):
#
#   docker run -p 8080:8080 -e MLFLOW_TRACKING_URI=http://mlflow:5000 -e TFX_GPT2_API_KEYS=ID:KEY,... \
#     REGISTRY/tfx-gpt2:0.1.0 tfx-gpt2 serve models:/tfx-gpt2@champion --host 0.0.0.0 --port 8080 \
#     --api-keys-env TFX_GPT2_API_KEYS      # beyond loopback: API keys, or --allow-anonymous
#   readiness probe: GET /health or /ping (200 once compiled, 503 before and while draining);
#   liveness probe: GET /health/live (200 while the process runs)
#
#   docker build -t REGISTRY/tfx-gpt2:0.1.0 .                                  # CPU components
#   docker build --build-arg TF_EXTRA=and-cuda -t REGISTRY/tfx-gpt2:0.1.0-gpu .  # the Trainer, on GPU nodes
#
# TF_EXTRA=and-cuda installs TensorFlow's CUDA 12 / cuDNN wheels (tensorflow[and-cuda]); the GPU
# driver comes from the node. Python 3.10 because TFX 1.16 needs it.
FROM python:3.10-slim

ARG TF_EXTRA=""
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 TF_CPP_MIN_LOG_LEVEL=2

RUN apt-get update && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tfx-gpt2
COPY requirements/constraints-py310.txt requirements/constraints-py310.txt
COPY setup.py pyproject.toml README.md ./
COPY tfx_gpt2 tfx_gpt2
COPY data data

# --compile-bytecode: the .pyc files ship in the image; with PYTHONDONTWRITEBYTECODE set, a task's or a
# server's process would otherwise compile everything it imports from source at each start (~20 s).
RUN python -m pip install "uv==0.13.9" \
    && uv pip install --system --compile-bytecode -c requirements/constraints-py310.txt ".[kfp]" \
    && if [ -n "$TF_EXTRA" ]; then uv pip install --system --compile-bytecode -c requirements/constraints-py310.txt "tensorflow[$TF_EXTRA]==2.16.2"; fi \
    && python -c "import tfx_gpt2.pipeline, tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor" \
    && python -c "import tfx_gpt2.serving.server as s; s.page('playground.html')"

EXPOSE 8080

# KubeflowV2DagRunner sets the command (python -m ...kubeflow_v2_run_executor) and the arguments.
