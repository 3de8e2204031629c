"""The Airflow DAGs in `dags/` on a real Airflow 2 (sqlite, a temporary AIRFLOW_HOME): they import
without errors; `airflow dags test` runs the tiny pipeline in the continuous-training layout with
every task succeeding and a model version registered in MLflow; the feedback DAG's tasks then sense
new feedback and write it as span 1."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

BIN = os.path.dirname(sys.executable)
DAG_ID = "tfx-gpt2-airflow-test"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    out = home / "out"
    env = {
        **os.environ,
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(REPO, "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "TFX_GPT2_PIPELINE_NAME": DAG_ID,
        "TFX_GPT2_OUTPUT_DIR": str(out),
        "TFX_GPT2_MAX_STEPS": "20",
        # 20 steps do not beat the unigram baseline: this run checks the orchestration, not the model.
        "TFX_GPT2_BEAT_BASELINE": "0",
        # The DAG reads the corpus as span 0 of the continuous-training layout, so that the feedback
        # DAG's test below writes span 1 beside it (docs/continuous-training.md).
        "TFX_GPT2_FEEDBACK_LOOP": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([os.path.join(BIN, "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    return env, out


def test_dag_imports_without_errors(airflow_env):
    env, _ = airflow_env
    code = ("import json; from airflow.models import DagBag; b = DagBag(include_examples=False); "
            "print(json.dumps({'errors': b.import_errors, 'dags': {d: sorted(b.dags[d].task_ids) for d in b.dag_ids},"
            " 'schedule': str(b.dags['" + DAG_ID + "'].schedule_interval)}))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert report["dags"][DAG_ID] == sorted([
        "TextExampleGen", "StatisticsGen", "TextSchemaGen", "ExampleValidator", "BpeEncoder", "Trainer",
        "PerplexityEvaluator", "MlflowPusher", "latest_spans"])
    assert report["schedule"] == "@daily"
    assert report["dags"][DAG_ID + "-feedback"] == ["enough_feedback", "run_pipeline", "write_feedback_span"]


def test_dags_test_runs_every_task_and_registers_a_model(airflow_env):
    env, out = airflow_env
    result = subprocess.run([os.path.join(BIN, "airflow"), "dags", "test", DAG_ID, "2026-01-02"], env=env,
                            capture_output=True, text=True, timeout=1200)
    print(result.stdout[-3000:], result.stderr[-3000:])
    states = subprocess.run([os.path.join(BIN, "airflow"), "tasks", "states-for-dag-run", DAG_ID,
                             "manual__2026-01-02T00:00:00+00:00", "-o", "json"], env=env, capture_output=True,
                            text=True, check=True)
    tasks = {t["task_id"]: t["state"] for t in json.loads(states.stdout.strip().splitlines()[-1])}
    print(tasks)
    assert len(tasks) == 9 and set(tasks.values()) == {"success"}
    client = MlflowClient(tracking_uri="sqlite:///" + str(out / "mlflow" / "mlflow.db"))
    versions = client.search_model_versions(f"name = '{DAG_ID}'")
    assert [int(v.version) for v in versions] == [1]
    assert dict(client.get_registered_model(DAG_ID).aliases).keys() == {"champion", "challenger"}
    assert versions[0].tags["pipeline_run_id"]
    # The default training samples reach the MLflow run (and TensorBoard's logs under tensorboard/).
    artifacts = {a.path for a in client.list_artifacts(versions[0].run_id)}
    assert {"training_samples.json", "tensorboard"} <= artifacts


FEEDBACK_TASKS = """
import json, runpy, sys, time
from tfx_gpt2.feedback.store import SqliteStore
dag = runpy.run_path(sys.argv[1])
print(json.dumps({"trigger": dag["pipeline"].trigger_dag_id}))
print(json.dumps({"before": dag["enough_feedback"]()}))
store = SqliteStore(sys.argv[2] + "/feedback.db")
for i in range(3):
    store.put_feedback({"completion_id": f"cmpl-{i}", "index": 0, "rating": 1, "scale": "thumbs", "score": 1.0,
                        "corrected_text": None, "comment": None, "model": "m", "version": "1", "prompt": "Q ",
                        "completion": f"answer {i}", "completion_created": 0.0, "created": time.time()})
print(json.dumps({"after": dag["enough_feedback"]()}))
print(json.dumps({"manifest": dag["write_feedback_span"]()}))
"""


def test_feedback_dag_senses_feedback_and_writes_the_next_span(airflow_env):
    """The feedback DAG's tasks on this Airflow's output folder, after the pipeline DAG exported the corpus."""
    env, out = airflow_env
    env = {**env, "TFX_GPT2_RETRAIN_MIN_NEW_DOCUMENTS": "2", "TFX_GPT2_FEEDBACK_DIR": str(out / "feedback")}
    result = subprocess.run([sys.executable, "-c", FEEDBACK_TASKS, os.path.join(REPO, "dags", "tfx_gpt2_feedback_dag.py"),
                             str(out / "feedback")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {k: v for line in result.stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    assert lines["trigger"] == DAG_ID and lines["before"] is False and lines["after"] is True
    manifest = lines["manifest"]
    assert (manifest["span"], manifest["documents"], manifest["feedback_records"]) == (1, 3, 3)
    with open(out / "training-data" / DAG_ID / "span-1" / "feedback.txt") as f:
        assert f.read() == "<|endoftext|>".join(f"Q answer {i}" for i in range(3))
