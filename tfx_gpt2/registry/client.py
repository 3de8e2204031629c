"""The connection to MLflow: the tracking URI (redacted wherever it is shown), a client checked to
answer, the experiment, errors in words, and the URIs of registered models (plain MLflow, no TFX).

Credentials are MLflow's own environment variables (`MLFLOW_TRACKING_USERNAME`,
`MLFLOW_TRACKING_PASSWORD`, `MLFLOW_TRACKING_TOKEN`); they are never arguments here, and a
tracking URI with a password in it is logged redacted.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
from typing import Dict, Mapping, Optional

from tfx_gpt2.file_lock import file_lock
from tfx_gpt2.progress import get_logger

logger = get_logger("tfx_gpt2.registry")

CHAMPION = "champion"
# Registry model URIs: models:/NAME@ALIAS and models:/NAME/VERSION.
ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
CHALLENGER = "challenger"
# MLflow's HTTP client retries (defaults 7 retries, backoff factor 2: minutes of waiting on a
# server that is down); a push waits at most about 1 + 2 + 4 s plus timeouts unless these are set.
RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class RegistryError(RuntimeError):
    """The MLflow tracking server is unreachable, refuses the credentials, or lacks something."""


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
        with store_lock(tracking_uri):
            client = MlflowClient(tracking_uri=tracking_uri)
            client.search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - classified below, re-raised with what to do
        error = describe_error(e, tracking_uri) or RegistryError(
            f"MLflow at {redact_uri(tracking_uri)} failed: {type(e).__name__}: {str(e).splitlines()[0][:500]}")
        raise error from None
    return client


# A refused login in an error's text: the status codes as whole numbers (not the digits of a port,
# as in `127.0.0.1:40381`), or their names.
_REFUSED = re.compile(r"(?<![\d:.=])(?:401|403)(?!\d)|Unauthorized|Forbidden|PERMISSION_DENIED|UNAUTHENTICATED")


def describe_error(error: Exception, tracking_uri: str) -> Optional[RegistryError]:
    """A `RegistryError` saying what to do when `error` is a refused login or a server that did
    not answer; None for other errors."""
    where = redact_uri(tracking_uri)
    text = str(error)
    if _REFUSED.search(text):
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


def store_lock(tracking_uri: str):
    """An exclusive lock on a local store's creation (a no-op for a tracking server)."""
    path = lock_path(tracking_uri, "store")
    if not path:
        return contextlib.nullcontext()
    return file_lock(os.path.join(os.path.dirname(path), "store-creation"), 300.0, holder="another run",
                     error=RegistryError)


def lock_path(tracking_uri: str, name: str) -> Optional[str]:
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.scheme == "sqlite":
        store = tracking_uri[len("sqlite:///"):]
        folder = os.path.join(os.path.dirname(os.path.abspath(store)), "." + os.path.basename(store) + ".locks")
    elif parts.scheme in ("", "file"):
        folder = os.path.join(os.path.abspath(parts.path or tracking_uri), ".locks")
    else:
        return None
    return os.path.join(folder, re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".lock")
