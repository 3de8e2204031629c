"""`pipelines/kubeflow_runner.py` compiles the shared pipeline with KubeflowV2DagRunner; the file
parses with KFP's pipeline-spec protos and holds every component, its image and arguments, the
Trainer's GPU request, and no secret."""

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

SECRETS = ("mongo-pw-8d1c", "mlflow-pw-55e2", "mlflow-token-c0ff")
TASKS = {"MongoExampleGen", "StatisticsGen", "TextSchemaGen", "ExampleValidator", "BpeEncoder", "Trainer",
         "PerplexityEvaluator", "MlflowPusher"}


def kubeflow_runner():
    """pipelines/kubeflow_runner.py as a module."""
    sys.path.insert(0, os.path.join(REPO, "pipelines"))
    import kubeflow_runner

    return kubeflow_runner


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp") / "pipeline.json"
    env = {"MONGO_URI": f"mongodb://user:{SECRETS[0]}@mongo:27017/db",
           "MLFLOW_TRACKING_USERNAME": "ci", "MLFLOW_TRACKING_PASSWORD": SECRETS[1],
           "MLFLOW_TRACKING_TOKEN": SECRETS[2], "TFX_GPT2_MONGO_COLLECTIONS": "corpus.docs",
           "TFX_GPT2_MODEL": "124M", "TFX_GPT2_TRAIN": "finetune"}
    # In this process: the test session has imported TFX already (a new process takes ~20 s more).
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as stdout:
        for key, value in env.items():
            patch.setenv(key, value)
        assert kubeflow_runner().main([
            "--image", "registry.example/tfx-gpt2:1", "--gpu-image", "registry.example/tfx-gpt2:1-gpu",
            "--pipeline-root", "gs://bucket/tfx-gpt2", "--mlflow-tracking-uri", "http://mlflow.mlflow.svc:5000",
            "--init-checkpoint", "openai:124M", "--gpu-type", "NVIDIA_L4", "--output", str(out),
            "--beam-arg=--runner=DataflowRunner", "--beam-arg=--project=my-project",
            "--beam-arg=--region=europe-west4", "--beam-arg=--temp_location=gs://bucket/tmp"]) == 0
    text = out.read_text()
    job = json.loads(text)
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(job["pipelineSpec"], spec, ignore_unknown_fields=False)
    deployment = pipeline_spec_pb2.PipelineDeploymentConfig()
    json_format.ParseDict(job["pipelineSpec"]["deploymentSpec"], deployment)
    return text, spec, deployment, stdout.getvalue()


def test_every_component_with_its_image_and_arguments(compiled):
    _, spec, deployment, stdout = compiled
    assert set(spec.root.dag.tasks) == TASKS | {"base_model", "eval_tasks"}  # the two importers
    assert spec.pipeline_info.name == "tfx-gpt2"
    for name in TASKS:
        container = deployment.executors[f"{name}_executor"].container
        assert container.image == ("registry.example/tfx-gpt2:1-gpu" if name == "Trainer" else "registry.example/tfx-gpt2:1")
        assert list(container.command) == ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
        assert container.args[0] == "--executor_class_path" and container.args[2] == "--json_serialized_invocation_args"
    assert deployment.executors["MlflowPusher_executor"].container.args[1] == "tfx_gpt2.components.mlflow_pusher.Executor"
    trainer = deployment.executors["Trainer_executor"].container.resources
    assert (trainer.accelerator.type, trainer.accelerator.count) == ("NVIDIA_L4", 1)
    assert trainer.cpu_limit == 8.0 and trainer.memory_limit == 32.0
    assert "10 tasks" in stdout
    # KFP runs no TFX driver, so its cache cannot see the champion move: the evaluator and the
    # pusher always run; the other steps keep KFP's cache.
    uncached = {name for name, task in spec.root.dag.tasks.items() if not task.caching_options.enable_cache}
    assert uncached == {"PerplexityEvaluator", "MlflowPusher"}


def test_parameters_reach_the_components(compiled):
    text, spec, deployment, _ = compiled
    pusher = spec.components["MlflowPusher"].input_definitions.parameters
    assert set(pusher) >= {"tracking_uri", "registered_model_name", "experiment_name", "params_json"}
    tasks = spec.root.dag.tasks

    def constant(task, name):
        return tasks[task].inputs.parameters[name].runtime_value.constant_value.string_value

    assert constant("MlflowPusher", "tracking_uri") == "http://mlflow.mlflow.svc:5000"
    assert json.loads(constant("MlflowPusher", "params_json"))["model.n_embd"] == "768"
    assert constant("PerplexityEvaluator", "registered_model_name") == "tfx-gpt2"
    # Beam components get the Beam arguments on their command line.
    args = list(deployment.executors["BpeEncoder_executor"].container.args)
    assert "--runner=DataflowRunner" in args and "--temp_location=gs://bucket/tmp" in args
    # MongoDB: the name of the variable that holds the connection string, not its value.
    assert "MONGO_URI" in json.dumps(json.loads(text)["pipelineSpec"]["root"]["dag"]["tasks"]["MongoExampleGen"])


