"""Logging a trained model to MLflow, registering it, and finding the production model (plain
MLflow, no TFX).

One MLflow run per pushed model: configs as params, the training history and evaluation figures
as metrics, samples, the TensorBoard logs and the tokenizer as artifacts, and the model as an
MLflow `pyfunc` (see tfx_gpt2/serving/mlflow_pyfunc.py) registered as a new version of
`registered_model_name`. Aliases: the new version takes `challenger`; a blessed one also takes
`champion`, the production label, from whichever version held it.

A push is idempotent: the version is tagged with a key of the pushed model (the TFX model
artifact's URI), and pushing the same key again returns the version that holds it.

Credentials are MLflow's own environment variables (`MLFLOW_TRACKING_USERNAME`,
`MLFLOW_TRACKING_PASSWORD`, `MLFLOW_TRACKING_TOKEN`); they are never arguments here, and a
tracking URI with a password in it is logged redacted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.parse
import uuid
from typing import Dict, List, Mapping, Optional

from tfx_gpt2.progress import get_logger

logger = get_logger("tfx_gpt2.registry")

CHAMPION = "champion"
# Registry model URIs: models:/NAME@ALIAS and models:/NAME/VERSION.
ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
CHALLENGER = "challenger"
SAMPLE_PROMPTS = ("The", "A function is", "In Python,")
MODEL_KEY_TAG = "tfx_gpt2.model_key"
# On a push's MLflow run: the host and process that run it (a later push ends it as KILLED when
# that process died with the run still RUNNING).
HOST_TAG = "tfx_gpt2.host"
PID_TAG = "tfx_gpt2.pid"
# On a version: the champion its blessing was decided against (`champion_key()` at evaluation time).
COMPARED_WITH_TAG = "tfx_gpt2.compared_with"
NO_CHAMPION = "none"
# What the pyfunc needs from a model directory (the Trainer's `hf/` and `savedmodel/` stay out).
MODEL_DIR_FILES = ("gpt2_config.json", "model.weights.npz", "encoder.json", "vocab.bpe", "special_tokens.json")
# MLflow's HTTP client retries (defaults 7 retries, backoff factor 2: minutes of waiting on a
# server that is down); a push waits at most about 1 + 2 + 4 s plus timeouts unless these are set.
RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


# On a registered model: the push holding it (`registry_lock` against a tracking server).
LOCK_TAG = "tfx_gpt2.push_lock"
LEASE_SECONDS = 900.0  # a lock left by a killed push expires after this


class RegistryError(RuntimeError):
    """The MLflow tracking server is unreachable, refuses the credentials, or lacks something."""


@dataclasses.dataclass(frozen=True)
class PushResult:
    run_id: str
    experiment_id: str
    registered_model_name: str
    version: int
    model_uri: str
    aliases: List[str]
    already_pushed: bool = False


@dataclasses.dataclass(frozen=True)
class Champion:
    """The version that holds the `champion` alias, and where its model directory was downloaded."""

    version: int
    run_id: str
    model_dir: str


def redact_uri(uri: str) -> str:
    """`uri` without a user name, password or query string (`https://user:pw@host/?token=x` ->
    `https://host/`)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None and not parts.query:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host, query=""))


def default_artifact_location(tracking_uri: str) -> Optional[str]:
    """For a local sqlite store, artifacts go to `mlartifacts/` beside the database file."""
    if tracking_uri.startswith("sqlite:///"):
        db_path = tracking_uri[len("sqlite:///"):]
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(db_path)), "mlartifacts")
    return None


def flatten_params(prefix: str, values: Mapping) -> Dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in sorted(values.items())}


