"""The Airflow DAGs in `dags/` on a real Airflow 2: `tools/airflow.sh` (the README's command) starts
`airflow standalone` on sqlite with tfx-gpt2's PreloadedExecutor; the pipeline DAG is triggered
through the REST API the web UI uses, runs once to success with the scheduler healthy throughout,
registers a model, the pusher's log ends with where the results are and the run's note names the
version. The DAG file then parses without importing TFX. The feedback DAG, paused at first, runs
once per press of play: its sensor finds the new feedback, the span is written, the pipeline DAG
is triggered (and, paused, its run is marked failed: one full pipeline run per orchestrator), the
failure fails the feedback run and the next press finds the same feedback. SIGTERM to
`tools/airflow.sh` stops every Airflow process."""

import json
import os
import subprocess
import sys
import time

import pytest
from airflow_helpers import Airflow
from conftest import REPO
from mlflow.tracking import MlflowClient
from mlflow_helpers import free_port

BIN = os.path.dirname(sys.executable)
DAG_ID = "tfx-gpt2-airflow-test"
TASKS = ["TextExampleGen", "StatisticsGen", "TextSchemaGen", "ExampleValidator", "BpeEncoder", "Trainer",
         "PerplexityEvaluator", "MlflowPusher", "latest_spans", "champion_model", "eval_tasks"]
FEEDBACK_DAG = DAG_ID + "-feedback"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    out = home / "out"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(free_port()),
        "TFX_GPT2_PIPELINE_NAME": DAG_ID,
        "TFX_GPT2_OUTPUT_DIR": str(out),
        "TFX_GPT2_MAX_STEPS": "20",
        # 20 steps do not beat the unigram baseline: this run checks the orchestration, not the model.
        "TFX_GPT2_BEAT_BASELINE": "0",
        # The DAG reads the corpus as span 0 of the continuous-training layout, so that the feedback
        # DAG's test below writes span 1 beside it (docs/continuous-training.md).
        "TFX_GPT2_FEEDBACK_LOOP": "1",
        "TFX_GPT2_RETRAIN_MIN_NEW_DOCUMENTS": "2",
        # A yearly tick: the scheduler never starts a run during the test, and an Airflow cron
        # schedule without catch-up would start one for the last tick on unpausing.
        "TFX_GPT2_FEEDBACK_SCHEDULE": "0 0 1 1 *",
        # The feedback DAG's wait for the pipeline run it triggered looks every 2 s (default 10).
        "TFX_GPT2_FEEDBACK_POKE_SECONDS": "2",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    # What `tools/airflow.sh` does first (compile the DAG's pipeline), in this process, which has
    # imported TFX already; the script then finds the plan up to date.
    from tfx_gpt2.orchestration.airflow_dag import dag_settings, load_plan

    load_plan(dag_settings(env))
    airflow = Airflow(home, env)
    try:
        airflow.wait_ready(DAG_ID)
        yield airflow, out
    finally:
        airflow.stop()


def test_a_trigger_through_the_rest_api_runs_the_pipeline_once(airflow_env):
    airflow, out = airflow_env
    run = airflow.trigger(DAG_ID)
    start = time.monotonic()
    state, health = airflow.wait_for_run(DAG_ID, run["dag_run_id"])
    print(f"the run took {time.monotonic() - start:.0f} s; scheduler health at {len(health)} polls: {set(health)}")
    tasks = {t["task_id"]: t["state"] for t in airflow.call(
        "GET", f"/api/v1/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances")[1]["task_instances"]}
    assert state == "success", (tasks, airflow.read_log()[-3000:])
    assert sorted(tasks) == sorted(TASKS) and set(tasks.values()) == {"success"}
    # The web UI's banner "The scheduler does not appear to be running" reads this same health check.
    assert set(health) == {"healthy"}
    assert "re-launching" not in airflow.read_log() and "DagFileProcessorManager (PID" not in airflow.read_log()
    # One trigger, one run, and the scheduler plans no other (no schedule: no next run).
    assert airflow.call("GET", f"/api/v1/dags/{DAG_ID}/dagRuns")[1]["total_entries"] == 1
    dag = airflow.call("GET", f"/api/v1/dags/{DAG_ID}")[1]
    assert dag["next_dagrun"] is None and dag["next_dagrun_create_after"] is None, dag
    client = MlflowClient(tracking_uri="sqlite:///" + str(out / "mlflow" / "mlflow.db"))
    versions = client.search_model_versions(f"name = '{DAG_ID}'")
    assert [int(v.version) for v in versions] == [1]
    assert dict(client.get_registered_model(DAG_ID).aliases).keys() == {"champion", "challenger"}
    assert versions[0].tags["pipeline_run_id"] == run["dag_run_id"]
    artifacts = {a.path for a in client.list_artifacts(versions[0].run_id)}
    assert {"training_samples.json", "tensorboard"} <= artifacts
    # The task that pushed ends its log with the run's report: where to open the results.
    log = airflow.task_log(DAG_ID, run["dag_run_id"], "MlflowPusher")
    report = log[log.rindex("Registered model:"):]
    assert f"{DAG_ID} version 1" in report and "Open the results:" in report and "TensorBoard:" in report
    assert f"serve models:/{DAG_ID}@champion" in report and "--port 8080" not in report
    note = airflow.call("GET", f"/api/v1/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}")[1]["note"]
    assert f"models:/{DAG_ID}/1" in note and versions[0].run_id in note, note


