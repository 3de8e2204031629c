"""Running the pipeline locally with Beam (TFX's BeamDagRunner), one run at a time per run id, and
printing its report (`run_report`).

Outputs go under the settings' `output_dir` in the layout of `tfx_gpt2.config.pipeline.OutputLayout`
(pipeline root, ML Metadata and, unless MLFLOW_TRACKING_URI names a server, MLflow's sqlite store).
"""

from __future__ import annotations

import datetime
import os
from typing import Dict, Optional

from tfx_gpt2.config.pipeline import DataConfig, RegistryConfig, TrainingSetup
from tfx_gpt2.config.settings import PipelineSettings
from tfx_gpt2.orchestration.mlmd_runs import cancel_dead_executions, fail_unfinished, metadata_config, run_lock
from tfx_gpt2.orchestration.run_report import report, summarize
from tfx_gpt2.progress import get_logger

logger = get_logger("tfx_gpt2.local")


def new_run_id() -> str:
    """A pipeline run id (TFX's timestamp format, plus the process id: two runs started in the
    same microsecond by two processes still differ)."""
    return f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S.%f')}-{os.getpid()}"


def run_local(pipeline, run_id: str = "") -> str:
    """Runs a pipeline from `create_pipeline()` with TFX's BeamDagRunner as run `run_id` (the
    name of its `pipeline_run` context in ML Metadata; a new one by default); returns the run id.

    While it runs, the process holds `run_lock(...)` of the run; executions of earlier runs of the
    pipeline that are still RUNNING although no process holds their run's lock (the process was
    killed) are marked CANCELED first (`cancel_dead_executions`)."""
    from tfx.dsl.compiler import constants
    from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner
    from tfx.orchestration.portable import runtime_parameter_utils

    run_id = run_id or new_run_id()

    class Runner(BeamDagRunner):
        def run_with_ir(self, ir, run_options=None):
            runtime_parameter_utils.substitute_runtime_parameter(
                ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
            return super().run_with_ir(ir, run_options)

    config = pipeline.metadata_connection_config
    local_store = config is not None and config.HasField("sqlite")
    with run_lock(config, run_id):
        if local_store:
            cancel_dead_executions(config, pipeline.pipeline_info.pipeline_name, run_id)
        try:
            Runner().run(pipeline)
        except BaseException as e:
            # A component that failed before its executor ran (a driver) is left RUNNING by TFX.
            if local_store:
                fail_unfinished(config, run_id, f"{type(e).__name__}: {str(e)[:300]}")
            raise
    return run_id


def run_and_report(settings: PipelineSettings, data: Optional[DataConfig] = None,
                   training: Optional[TrainingSetup] = None,
                   registry: Optional[RegistryConfig] = None) -> Dict[str, object]:
    """Runs the pipeline of `settings` with Beam (ML Metadata in sqlite under its output
    directory), prints and returns the summary; `data`, `training`, `registry` replace the
    configs the settings make."""
    from tfx_gpt2.pipeline import pipeline_from_settings  # TFX: imported when a run starts, not for --help

    layout = settings.layout.create()
    pipeline = pipeline_from_settings(settings, metadata_config(layout.metadata_path), data, training, registry)
    logger.info("running pipeline %r with Beam; outputs in %s", settings.pipeline_name, layout.output_dir)
    run_id = run_local(pipeline)
    summary = {**summarize(layout, run_id), "run_id": run_id}
    print(report(summary), flush=True)
    return summary
