"""Compiles the tfx-gpt2 pipeline for Kubeflow Pipelines with TFX's KubeflowV2DagRunner.

    .venv/bin/python pipelines/kubeflow_runner.py \\
        --image REGISTRY/tfx-gpt2:0.1.0 --gpu-image REGISTRY/tfx-gpt2:0.1.0-gpu \\
        --pipeline-root gs://BUCKET/tfx-gpt2 --data-root gs://BUCKET/corpus \\
        --mlflow-tracking-uri http://mlflow.mlflow.svc:5000 --output tfx-gpt2-pipeline.json

writes a PipelineJob JSON; upload its `pipelineSpec` in the Kubeflow Pipelines UI (or submit the
file to Vertex AI Pipelines). The pipeline is the same `create_pipeline()` as the Beam and Airflow
runs, configured by the flags, or by `TFX_GPT2_*` variables / `TFX_GPT2_CONFIG` (see
`tfx_gpt2/config/settings.py`) for anything without a flag. Every component runs in `--image`; the
Trainer runs in `--gpu-image` (if given) and asks for `--trainer-gpus` GPUs of `--gpu-type`,
with `--trainer-cpu` / `--trainer-memory-gb` limits.

Secrets are not in the file: the MongoDB connection string and MLflow credentials are read at run
time from environment variables of the pods (e.g. from a Kubernetes Secret through a PodDefault).
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNCACHED_TASKS = ("PerplexityEvaluator", "MlflowPusher")


def trainer_resources(gpus: int, gpu_type: str, cpu: float, memory_gb: float):
    """The Trainer's ResourceSpec: CPU and memory limits, and GPUs."""
    from kfp.pipeline_spec import pipeline_spec_pb2 as pipeline_pb2

    spec = pipeline_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
        cpu_limit=cpu, memory_limit=memory_gb)
    if gpus:
        spec.accelerator.type = gpu_type
        spec.accelerator.count = gpus
    return spec


def compile_pipeline(settings, image: str, output: str, gpu_image: str = "", trainer_gpus: int = 1,
                     gpu_type: str = "NVIDIA_TESLA_T4", trainer_cpu: float = 8.0, trainer_memory_gb: float = 32.0) -> dict:
    """Writes the PipelineJob JSON to `output` and returns it (a dict)."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner, pipeline_builder

    from tfx_gpt2.pipeline import pipeline_from_settings

    pipeline = pipeline_from_settings(settings, metadata_connection_config=None)
    for component in pipeline.components:
        if component.id == "Trainer":
            component.with_platform_config(trainer_resources(trainer_gpus, gpu_type, trainer_cpu, trainer_memory_gb))
    images = {pipeline_builder.DEFAULT_IMAGE_PATH_KEY: image}
    if gpu_image:
        images["Trainer"] = gpu_image
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=images),
        output_dir=os.path.dirname(os.path.abspath(output)), output_filename=os.path.basename(output))
    job = runner.run(pipeline, write_out=False)
    # KFP V2 runs no TFX driver, so its cache would not see the registry's champion move: the
    # evaluator (and the pusher after it) always run.
    for task in UNCACHED_TASKS:
        job["pipelineSpec"]["root"]["dag"]["tasks"][task].pop("cachingOptions", None)
    with open(output, "w") as f:
        json.dump(job, f, indent=2, sort_keys=True)
    return job


def cluster_warnings(settings) -> List[str]:
    """What in the settings only works if the pods share this machine's view: local paths and a
    tracking store that is a file."""
    warnings = []
    tasks = settings.eval_tasks_dir if settings.eval_tasks_dir.lower() != "none" else ""
    for flag, value in (("--pipeline-root", settings.pipeline_root), ("--data-root", settings.data_root),
                        ("TFX_GPT2_EVAL_TASKS_DIR", tasks)):
        if value and "://" not in value:
            warnings.append(f"{flag} {value} is a local path: every pod must mount it at the same path (a "
                            "ReadWriteMany volume, or a bucket through a CSI FUSE driver); else give gs://...")
    uri = settings.mlflow_tracking_uri
    if uri and not uri.startswith(("http://", "https://", "databricks")):
        warnings.append(f"--mlflow-tracking-uri {uri} is not a server: each pod would see its own registry "
                        "unless the file is on a volume they all mount; give http://SERVICE:5000")
    return warnings


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="the image built from the Dockerfile (all components)")
    parser.add_argument("--gpu-image", default="", help="the GPU image for the Trainer (default: --image)")
    parser.add_argument("--output", default="tfx-gpt2-pipeline.json", help="the PipelineJob JSON to write")
    parser.add_argument("--pipeline-root", default="", help="where outputs go (gs://, s3://, a mounted volume)")
    parser.add_argument("--data-root", default="", help="folder of text files, reachable from the pods")
    parser.add_argument("--mlflow-tracking-uri", default="", help="MLflow tracking server, without credentials")
    parser.add_argument("--model", default="", help="model preset (tiny, 124M, ...)")
    parser.add_argument("--train", default="", help="training preset (tiny, finetune, lora)")
    parser.add_argument("--init-checkpoint", default="", help="checkpoint to fine-tune (dir or openai:124M)")
    parser.add_argument("--beam-arg", action="append", default=None,
                        help="Beam argument of the data components (repeatable), e.g. --beam-arg=--runner=DataflowRunner")
    parser.add_argument("--trainer-gpus", type=int, default=1, help="GPUs for the Trainer (0: none)")
    parser.add_argument("--gpu-type", default="NVIDIA_TESLA_T4", help="accelerator type, e.g. NVIDIA_TESLA_T4, NVIDIA_L4")
    parser.add_argument("--trainer-cpu", type=float, default=8.0, help="Trainer CPU limit")
    parser.add_argument("--trainer-memory-gb", type=float, default=32.0, help="Trainer memory limit (GB)")
    args = parser.parse_args(argv)

    from tfx_gpt2.config.settings import from_env

    settings = from_env()
    changes = {k: v for k, v in {
        "pipeline_root": args.pipeline_root, "data_root": args.data_root, "mlflow_tracking_uri": args.mlflow_tracking_uri,
        "model": args.model, "train": args.train, "init_checkpoint": args.init_checkpoint}.items() if v}
    if args.beam_arg is not None:
        changes["beam_args"] = tuple(args.beam_arg)
    settings = dataclasses.replace(settings, **changes)
    if not settings.mlflow_tracking_uri:
        parser.error("give --mlflow-tracking-uri (or MLFLOW_TRACKING_URI): a server the pods can reach")
    job = compile_pipeline(settings, args.image, args.output, args.gpu_image, args.trainer_gpus, args.gpu_type,
                           args.trainer_cpu, args.trainer_memory_gb)
    for warning in cluster_warnings(settings):
        print("warning:", warning)
    tasks = sorted(job["pipelineSpec"]["root"]["dag"]["tasks"])
    print(f"wrote {args.output}: pipeline {settings.pipeline_name!r}, {len(tasks)} tasks ({', '.join(tasks)})")
    print(json.dumps({"image": args.image, "trainer_image": args.gpu_image or args.image,
                      "trainer_gpus": args.trainer_gpus}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())
