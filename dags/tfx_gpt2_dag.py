"""The tfx-gpt2 pipeline as an Airflow DAG (TFX's AirflowDagRunner over `create_pipeline()`).

Configured by environment variables or a JSON file (see `tfx_gpt2/settings.py`): the data
(`TFX_GPT2_DATA_ROOT` or `TFX_GPT2_MONGO_COLLECTIONS`), the model (`TFX_GPT2_MODEL`,
`TFX_GPT2_TRAIN`, `TFX_GPT2_MAX_STEPS`), MLflow (`MLFLOW_TRACKING_URI`), the schedule
(`TFX_GPT2_SCHEDULE`, default `@daily`: with TFX's cache an unchanged corpus trains nothing).
ML Metadata is a sqlite file under `TFX_GPT2_OUTPUT_DIR`.

With `TFX_GPT2_FEEDBACK_LOOP=1` it reads the corpus plus the feedback spans that the feedback DAG
(`tfx_gpt2_feedback_dag.py`) writes, and is triggered by it.

The DAG id is the pipeline name (`tfx-gpt2`); each TFX component is one Airflow task. Importing
TFX takes tens of seconds: set AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT=300 (see the README).
"""

import datetime
import os

from tfx.orchestration import metadata
from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

from tfx_gpt2.settings import from_env

settings = from_env()
os.makedirs(os.path.dirname(settings.metadata_path), exist_ok=True)
if settings.feedback_loop:
    from tfx_gpt2.continuous import span_settings, training_data

    settings = span_settings(settings, training_data(settings).setup())

DAG = AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config={
    "schedule": settings.schedule or None,
    "start_date": datetime.datetime(2026, 1, 1),
    "catchup": False,
    "max_active_runs": 1,
    "tags": ["tfx-gpt2"],
})).run(settings.create_pipeline(metadata.sqlite_metadata_connection_config(settings.metadata_path)))