def test_no_secret_in_the_compiled_pipeline(compiled):
    text, _, _, stdout = compiled
    for secret in SECRETS:
        assert secret not in text and secret not in stdout


def test_dockerfile_copies_what_exists_and_pins_like_bootstrap():
    with open(os.path.join(REPO, "Dockerfile")) as f:
        lines = [line.split() for line in f if line.startswith("COPY ")]
    for parts in lines:
        for source in parts[1:-1]:
            assert os.path.exists(os.path.join(REPO, source)), source
    with open(os.path.join(REPO, "Dockerfile")) as f:
        dockerfile = f.read()
    with open(os.path.join(REPO, "tools", "bootstrap.sh")) as f:
        uv_version = [line.split("=", 1)[1].strip() for line in f if line.startswith("UV_VERSION=")][0]
    assert f'"uv=={uv_version}"' in dockerfile and "FROM python:3.10" in dockerfile


def test_the_compiled_pipeline_runs_to_a_registered_model(tmp_path, monkeypatch, capsys):
    """The compiled file, run task by task with each container's own module and arguments
    (tools/kfp_local_run.py, standing in for KFP's driver and launcher; `--preload` forks the tasks
    from a process that imported TFX once), trains and registers a model on a tracking server that
    the "pods" reach over HTTP, as on a cluster."""
    from mlflow.tracking import MlflowClient
    from mlflow_helpers import MlflowServer

    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(str(tmp_path / "mlflow"))
    try:
        job_path, root = tmp_path / "pipeline.json", tmp_path / "root"
        # 20 steps: this run checks the orchestration (the Beam e2e test checks the model).
        for key, value in {"TFX_GPT2_MODEL": "tiny", "TFX_GPT2_TRAIN": "tiny", "TFX_GPT2_MAX_STEPS": "20",
                           "TFX_GPT2_BEAT_BASELINE": "0"}.items():
            monkeypatch.setenv(key, value)
        assert kubeflow_runner().main([
            "--image", "registry.example/tfx-gpt2:1", "--pipeline-root", str(root),
            "--data-root", os.path.join(REPO, "data", "pydoc_topics"), "--mlflow-tracking-uri", server.uri,
            "--output", str(job_path)]) == 0
        assert "is a local path: every pod must mount it at the same path" in capsys.readouterr().out
        run = subprocess.run([sys.executable, os.path.join(REPO, "tools", "kfp_local_run.py"), str(job_path),
                              "--run-id", "run-1", "--preload"], cwd=str(tmp_path), env=os.environ,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        ran = [line.split("]")[0][1:] for line in run.stdout.splitlines() if line.endswith(" s") and "done in" in line]
        assert sorted(ran) == sorted(TASKS - {"MongoExampleGen"} | {"TextExampleGen", "eval_tasks"})
        # The Trainer's pod would ask for the default GPU; the local run says so.
        assert "[Trainer] the spec asks for 8 CPU, 32 GB, 1 x NVIDIA_TESLA_T4 (not enforced here)" in run.stdout
        with open(root / "run-1" / "MlflowPusher" / "executor_output.json") as f:
            pushed = json.load(f)["artifacts"]["pushed_model"]["artifacts"][0]["metadata"]
        assert pushed["pushed"] == 1 and pushed["model_version"] == 1 and pushed["tracking_uri"] == server.uri
        client = MlflowClient(server.uri)
        version = client.get_model_version_by_alias("tfx-gpt2", "champion")
        assert version.version == "1" and set(client.get_registered_model("tfx-gpt2").aliases) == {"champion", "challenger"}
        assert client.get_run(version.run_id).data.metrics["eval_perplexity"] > 1
        # The Trainer's output went through the ExecutorOutput file to the evaluator and the pusher.
        with open(root / "run-1" / "Trainer" / "executor_output.json") as f:
            assert json.load(f)["artifacts"]["model"]["artifacts"][0]["uri"] == str(root / "run-1" / "Trainer" / "model")
    finally:
        server.stop()
