"""Pipeline runs in ML Metadata: its sqlite connection, a lock held by each live run, executions
left RUNNING by a run whose process died (CANCELED) or that raised (FAILED), and their states."""

from __future__ import annotations

import contextlib
import os
from typing import Dict, List, Optional

from tfx_gpt2.file_lock import file_lock
from tfx_gpt2.progress import get_logger

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


def run_lock_dir(config) -> Optional[str]:
    """Where the run locks of an ML Metadata sqlite store live (None for other stores)."""
    if config is None or not config.HasField("sqlite"):
        return None
    return config.sqlite.filename_uri + ".runs"


@contextlib.contextmanager
def run_lock(config, run_id: str):
    """Holds an exclusive lock named after the run beside the ML Metadata store while the run
    lives; the system releases it when the process dies, however it dies."""
    folder = run_lock_dir(config)
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

    folder = run_lock_dir(config)
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


def latest_artifact(store, type_name: str, context_id: int, run_context=None):
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


def artifact_props(artifact) -> Dict[str, object]:
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
