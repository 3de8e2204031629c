"""The Beam argument sets of `tfx_gpt2.orchestration.beam_args`: each parses with Beam's own options and
names a runner Beam can build; Dataflow's pass Beam's Dataflow validation; bad values are
refused with the field and the fix. The portable set runs the data components here through a
real job service (`tests/test_beam_scaling.py`, `job_endpoint=embed`)."""

import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
    WorkerOptions,
)
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
from apache_beam.runners.runner import create_runner

from tfx_gpt2.orchestration.beam_args import (
    BeamArgsError,
    dataflow_args,
    direct_args,
    flink_args,
    portable_args,
    spark_args,
)

IMAGE = "registry.example/tfx-gpt2:1"


def test_dataflow_arguments_pass_beams_dataflow_validation(monkeypatch):
    # Beam's validation also asks Google Cloud Storage about the bucket's soft-delete policy (a
    # warning, over the network): not here.
    monkeypatch.setattr(GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled", lambda self, arg: None)
    args = dataflow_args("my-project", "europe-west4", "gs://bucket/tmp", IMAGE, max_workers=8,
                         machine_type="n2-standard-4")
    options = PipelineOptions(list(args))
    runner = create_runner(options.view_as(StandardOptions).runner)
    assert type(runner).__name__ == "DataflowRunner"
    assert PipelineOptionsValidator(options, runner).validate() == []
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location) == ("my-project", "europe-west4", "gs://bucket/tmp")
    workers = options.view_as(WorkerOptions)
    assert (workers.sdk_container_image, workers.max_num_workers, workers.machine_type) == (IMAGE, 8, "n2-standard-4")
    assert "use_runner_v2" in options.view_as(DebugOptions).experiments
    # Beam's own check of the bucket path refuses a local one.
    bad = PipelineOptions([a if not a.startswith("--temp_location") else "--temp_location=/tmp/x" for a in args])
    assert PipelineOptionsValidator(bad, runner).validate_gcs_path(bad.view_as(GoogleCloudOptions), "temp_location")


@pytest.mark.parametrize("args, runner", [
    (flink_args("flink-jobmanager:8081", IMAGE, parallelism=4), "FlinkRunner"),
    (spark_args("spark://spark-master:7077", IMAGE), "SparkRunner"),
    (portable_args("beam-job-server:8099", IMAGE), "PortableRunner"),
])
def test_portable_runner_arguments_parse_and_name_their_runner(args, runner):
    options = PipelineOptions(list(args))
    assert type(create_runner(options.view_as(StandardOptions).runner)).__name__ == runner
    portable = options.view_as(PortableOptions)
    assert (portable.environment_type, portable.environment_config) == ("DOCKER", IMAGE)
    all_options = options.get_all_options()
    if runner == "FlinkRunner":
        assert (all_options["flink_master"], all_options["parallelism"]) == ("flink-jobmanager:8081", 4)
    if runner == "SparkRunner":
        assert all_options["spark_master_url"] == "spark://spark-master:7077"
    if runner == "PortableRunner":
        assert portable.job_endpoint == "beam-job-server:8099"


def test_direct_arguments():
    options = PipelineOptions(list(direct_args(0))).get_all_options()
    assert (options["direct_running_mode"], options["direct_num_workers"]) == ("multi_processing", 0)


@pytest.mark.parametrize("make, field", [
    (lambda: dataflow_args("", "r", "gs://b/tmp"), "--project"),
    (lambda: dataflow_args("p", "r", "/tmp/local"), "--temp-location '/tmp/local' must be a gs:// path"),
    (lambda: flink_args("flink-jobmanager", IMAGE), "HOST:PORT"),
    (lambda: flink_args("flink-jobmanager:8081", ""), "--image is required"),
    (lambda: spark_args("spark-master:7077", IMAGE), "must be a spark:// URL"),
    (lambda: portable_args("", IMAGE), "--job-endpoint is required"),
])
def test_bad_values_are_refused_with_the_field(make, field):
    with pytest.raises(BeamArgsError, match=field.replace("(", r"\(")):
        make()


def test_command_line_prints_one_line_of_arguments():
    result = subprocess.run([sys.executable, "-m", "tfx_gpt2.orchestration.beam_args", "spark", "--master",
                             "spark://spark-master:7077", "--image", IMAGE], capture_output=True, text=True, check=True)
    assert result.stdout.split() == list(spark_args("spark://spark-master:7077", IMAGE))
    bad = subprocess.run([sys.executable, "-m", "tfx_gpt2.orchestration.beam_args", "dataflow", "--project", "p"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--region is required" in bad.stderr
