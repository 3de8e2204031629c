"""The tfx-gpt2 pipeline as an Airflow DAG: one task per TFX component of `create_pipeline()`.

Configured by environment variables or a JSON file (see `tfx_gpt2/config/settings.py`): the data
(`TFX_GPT2_DATA_ROOT` or `TFX_GPT2_MONGO_COLLECTIONS`), the model (`TFX_GPT2_MODEL`,
`TFX_GPT2_TRAIN`, `TFX_GPT2_MAX_STEPS`), MLflow (`MLFLOW_TRACKING_URI`), the schedule
(`TFX_GPT2_SCHEDULE`, e.g. `@daily`; by default none: each trigger is one run). ML Metadata is a
sqlite file under `TFX_GPT2_OUTPUT_DIR`.

With `TFX_GPT2_FEEDBACK_LOOP=1` it reads the corpus plus the feedback spans that the feedback DAG
(`tfx_gpt2_feedback_dag.py`) writes, and is triggered by it.

Parsing this file does not import TFX: the pipeline is compiled once and cached under
`TFX_GPT2_OUTPUT_DIR/airflow/` (`tfx_gpt2.orchestration.airflow_dag`); the first parse after a change of the
settings or of the code compiles it (about 20 s).
"""

import datetime

from tfx_gpt2.orchestration.airflow_dag import airflow_dag, dag_settings

settings = dag_settings()

DAG = airflow_dag(
    settings,
    schedule=settings.schedule or None,
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    # A new DAG can be triggered at once; with no schedule nothing runs until it is.
    is_paused_upon_creation=bool(settings.schedule),
    tags=["tfx-gpt2"],
    doc_md=__doc__,
)