def test_the_dag_parses_without_importing_tfx(airflow_env):
    airflow, _ = airflow_env
    code = ("import json, sys; from airflow.models import DagBag; b = DagBag(include_examples=False); "
            "print(json.dumps({'errors': b.import_errors, 'dags': {d: sorted(b.dags[d].task_ids) for d in b.dag_ids},"
            " 'schedule': str(b.dags['" + DAG_ID + "'].schedule_interval),"
            " 'heavy': sorted(m for m in ('tfx', 'tensorflow', 'apache_beam') if m in sys.modules)}))")
    env = {**airflow.env, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
           "AIRFLOW__CORE__DAGS_FOLDER": os.path.join(REPO, "dags")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert report["dags"][DAG_ID] == sorted(TASKS)
    assert report["schedule"] == "None"
    assert report["dags"][DAG_ID + "-feedback"] == ["enough_feedback", "run_pipeline", "write_feedback_span"]
    assert report["heavy"] == []


FEEDBACK_TASKS = """
import json, runpy, sys, time
from tfx_gpt2.feedback.store import SqliteStore
dag = runpy.run_path(sys.argv[1])
print(json.dumps({"trigger": dag["pipeline"].trigger_dag_id}))
from airflow.exceptions import AirflowSkipException
try:
    print(json.dumps({"before": dag["enough_feedback"]()}))
except AirflowSkipException as e:
    print(json.dumps({"before": "skipped: " + str(e)}))
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
    airflow, out = airflow_env
    env = {**airflow.env, "TFX_GPT2_RETRAIN_MIN_NEW_DOCUMENTS": "2", "TFX_GPT2_FEEDBACK_DIR": str(out / "feedback")}
    result = subprocess.run([sys.executable, "-c", FEEDBACK_TASKS, os.path.join(REPO, "dags", "tfx_gpt2_feedback_dag.py"),
                             str(out / "feedback")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {k: v for line in result.stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    assert lines["trigger"] == DAG_ID and lines["after"] is True
    assert lines["before"].startswith("skipped: nothing to do: 0 new training document(s)"), lines["before"]
    manifest = lines["manifest"]
    assert (manifest["span"], manifest["documents"], manifest["feedback_records"]) == (1, 3, 3)
    with open(out / "training-data" / DAG_ID / "span-1" / "feedback.txt") as f:
        assert f.read() == "<|endoftext|>".join(f"Q answer {i}" for i in range(3))


def test_the_feedback_dag_runs_once_per_play_and_a_failed_pipeline_run_loses_nothing(airflow_env):
    """Under the scheduler: the paused feedback DAG, played once, runs once: its sensor finds the
    new feedback, the span is written and the pipeline DAG is triggered. The pipeline DAG is paused
    here, so that run waits, queued (the suite keeps one full pipeline run per orchestrator: the
    one above; the fine-tune of the champion runs in tests/test_continuous.py). Marked failed in
    the web UI, it fails the feedback run, nothing is registered, and the next press finds the same
    feedback again."""
    airflow, out = airflow_env
    assert airflow.call("GET", f"/api/v1/dags/{FEEDBACK_DAG}")[1]["is_paused"] is True
    airflow.set_paused(DAG_ID, True)
    for press in range(2):  # the earlier test left 3 rated completions in the store
        run = airflow.trigger(FEEDBACK_DAG, unpause=press == 0)
        queued = airflow.wait_until("the pipeline run", lambda known=1 + press: airflow.runs(DAG_ID)[known:])
        assert [r["state"] for r in queued] == ["queued"] and queued[0]["run_type"] == "manual", queued
        airflow.wait_until("the feedback run waiting on it",
                           lambda run_id=run["dag_run_id"]: airflow.tasks(FEEDBACK_DAG, run_id)["run_pipeline"] == "deferred")
        log = airflow.task_log(FEEDBACK_DAG, run["dag_run_id"], "enough_feedback")
        assert "3 new training document(s)" in log, log
        assert "span 1: 3 training documents from 3 feedback records" in airflow.task_log(
            FEEDBACK_DAG, run["dag_run_id"], "write_feedback_span")
        airflow.mark_run(DAG_ID, queued[0]["dag_run_id"], "failed")
        state, _ = airflow.wait_for_run(FEEDBACK_DAG, run["dag_run_id"])
        tasks = airflow.tasks(FEEDBACK_DAG, run["dag_run_id"])
        assert state == "failed" and tasks == {"enough_feedback": "success", "write_feedback_span": "success",
                                               "run_pipeline": "failed"}, tasks
        client = MlflowClient(tracking_uri="sqlite:///" + str(out / "mlflow" / "mlflow.db"))
        assert [str(v.version) for v in client.search_model_versions(f"name = '{DAG_ID}'")] == ["1"]
        with open(out / "training-data" / DAG_ID / "span-1" / "feedback.txt") as f:
            assert f.read() == "<|endoftext|>".join(f"Q answer {i}" for i in range(3))
    # Two presses of play, two runs: unpausing started none.
    assert [r["run_type"] for r in airflow.runs(FEEDBACK_DAG)] == ["manual", "manual"]
    assert [r["state"] for r in airflow.runs(DAG_ID)] == ["success", "failed", "failed"]


def test_mlflow_run_link_for_a_tracking_server(mlflow_server):
    from tfx_gpt2.orchestration.airflow_dag import mlflow_run_url

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.create_experiment("airflow-link")
    run = client.create_run(experiment)
    assert mlflow_run_url(mlflow_server.uri, run.info.run_id) == (
        f"{mlflow_server.uri}/#/experiments/{experiment}/runs/{run.info.run_id}")
    assert mlflow_run_url("sqlite:////tmp/x.db", run.info.run_id) is None


def test_sigterm_to_the_script_stops_every_airflow_process(airflow_env):
    """Last: `kill PID` of tools/airflow.sh (not of its process group) leaves nothing running."""
    airflow, _ = airflow_env
    assert len(airflow.processes()) >= 3  # scheduler, web server (and its workers), triggerer
    assert airflow.stop() == []
