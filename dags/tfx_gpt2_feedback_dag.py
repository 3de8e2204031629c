"""Retraining from users' feedback: a sensor DAG that triggers the pipeline DAG.

    enough_feedback  (sensor)   a retrain condition holds: enough new training documents from
                                feedback since the last trained watermark, the champion's mean
                                rating below a threshold, or the newest version too old
    write_feedback_span         the new feedback, as the next span of the training data
    run_pipeline                triggers the pipeline DAG (`TFX_GPT2_PIPELINE_NAME`, run with
                                TFX_GPT2_FEEDBACK_LOOP=1) and waits: its failure fails this task

The DAG id is `<pipeline name>-feedback`; it runs every `TFX_GPT2_FEEDBACK_SCHEDULE` (default
every 10 minutes), and a sensor that finds nothing to do ends as skipped. The conditions and the
rule: `TFX_GPT2_RETRAIN_*` and `TFX_GPT2_FEEDBACK_*` (`tfx_gpt2.feedback.retrain.ENV`). The store:
the embedded one under `<TFX_GPT2_OUTPUT_DIR>/feedback` (the server's `--feedback-dir`), or MongoDB
when `TFX_GPT2_FEEDBACK_MONGO_URI_ENV` names the variable that holds its connection string.
Importing this file does not import TFX.
"""

import datetime
import logging
import os

from airflow import DAG
from airflow.operators.python import PythonOperator
from airflow.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sensors.python import PythonSensor

from tfx_gpt2.feedback.retrain import loop_config_from_env
from tfx_gpt2.settings import from_env

settings = from_env()
policy, rule = loop_config_from_env(os.environ)
log = logging.getLogger("tfx_gpt2.feedback_dag")


def open_feedback_store():
    from tfx_gpt2.feedback.store import open_store

    return open_store(os.environ.get("TFX_GPT2_FEEDBACK_DIR") or os.path.join(settings.output_dir, "feedback"),
                      mongo_uri_env=os.environ.get("TFX_GPT2_FEEDBACK_MONGO_URI_ENV") or None)


def enough_feedback() -> bool:
    from tfx_gpt2.continuous import decide_now

    store = open_feedback_store()
    try:
        decision, _ = decide_now(settings, store, policy, rule)
    finally:
        store.close()
    log.info("%s", decision.describe())
    return decision.fire


def write_feedback_span():
    from tfx_gpt2.continuous import prepare

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


with DAG(f"{settings.pipeline_name}-feedback", start_date=datetime.datetime(2026, 1, 1), catchup=False,
         schedule=os.environ.get("TFX_GPT2_FEEDBACK_SCHEDULE", "*/10 * * * *") or None, max_active_runs=1,
         tags=["tfx-gpt2"], doc_md=__doc__) as DAG_:
    sensor = PythonSensor(task_id="enough_feedback", python_callable=enough_feedback, mode="reschedule",
                          poke_interval=int(os.environ.get("TFX_GPT2_FEEDBACK_POKE_SECONDS", "60")),
                          timeout=int(os.environ.get("TFX_GPT2_FEEDBACK_SENSOR_TIMEOUT", "540")), soft_fail=True)
    span = PythonOperator(task_id="write_feedback_span", python_callable=write_feedback_span)
    pipeline = TriggerDagRunOperator(task_id="run_pipeline", trigger_dag_id=settings.pipeline_name,
                                     wait_for_completion=True, poke_interval=30, allowed_states=["success"],
                                     failed_states=["failed"])
    sensor >> span >> pipeline