def set_tracking_uri(tracking_uri: str) -> None:
    """MLflow's tracking URI for this process (what `mlflow.start_run` and friends use), leaving
    the environment as it was: `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI, which
    would then become the setting of every later pipeline built in the same process."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def connect(tracking_uri: str):
    """An `MlflowClient` for `tracking_uri`, after checking that the server answers.

    HTTP retries are bounded (`RETRY_DEFAULTS`, unless the MLflow variables are set).

    Raises:
        RegistryError: the server did not answer, or refused the credentials; the message says
            what to set, never the credentials themselves.
    """
    from mlflow.tracking import MlflowClient

    for key, value in RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    set_tracking_uri(tracking_uri)
    try:
        # The first request to a new sqlite store creates its tables: two runs starting at once
        # on one output folder would both try (MLflow: "table ... already exists").
        with _store_lock(tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri)
            client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - classified below, re-raised with what to do
        error = describe_error(e, tracking_uri) or RegistryError(
            f"MLflow at {redact_uri(tracking_uri)} failed: {type(e).__name__}: {str(e).splitlines()[0][:500]}")
        raise error from None
    return client


def describe_error(error: Exception, tracking_uri: str) -> Optional[RegistryError]:
    """A `RegistryError` saying what to do when `error` is a refused login or a server that did
    not answer; None for other errors."""
    where = redact_uri(tracking_uri)
    text = str(error)
    if any(code in text for code in ("401", "403", "Unauthorized", "Forbidden", "PERMISSION_DENIED",
                                     "UNAUTHENTICATED")):
        return RegistryError(
            f"the MLflow tracking server at {where} refused the credentials (HTTP 401/403). Set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment "
            "of the component, for a user allowed to write to the experiment and the registered model."
        )
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
    if any(s in text for s in ("Max retries exceeded", "Connection refused", "ConnectionError",
                               "Failed to establish", "timed out", "Name or service not known")):
        return RegistryError(
            f"the MLflow tracking server at {where} did not answer after {retries} retries "
            f"({type(error).__name__}: {text.splitlines()[0][:300]}). Start it (e.g. `mlflow server "
            "--backend-store-uri sqlite:///mlflow.db --port 5000`) or point mlflow_tracking_uri at a running one; "
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT set how long to wait."
        )
    return None


# MLflow 3's UI opens an experiment by its kind: without it, in the GenAI view ("No data
# available"); as a model-training experiment, on its runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    """The id of experiment `name` (created if missing), marked as model training for the UI."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):  # made by an earlier version, or by hand
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def version_with_alias(client, registered_model_name: str, alias: str):
    """The `ModelVersion` holding `alias`, or None (also when the registered model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(registered_model_name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def pushed_version(client, registered_model_name: str, model_key: str):
    """The version already registered for `model_key` (see `push_model`), or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(
            f"name = '{registered_model_name}' and tags.`{MODEL_KEY_TAG}` = '{model_key}'")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return min(versions, key=lambda v: int(v.version)) if versions else None


@contextlib.contextmanager
def registry_lock(tracking_uri: str, name: str, timeout: float = 1800.0):
    """Serialises pushes to the registered model `name` across processes and runs: the champion
    check, the registration and the alias moves of one push happen while no other push to `name`
    runs. With a local store (sqlite or a folder) an exclusive file lock beside it (released by
    the system when the process dies); with a tracking server, a lease held as a tag of the
    registered model (expiring after `LEASE_SECONDS`, so a killed push does not block forever).

    Raises:
        RegistryError: another push held the lock for `timeout` seconds.
    """
    path = _lock_path(tracking_uri, name)
    lock = file_lock(path, timeout) if path else _lease(tracking_uri, name, timeout)
    with lock:
        yield


def _store_lock(tracking_uri: str):
    """An exclusive lock on a local store's creation (a no-op for a tracking server)."""
    path = _lock_path(tracking_uri, "store")
    return file_lock(os.path.join(os.path.dirname(path), "store-creation"), 300.0) if path else contextlib.nullcontext()


def _lock_path(tracking_uri: str, name: str) -> Optional[str]:
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.scheme == "sqlite":
        store = tracking_uri[len("sqlite:///"):]
        folder = os.path.join(os.path.dirname(os.path.abspath(store)), "." + os.path.basename(store) + ".locks")
    elif parts.scheme in ("", "file"):
        folder = os.path.join(os.path.abspath(parts.path or tracking_uri), ".locks")
    else:
        return None
    return os.path.join(folder, re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".lock")


