"""Running the pipeline locally with Beam, and reading back what a run produced.

Outputs go under the settings' `output_dir` in the layout of `tfx_gpt2.pipeline_config.OutputLayout`
(pipeline root, ML Metadata and, unless MLFLOW_TRACKING_URI names a server, MLflow's sqlite store).
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import shlex
import sys
from typing import Dict, List, Optional

from tfx_gpt2.pipeline_config import DataConfig, OutputLayout, RegistryConfig, TrainingSetup
from tfx_gpt2.progress import get_logger
from tfx_gpt2.settings import PipelineSettings

logger = get_logger("tfx_gpt2.local")


def metadata_config(path: str):
    """ML Metadata on the sqlite file `path`, created if missing (TFX's
    `sqlite_metadata_connection_config`, without importing TFX)."""
    from ml_metadata.proto import metadata_store_pb2

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config


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


def _lock_dir(config) -> Optional[str]:
    """Where the run locks of an ML Metadata sqlite store live (None for other stores)."""
    if config is None or not config.HasField("sqlite"):
        return None
    return config.sqlite.filename_uri + ".runs"


@contextlib.contextmanager
def run_lock(config, run_id: str):
    """Holds an exclusive lock named after the run beside the ML Metadata store while the run
    lives; the system releases it when the process dies, however it dies."""
    from tfx_gpt2.registry import file_lock

    folder = _lock_dir(config)
    if folder is None:
        yield
        return
    path = os.path.join(folder, run_id + ".lock")
    with file_lock(path, timeout=60.0):  # a new run id: nobody else holds it
        yield
    os.remove(path)


def _run_is_alive(folder: str, run_id: str) -> bool:
    import fcntl

    path = os.path.join(folder, run_id + ".lock")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def cancel_dead_executions(config, pipeline_name: str, run_id: str) -> List[int]:
    """Marks CANCELED the executions of `pipeline_name` left RUNNING by runs whose process died
    (no process holds the run's lock), with `superseded_by` = `run_id`; returns their ids."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    folder = _lock_dir(config)
    store = metadata_store.MetadataStore(config)
    cancelled = []
    for run in _pipeline_runs(store, pipeline_name):
        if run.name == run_id or _run_is_alive(folder, run.name):
            continue
        cancelled += _end_running(store, run, metadata_store_pb2.Execution.CANCELED, {
            "superseded_by": run_id,
            "cancel_reason": f"run {run.name} ended without finishing this execution (its process died)"})
    return cancelled


def fail_unfinished(config, run_id: str, error: str) -> List[int]:
    """Marks FAILED the executions of run `run_id` still RUNNING after the run raised `error`."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    store = metadata_store.MetadataStore(config)
    run = store.get_context_by_type_and_name("pipeline_run", run_id)
    if run is None:
        return []
    return _end_running(store, run, metadata_store_pb2.Execution.FAILED, {"error": error})


def _end_running(store, run, state, properties: Dict[str, str]) -> List[int]:
    from ml_metadata.proto import metadata_store_pb2

    ended = []
    for execution in store.get_executions_by_context(run.id):
        if execution.last_known_state != metadata_store_pb2.Execution.RUNNING:
            continue
        execution.last_known_state = state
        for key, value in properties.items():
            execution.custom_properties[key].string_value = value
        store.put_execution(execution, [], [])
        ended.append(execution.id)
        logger.warning("marked execution %d (%s) of run %s %s", execution.id, execution.type, run.name,
                       metadata_store_pb2.Execution.State.Name(state))
    return ended


def _pipeline_runs(store, pipeline_name: str):
    return [c for c in store.get_contexts_by_type("pipeline_run")
            if any(p.name == pipeline_name for p in store.get_parent_contexts_by_context(c.id))]


def _latest(store, type_name: str, context_id: int, run_context=None):
    """The newest artifact of `type_name` in the pipeline (in its run `run_context`, when given:
    what that run's executions produced or reused)."""
    if run_context is None:
        artifacts = store.get_artifacts_by_context(context_id)
    else:
        executions = [e.id for e in store.get_executions_by_context(run_context.id)]
        events = store.get_events_by_execution_ids(executions) if executions else []
        ids = sorted({e.artifact_id for e in events if e.type in (e.OUTPUT, e.DECLARED_OUTPUT)})
        artifacts = store.get_artifacts_by_id(ids) if ids else []
    artifacts = [a for a in artifacts if a.type == type_name]
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def _props(artifact) -> Dict[str, object]:
    out = {}
    for key, value in artifact.custom_properties.items():
        kind = value.WhichOneof("value")
        out[key] = getattr(value, kind) if kind else None
    return out


def execution_states(store, pipeline_name: str, run_id: str = "") -> Dict[str, str]:
    """Component id -> state ('COMPLETE', 'CACHED', 'FAILED', ...) in run `run_id` of the
    pipeline (default: its latest run)."""
    from ml_metadata.proto import metadata_store_pb2

    runs = [c for c in _pipeline_runs(store, pipeline_name) if not run_id or c.name == run_id]
    if not runs:
        return {}
    latest = max(runs, key=lambda c: c.id)
    states = {}
    for execution in store.get_executions_by_context(latest.id):
        node = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type == "node"]
        name = node[0].split(".", 1)[-1] if node else str(execution.id)
        states[name] = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
    return states


def read_anomalies(anomalies_artifact) -> Dict[str, List[str]]:
    """Split -> 'feature: description' lines of ExampleValidator's anomalies ([] when clean)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    out: Dict[str, List[str]] = {}
    for split_dir in sorted(glob.glob(os.path.join(anomalies_artifact.uri, "Split-*"))):
        anomalies = anomalies_pb2.Anomalies()
        with open(os.path.join(split_dir, "SchemaDiff.pb"), "rb") as f:
            anomalies.ParseFromString(f.read())
        lines = []
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(r.short_description for r in info.reason) or info.short_description
            lines.append(f"{feature}: {reasons}")
        if anomalies.HasField("dataset_anomaly_info"):
            lines.append(f"dataset: {anomalies.dataset_anomaly_info.short_description}")
        out[split_dir.rsplit("Split-", 1)[1]] = lines
    return out


def data_summary(store, context_id: int) -> Dict[str, object]:
    """Documents, rejected records, tokens per split and data anomalies of the latest run."""
    examples = [a for a in store.get_artifacts_by_context(context_id) if a.type == "Examples"]
    generated = [a for a in examples if "documents" in a.custom_properties]
    encoded = [a for a in examples if "block_len" in a.custom_properties]
    out: Dict[str, object] = {}
    if generated:
        props = _props(max(generated, key=lambda a: a.id))
        out["documents"] = props.get("documents")
        out["empty_documents"] = props.get("empty_documents")
        out["rejected"] = {k[len("rejected_"):]: v for k, v in props.items() if k.startswith("rejected_") and v}
    if encoded:
        latest = max(encoded, key=lambda a: a.id)
        props = _props(latest)
        splits = json.loads(latest.properties["split_names"].string_value or "[]")
        out["splits"] = {
            split: {key: props.get(f"{split}_{key}") for key in ("documents", "tokens", "blocks")}
            for split in splits
        }
        out["vocab_size"] = props.get("vocab_size")
    anomalies = _latest(store, "ExampleAnomalies", context_id)
    if anomalies is not None:
        out["anomalies"] = read_anomalies(anomalies)
    return out


def summarize(layout: OutputLayout, run_id: str = "") -> Dict[str, object]:
    """What run `run_id` of the pipeline (default: the latest artifacts of any run) registered and
    measured, read from ML Metadata."""
    from ml_metadata.metadata_store import metadata_store

    store = metadata_store.MetadataStore(metadata_config(layout.metadata_path))
    context = store.get_context_by_type_and_name("pipeline", layout.pipeline_name)
    if context is None:
        raise RuntimeError(f"ML Metadata at {layout.metadata_path} has no pipeline {layout.pipeline_name!r}.")
    run = store.get_context_by_type_and_name("pipeline_run", run_id) if run_id else None
    if run_id and run is None:
        raise RuntimeError(f"ML Metadata at {layout.metadata_path} has no run {run_id!r}.")
    pushed, evaluation, model_run, blessing = (_latest(store, t, context.id, run) for t in (
        "PushedModel", "ModelEvaluation", "ModelRun", "ModelBlessing"))
    if pushed is None or evaluation is None:
        raise RuntimeError("the pipeline has not pushed a model yet; did the run fail?")
    summary = {**_props(evaluation), **_props(pushed)}
    # The decision the push acted on (the pusher decides again when the champion moved meanwhile).
    summary["blessed"] = bool(summary.get("blessed", _props(blessing).get("blessed") if blessing else False))
    summary["reason"] = summary.get("blessing_reason") or summary.get("reason")
    summary["tensorboard_logdir"] = model_run.uri if model_run else None
    summary["executions"] = execution_states(store, layout.pipeline_name, run_id)
    summary["data"] = data_summary(store, context.id)
    return summary


def ui_commands(summary: Dict[str, object], mlflow_port: int = 5000, tensorboard_port: int = 6006) -> Dict[str, List[str]]:
    """The commands that open the MLflow UI (for a sqlite store; a tracking server is its own UI)
    and TensorBoard on a run's results (argv lists)."""
    bin_dir = os.path.dirname(sys.executable)
    commands = {}
    tracking_uri = str(summary.get("tracking_uri", ""))
    if tracking_uri.startswith("sqlite:"):
        commands["MLflow UI"] = [os.path.join(bin_dir, "mlflow"), "ui", "--backend-store-uri", tracking_uri,
                                 "--port", str(mlflow_port)]
    commands["TensorBoard"] = [os.path.join(bin_dir, "tensorboard"), "--logdir", str(summary["tensorboard_logdir"]),
                               "--port", str(tensorboard_port)]
    return commands


def _data_lines(data: Dict[str, object]) -> List[str]:
    lines = []
    if "documents" in data:
        rejected = data.get("rejected") or {}
        lines.append(
            f"Data:             {data['documents']:,} documents ({data['empty_documents']:,} empty; rejected: "
            + (", ".join(f"{n:,} {r}" for r, n in sorted(rejected.items())) or "none") + ")"
        )
    for split, s in (data.get("splits") or {}).items():
        lines.append(f"  {split + ':':<16}{s['documents']:,} documents, {s['tokens']:,} tokens, {s['blocks']:,} blocks"
                     f" (vocabulary of {data.get('vocab_size') or 0:,} tokens)")
    anomalies = data.get("anomalies")
    if anomalies is not None:
        found = [f"{split}: {line}" for split, items in anomalies.items() for line in items]
        lines.append("Data anomalies:   " + ("none" if not found else f"{len(found)} found"))
        lines += [f"  {line}" for line in found]
    return lines


def report(summary: Dict[str, object]) -> str:
    """The lines printed at the end of a local run."""
    states = summary.get("executions") or {}
    cached = sorted(n for n, s in states.items() if s == "CACHED")
    lines = [
        "",
        "=" * 72,
        f"Components:       {len(states)} in this run, {len(cached)} reused from the cache"
        + (f" ({', '.join(cached)})" if 0 < len(cached) < len(states) else ""),
        f"Registered model: {summary['registered_model_name']} version {summary['model_version']}"
        f" (aliases: {summary.get('aliases', '')}; blessed: {summary['blessed']})",
        f"Eval perplexity:  {summary['eval_perplexity']:.2f}"
        f"   (unigram baseline on the same tokens: {summary['eval_unigram_perplexity']:.2f})",
        f"Blessing:         {summary.get('reason', '')}",
        f"MLflow run:       {summary['mlflow_run_id']}",
    ]
    lines += _data_lines(summary.get("data") or {})
    lines += [
        "",
        "Open the results:",
    ]
    if not str(summary.get("tracking_uri", "")).startswith("sqlite:"):
        lines.append(f"  {'MLflow UI:':<13}{summary.get('tracking_uri')} (the tracking server)")
    lines += [f"  {name + ':':<13}{shlex.join(argv)}" for name, argv in ui_commands(summary).items()]
    lines.append("=" * 72)
    return "\n".join(lines)


def run_and_report(settings: PipelineSettings, data: Optional[DataConfig] = None,
                   training: Optional[TrainingSetup] = None,
                   registry: Optional[RegistryConfig] = None) -> Dict[str, object]:
    """Runs the pipeline of `settings` with Beam (ML Metadata in sqlite under its output
    directory), prints and returns the summary; `data`, `training`, `registry` replace the
    configs the settings make."""
    layout = settings.layout.create()
    pipeline = settings.create_pipeline(metadata_config(layout.metadata_path), data, training, registry)
    logger.info("running pipeline %r with Beam; outputs in %s", settings.pipeline_name, layout.output_dir)
    run_id = run_local(pipeline)
    summary = {**summarize(layout, run_id), "run_id": run_id}
    print(report(summary), flush=True)
    return summary
