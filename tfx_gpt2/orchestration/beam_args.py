"""Beam arguments for the data components on a cluster: Dataflow, Flink, Spark, any portable runner.

    python -m tfx_gpt2.orchestration.beam_args dataflow --project P --region europe-west4 \\
        --temp-location gs://BUCKET/tmp --image REGISTRY/tfx-gpt2:0.1.0
    python -m tfx_gpt2.orchestration.beam_args flink --master flink-jobmanager:8081 --image REGISTRY/tfx-gpt2:0.1.0
    python -m tfx_gpt2.orchestration.beam_args spark --master spark://spark-master:7077 --image REGISTRY/tfx-gpt2:0.1.0
    python -m tfx_gpt2.orchestration.beam_args portable --job-endpoint beam-job-server:8099 --image REGISTRY/tfx-gpt2:0.1.0
    python -m tfx_gpt2.orchestration.beam_args direct --workers 0      # this machine, one process per core

print one line of arguments for `TFX_GPT2_BEAM_ARGS`, or for `--beam-arg` of the examples and of
`pipelines/kubeflow_runner.py` (each argument its own `--beam-arg=...`). The workers of a cluster
run `--image` (the repository's Dockerfile: the package, the same lock), so they import the same
tfx_gpt2 and TFX as the components. A bad value is refused with the field and the fix.
"""

import argparse
import sys
from typing import List, Optional, Tuple

RUNNERS = ("direct", "dataflow", "flink", "spark", "portable")


class BeamArgsError(ValueError):
    pass


def _need(value: str, field: str, example: str) -> str:
    if not value:
        raise BeamArgsError(f"{field} is required for this runner, e.g. {field} {example}")
    return value


def direct_args(workers: int = 0) -> Tuple[str, ...]:
    """Beam's DirectRunner with worker processes (0: one per core)."""
    return ("--direct_running_mode=multi_processing", f"--direct_num_workers={workers}")


def dataflow_args(project: str, region: str, temp_location: str, image: str = "", max_workers: int = 0,
                  machine_type: str = "", service_account: str = "") -> Tuple[str, ...]:
    """Google Cloud Dataflow (Runner v2, workers in the tfx-gpt2 image)."""
    _need(project, "--project", "my-project")
    _need(region, "--region", "europe-west4")
    if not _need(temp_location, "--temp-location", "gs://BUCKET/tmp").startswith("gs://"):
        raise BeamArgsError(f"--temp-location {temp_location!r} must be a gs:// path Dataflow can write, "
                            "e.g. gs://BUCKET/tmp")
    args = ["--runner=DataflowRunner", f"--project={project}", f"--region={region}",
            f"--temp_location={temp_location}", "--experiments=use_runner_v2"]
    if image:
        args.append(f"--sdk_container_image={image}")
    if max_workers:
        args.append(f"--max_num_workers={max_workers}")
    if machine_type:
        args.append(f"--machine_type={machine_type}")
    if service_account:
        args.append(f"--service_account_email={service_account}")
    return tuple(args)


def _environment(image: str) -> List[str]:
    """Where a portable runner's workers run the Python SDK: the image (DOCKER)."""
    _need(image, "--image", "REGISTRY/tfx-gpt2:0.1.0")
    return ["--environment_type=DOCKER", f"--environment_config={image}"]


def flink_args(master: str, image: str, parallelism: int = 0) -> Tuple[str, ...]:
    """Apache Flink through Beam's FlinkRunner (it starts Beam's Flink job server for the cluster)."""
    if ":" not in _need(master, "--master", "flink-jobmanager:8081"):
        raise BeamArgsError(f"--master {master!r} must be HOST:PORT of Flink's REST endpoint, e.g. flink-jobmanager:8081")
    args = ["--runner=FlinkRunner", f"--flink_master={master}", *_environment(image)]
    if parallelism:
        args.append(f"--parallelism={parallelism}")
    return tuple(args)


def spark_args(master: str, image: str) -> Tuple[str, ...]:
    """Apache Spark through Beam's SparkRunner (it starts Beam's Spark job server for the cluster)."""
    if not _need(master, "--master", "spark://spark-master:7077").startswith("spark://"):
        raise BeamArgsError(f"--master {master!r} must be a spark:// URL, e.g. spark://spark-master:7077")
    return ("--runner=SparkRunner", f"--spark_master_url={master}", *_environment(image))


def portable_args(job_endpoint: str, image: str = "", environment_type: str = "DOCKER") -> Tuple[str, ...]:
    """Any runner behind a Beam job server (Flink's or Spark's job server image, ...): PortableRunner.
    `environment_type` LOOPBACK runs the SDK in this process (tests, `job_endpoint='embed'`)."""
    _need(job_endpoint, "--job-endpoint", "beam-job-server:8099")
    environment = (_environment(image) if environment_type == "DOCKER"
                   else [f"--environment_type={environment_type}"])
    return ("--runner=PortableRunner", f"--job_endpoint={job_endpoint}", *environment)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runner", choices=RUNNERS)
    parser.add_argument("--image", default="", help="the workers' image (dataflow, flink, spark, portable)")
    parser.add_argument("--project", default="")
    parser.add_argument("--region", default="")
    parser.add_argument("--temp-location", default="")
    parser.add_argument("--max-workers", type=int, default=0)
    parser.add_argument("--machine-type", default="")
    parser.add_argument("--service-account", default="")
    parser.add_argument("--master", default="", help="flink: HOST:PORT; spark: spark://HOST:PORT")
    parser.add_argument("--parallelism", type=int, default=0)
    parser.add_argument("--job-endpoint", default="")
    parser.add_argument("--workers", type=int, default=0, help="direct: worker processes (0: one per core)")
    a = parser.parse_args(argv)
    try:
        args = {
            "direct": lambda: direct_args(a.workers),
            "dataflow": lambda: dataflow_args(a.project, a.region, a.temp_location, a.image, a.max_workers,
                                              a.machine_type, a.service_account),
            "flink": lambda: flink_args(a.master, a.image, a.parallelism),
            "spark": lambda: spark_args(a.master, a.image),
            "portable": lambda: portable_args(a.job_endpoint, a.image),
        }[a.runner]()
    except BeamArgsError as e:
        parser.error(str(e))
    print(" ".join(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