@contextlib.contextmanager
def file_lock(path: str, timeout: float):
    """Holds an exclusive lock on the file `path` (waiting at most `timeout` s); the system releases
    it when the process dies, however it dies."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(f"another push held {path} for {timeout:.0f} s; is a run stuck?") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _lease(tracking_uri: str, name: str, timeout: float, settle: float = 2.0):
    from mlflow.exceptions import MlflowException

    client = connect(tracking_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout

    def holder():
        tag = client.get_registered_model(name).tags.get(LOCK_TAG, "")
        who, _, until = tag.rpartition("|")
        return who if who and float(until or 0) > time.time() else ""

    while True:
        current = holder()
        if not current:
            client.set_registered_model_tag(name, LOCK_TAG, f"{owner}|{time.time() + LEASE_SECONDS}")
            time.sleep(settle)  # two pushes that both saw it free: the last write wins, the other waits
            if holder() == owner:
                break
        elif time.monotonic() > deadline:
            raise RegistryError(f"another push to {name} ({current}) held the lock for {timeout:.0f} s")
        else:
            time.sleep(1.0)
    try:
        yield
    finally:
        if holder() == owner:
            client.delete_registered_model_tag(name, LOCK_TAG)


def champion_version(tracking_uri: str, registered_model_name: str):
    """The `ModelVersion` holding `champion`, or None.

    Raises:
        RegistryError: the server is unreachable or refuses the credentials.
    """
    return version_with_alias(connect(tracking_uri), registered_model_name, CHAMPION)


def champion_key(tracking_uri: str, registered_model_name: str, model_key: str) -> str:
    """What a blessing of the model `model_key` depends on in the registry, as a string that
    changes when the champion does: `none` without a champion, else `version N (run R)` of the
    champion. When the champion is that model itself, the key its blessing was decided against
    (the version's `COMPARED_WITH_TAG`): that blessing is what made it champion, so it still holds.

    Raises:
        RegistryError: the server is unreachable or refuses the credentials.
    """
    version = champion_version(tracking_uri, registered_model_name)
    if version is None:
        return NO_CHAMPION
    tags = version.tags or {}
    if tags.get(MODEL_KEY_TAG) == model_key and tags.get(COMPARED_WITH_TAG):
        return tags[COMPARED_WITH_TAG]
    return f"version {version.version} (run {version.run_id})"


def download_champion(tracking_uri: str, registered_model_name: str, dst: Optional[str] = None,
                      alias: str = CHAMPION) -> Optional[Champion]:
    """Downloads the model directory of the version holding `alias` (`champion`); None when no version does.

    Raises:
        RegistryError: the server is unreachable or refuses the credentials.
    """
    import mlflow
    import yaml

    version = version_with_alias(connect(tracking_uri), registered_model_name, alias)
    if version is None:
        return None
    dst = dst or tempfile.mkdtemp(prefix="champion-")
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{registered_model_name}/{version.version}", dst_path=dst, tracking_uri=tracking_uri)
    with open(os.path.join(local, "MLmodel")) as f:
        flavor = yaml.safe_load(f)["flavors"]["python_function"]
    from tfx_gpt2.serving.mlflow_pyfunc import MODEL_DIR_ARTIFACT

    model_dir = os.path.join(local, flavor["artifacts"][MODEL_DIR_ARTIFACT]["path"])
    return Champion(version=int(version.version), run_id=version.run_id, model_dir=model_dir)


def _stage_model_dir(model_dir: str, dst: str) -> str:
    os.makedirs(dst)
    for name in MODEL_DIR_FILES:
        if os.path.exists(os.path.join(model_dir, name)):
            shutil.copy2(os.path.join(model_dir, name), dst)
    return dst


def push_model(
    *, tracking_uri: str, experiment_name: str, registered_model_name: str, model_dir: str, model_key: str,
    params: Mapping[str, str], history: List[Dict[str, float]], eval_metrics: Mapping[str, float], blessed: bool,
    tensorboard_dir: Optional[str] = None, tags: Optional[Mapping[str, str]] = None,
    samples: Optional[List[str]] = None, input_example: Optional[List[str]] = None,
    training_samples: Optional[List[Dict[str, object]]] = None,
) -> PushResult:
    """Logs and registers the model in `model_dir`; see the module docstring.

    Args:
        tracking_uri: MLflow tracking URI (`sqlite:///path.db`, `http://host:5000`, ...).
        experiment_name: created if missing (local sqlite stores keep artifacts beside the db).
        registered_model_name: the registered model that gets a new version.
        model_dir: a tfx-gpt2 model directory (`tfx_gpt2.model.io`).
        model_key: identifies this model (e.g. its TFX artifact URI): a second push with the same
            key returns the version registered by the first, and moves no alias, except `champion`
            to it when it is blessed again (against a champion that has moved since).
        params: run params (configs, flattened).
        history, eval_metrics: training records (`step` plus metrics), logged as `trainer.<name>`
            series; final evaluation figures (logged at the last step).
        blessed, tensorboard_dir: whether `champion` moves to it; logged under `tensorboard/`.
        tags: run and version tags (pipeline name, run id, data span, checkpoint origin, ...).
        samples, input_example: generated texts to log as `samples.txt`; the pyfunc's example prompts.
        training_samples: the samples taken while training (`step`, `prompt`, `text`), logged as
            `training_samples.json`.

    Raises:
        RegistryError: the server is unreachable or refuses the credentials.
    """
    import mlflow

    client = connect(tracking_uri)
    tags = {**(tags or {}), MODEL_KEY_TAG: model_key}
    try:
        existing = pushed_version(client, registered_model_name, model_key)
        if existing is not None:
            return _push_again(client, registered_model_name, existing, model_key, blessed)
        experiment_id = ensure_experiment(client, experiment_name, tracking_uri)
        end_dead_runs(client, experiment_id)
        run_tags = {**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}  # see end_dead_runs
        with _killed_on_interrupt(client), mlflow.start_run(experiment_id=experiment_id, tags=run_tags) as run, \
                tempfile.TemporaryDirectory() as tmp:
            run_id = run.info.run_id
            logger.info("MLflow run %s in experiment %r at %s", run_id, experiment_name, redact_uri(tracking_uri))
            _log_figures(client, run_id, history, eval_metrics, params, blessed)
            _log_files(model_dir, tensorboard_dir, samples, training_samples)
            info = _log_pyfunc(model_dir, os.path.join(tmp, "model_dir"), input_example)
        version, aliases = _register(client, info.model_uri, registered_model_name, tags, blessed)
    except RegistryError:
        raise
    except Exception as e:  # noqa: BLE001 - connection and auth failures get what to do
        error = describe_error(e, tracking_uri)
        if error is None:
            raise
        raise error from None
    return PushResult(
        run_id=run_id, experiment_id=experiment_id, registered_model_name=registered_model_name,
        version=int(version.version), model_uri=f"models:/{registered_model_name}/{version.version}",
        aliases=aliases,
    )


@contextlib.contextmanager
def _killed_on_interrupt(client):
    """Ends the active MLflow run as KILLED when the push is interrupted (Ctrl-C, or SIGTERM, which
    becomes SystemExit here while the push runs in the main thread); other errors end it FAILED
    (MLflow's own `start_run`). A SIGKILL cannot be caught: `end_dead_runs` cleans up after it."""
    import signal
    import threading

    import mlflow

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        run = mlflow.last_active_run()
        if run is not None and run.info.status in ("RUNNING", "FAILED"):
            client.set_terminated(run.info.run_id, "KILLED")
            logger.warning("push interrupted: MLflow run %s ended as KILLED", run.info.run_id)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def end_dead_runs(client, experiment_id: str) -> List[str]:
    """Ends as KILLED the experiment's runs left RUNNING by pushes whose process died on this
    host (a SIGKILL, a power cut); returns their ids. Runs of other hosts are left alone."""
    host, ended = socket.gethostname(), []
    runs = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
    for run in runs:
        pid = int(run.data.tags.get(PID_TAG, "0") or 0)
        if pid and not _alive(pid):
            client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
            logger.warning("MLflow run %s was left RUNNING by process %d, which died: ended as KILLED",
                           run.info.run_id, pid)
    return ended


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _push_again(client, name: str, existing, model_key: str, blessed: bool) -> PushResult:
    """The result of a push that finds its model registered already (see `push_model`): a retry
    after a push that died between registering the version and moving its aliases finishes the
    job, and a repeated push moves nothing back."""
    run = client.get_run(existing.run_id)
    aliases = sorted(existing.aliases)
    missing = []
    challenger = version_with_alias(client, name, CHALLENGER)
    if CHALLENGER not in aliases and (challenger is None or int(challenger.version) < int(existing.version)):
        missing.append(CHALLENGER)  # no later version took it since: the interrupted push never set it
    if blessed and CHAMPION not in aliases:
        # Blessed (again, when the champion moved since the first push: the evaluator's cache key
        # follows the champion): the production label follows.
        missing.append(CHAMPION)
    for alias in missing:
        client.set_registered_model_alias(name, alias, existing.version)
    if missing:
        logger.info("%s version %s already holds this model (%s); it now takes %s", name, existing.version,
                    model_key, missing)
    else:
        logger.info("%s version %s already holds this model (%s): nothing to push", name, existing.version,
                    model_key)
    return PushResult(run_id=existing.run_id, experiment_id=run.info.experiment_id, registered_model_name=name,
                      version=int(existing.version), model_uri=f"models:/{name}/{existing.version}",
                      aliases=sorted(aliases + missing), already_pushed=True)


def _log_figures(client, run_id: str, history, eval_metrics, params, blessed: bool) -> None:
    """Training series as `trainer.<name>`, evaluation figures at the last step, params, `blessed`."""
    from mlflow.entities import Metric, Param, RunTag

    last_step = int(history[-1]["step"]) if history else 0
    metrics = [Metric(key=f"trainer.{k}", value=float(v), timestamp=0, step=int(rec["step"]))
               for rec in history for k, v in rec.items() if k != "step"]
    metrics += [Metric(key=k, value=float(v), timestamp=0, step=last_step) for k, v in eval_metrics.items()]
    for i in range(0, len(metrics), 1000):  # MLflow's limit per batch
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    params = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    client.log_batch(run_id, tags=[RunTag("blessed", str(bool(blessed)).lower())])


def _log_files(model_dir: str, tensorboard_dir, samples, training_samples) -> None:
    """TensorBoard logs, the tokenizer files and the samples, into the active run."""
    import mlflow

    if tensorboard_dir and os.path.isdir(tensorboard_dir):
        mlflow.log_artifacts(tensorboard_dir, artifact_path="tensorboard")
    for name in ("encoder.json", "vocab.bpe", "special_tokens.json"):
        if os.path.exists(os.path.join(model_dir, name)):
            mlflow.log_artifact(os.path.join(model_dir, name), artifact_path="tokenizer")
    if samples:
        mlflow.log_text("\n\n---\n\n".join(samples), "samples.txt")
    if training_samples:
        mlflow.log_dict({"samples": training_samples}, "training_samples.json")


def _log_pyfunc(model_dir: str, staging_dir: str, input_example):
    """The model as an MLflow pyfunc in the active run; returns MLflow's ModelInfo."""
    import mlflow

    from tfx_gpt2.serving.mlflow_pyfunc import DEFAULT_PARAMS, MODEL_DIR_ARTIFACT, SIGNATURE, GPT2PyFunc

    example = None
    if input_example:
        example = (list(input_example), {**DEFAULT_PARAMS, "max_new_tokens": 8, "temperature": 0.0})
    return mlflow.pyfunc.log_model(
        name="model", python_model=GPT2PyFunc(),
        artifacts={MODEL_DIR_ARTIFACT: _stage_model_dir(model_dir, staging_dir)},
        signature=SIGNATURE, input_example=example,
        pip_requirements=["tfx-gpt2", "tensorflow==2.16.2", "tensorflow-text==2.16.1", f"mlflow=={mlflow.__version__}"],
    )


def _register(client, model_uri: str, name: str, tags, blessed: bool):
    """A new version of `name` with `challenger` (and `champion` when blessed); (version, aliases)."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags=tags)
    aliases = [CHALLENGER] + ([CHAMPION] if blessed else [])
    previous = version_with_alias(client, name, CHAMPION)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    held = f"version {previous.version}" if previous else "no version"
    if blessed:
        logger.info("registered %s version %s with aliases %s (champion moved from %s)", name, version.version,
                    aliases, held)
    else:
        logger.info("registered %s version %s as %s; champion stays with %s", name, version.version, CHALLENGER,
                    held)
    return version, aliases
