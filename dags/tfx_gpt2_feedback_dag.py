"""Retraining from users' feedback: a sensor DAG that triggers the pipeline DAG.

    enough_feedback  (sensor)   a retrain condition holds: enough new training documents from
                                feedback since the last trained watermark, the champion's mean
                                rating below a threshold, or the newest version too old
    write_feedback_span         the new feedback, as the next span of the training data
    run_pipeline                triggers the pipeline DAG (`TFX_GPT2_PIPELINE_NAME`, run with
                                TFX_GPT2_FEEDBACK_LOOP=1) and waits, deferred to the triggerer:
                                its failure fails this task

The DAG id is `<pipeline name>-feedback`. Like every new DAG it starts **paused** (Airflow's
`dags_are_paused_at_creation`): unpause it (the toggle) to run it every `TFX_GPT2_FEEDBACK_SCHEDULE`
(a cron expression, default every 10 minutes), or press play for one run now. It never catches
up: unpausing starts nothing, play starts one run, and at most one runs at a time. A sensor that
finds nothing to do ends at once as skipped, with the reason in its log, and so do the tasks
after it. The pipeline's run fine-tunes the champion (a warm start) unless
`TFX_GPT2_WARM_START=0`. The conditions and the
rule: `TFX_GPT2_RETRAIN_*` and `TFX_GPT2_FEEDBACK_*` (`tfx_gpt2.feedback.retrain.ENV`). The store:
the embedded one under `<TFX_GPT2_OUTPUT_DIR>/feedback` (the server's `--feedback-dir`), or MongoDB
when `TFX_GPT2_FEEDBACK_MONGO_URI_ENV` names the variable that holds its connection string.
Importing this file does not import TFX.
"""

import datetime
import logging
import os

from airflow import DAG
from airflow.exceptions import AirflowSkipException
from airflow.operators.python import PythonOperator
from airflow.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sensors.python import PythonSensor

from tfx_gpt2.config.settings import from_env
from tfx_gpt2.feedback.retrain import loop_config_from_env
from tfx_gpt2.orchestration.airflow_timetable import NextTickTimetable

settings = from_env()
policy, rule = loop_config_from_env(os.environ)
log = logging.getLogger("tfx_gpt2.feedback_dag")


def open_feedback_store():
    from tfx_gpt2.feedback.store import open_store

    return open_store(os.environ.get("TFX_GPT2_FEEDBACK_DIR") or os.path.join(settings.output_dir, "feedback"),
                      mongo_uri_env=os.environ.get("TFX_GPT2_FEEDBACK_MONGO_URI_ENV") or None)


def enough_feedback() -> bool:
    """True when a retrain condition holds; else the task ends as skipped, saying why."""
    from tfx_gpt2.orchestration.continuous import decide_now

    store = open_feedback_store()
    try:
        decision, _ = decide_now(settings, store, policy, rule)
    finally:
        store.close()
    log.info("%s", decision.describe())
    if not decision.fire:
        raise AirflowSkipException(decision.describe())
    return True


def write_feedback_span():
    from tfx_gpt2.orchestration.continuous import prepare

    store = open_feedback_store()
    try:
        prepared = prepare(settings, store, policy, rule, force=True)
    finally:
        store.close()
    if prepared.corpus_first:
        log.info("the corpus (span 0) was never exported: this run trains on it; the feedback goes in the next")
        return None
    m = prepared.manifest
    if m:
        log.info("span %d: %d training documents from %d feedback records", m["span"], m["documents"],
                 m["feedback_records"])
    return m


SCHEDULE = os.environ.get("TFX_GPT2_FEEDBACK_SCHEDULE", "*/10 * * * *")

with DAG(f"{settings.pipeline_name}-feedback", start_date=datetime.datetime(2026, 1, 1), catchup=False,
         schedule=NextTickTimetable(SCHEDULE, timezone="UTC") if SCHEDULE else None, max_active_runs=1,
         tags=["tfx-gpt2"], doc_md=__doc__) as DAG_:
    sensor = PythonSensor(task_id="enough_feedback", python_callable=enough_feedback, mode="reschedule",
                          poke_interval=60, timeout=60)
    span = PythonOperator(task_id="write_feedback_span", python_callable=write_feedback_span)
    # Deferred: it waits in Airflow's triggerer, holding no executor slot (with one task at a time,
    # on sqlite, a task waiting in the slot would keep the pipeline it waits for from running).
    pipeline = TriggerDagRunOperator(task_id="run_pipeline", trigger_dag_id=settings.pipeline_name,
                                     wait_for_completion=True, deferrable=True,
                                     poke_interval=int(os.environ.get("TFX_GPT2_FEEDBACK_POKE_SECONDS", "10")),
                                     allowed_states=["success"], failed_states=["failed"])
    sensor >> span >> pipeline
