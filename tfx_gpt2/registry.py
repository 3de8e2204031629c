"""Logging a trained model to MLflow and registering it (plain MLflow, no TFX).

One MLflow run per push: configs as params, the training history and evaluation figures as
metrics, samples, the TensorBoard logs and the tokenizer as artifacts, and the model as an MLflow
`pyfunc` (see tfx_gpt2/serving/mlflow_pyfunc.py) registered as a new version of
`registered_model_name`. Aliases: the new version takes `challenger`; a blessed one also takes
`champion`, the production label.

Credentials are MLflow's own environment variables (`MLFLOW_TRACKING_USERNAME`,
`MLFLOW_TRACKING_PASSWORD`, `MLFLOW_TRACKING_TOKEN`); they are never arguments here.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from typing import Dict, List, Mapping, Optional

from tfx_gpt2.progress import get_logger

logger = get_logger("tfx_gpt2.registry")

CHAMPION = "champion"
CHALLENGER = "challenger"
SAMPLE_PROMPTS = ("The", "A function is", "In Python,")


@dataclasses.dataclass(frozen=True)
class PushResult:
    run_id: str
    experiment_id: str
    registered_model_name: str
    version: int
    model_uri: str
    aliases: List[str]


def redact_uri(uri: str) -> str:
    """`uri` without a user name or password (`https://user:pw@host` -> `https://host`)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def default_artifact_location(tracking_uri: str) -> Optional[str]:
    """For a local sqlite store, artifacts go to `mlartifacts/` beside the database file."""
    if tracking_uri.startswith("sqlite:///"):
        db_path = tracking_uri[len("sqlite:///"):]
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(db_path)), "mlartifacts")
    return None


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))


def flatten_params(prefix: str, values: Mapping) -> Dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in sorted(values.items())}


def push_model(
    *,
    tracking_uri: str,
    experiment_name: str,
    registered_model_name: str,
    model_dir: str,
    params: Mapping[str, str],
    history: List[Dict[str, float]],
    eval_metrics: Mapping[str, float],
    blessed: bool,
    tensorboard_dir: Optional[str] = None,
    tags: Optional[Mapping[str, str]] = None,
    samples: Optional[List[str]] = None,
) -> PushResult:
    """Logs and registers the model in `model_dir`; see the module docstring.

    Args:
        tracking_uri: MLflow tracking URI (`sqlite:///path.db`, `http://host:5000`, ...).
        experiment_name: created if missing (local sqlite stores keep artifacts beside the db).
        registered_model_name: the registered model that gets a new version.
        model_dir: a tfx-gpt2 model directory (`tfx_gpt2.model.io`).
        params: run params (configs, flattened).
        history: training records (`step` plus metrics), logged as `trainer.<name>` series.
        eval_metrics: final evaluation figures (logged at the last step).
        blessed: whether the evaluator blessed the model (moves `champion` to it).
        tensorboard_dir: logged under the `tensorboard/` artifact path.
        tags: run and version tags.
        samples: generated texts to log as `samples.txt`.
    """
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from tfx_gpt2.serving.mlflow_pyfunc import MODEL_DIR_ARTIFACT, SIGNATURE, GPT2PyFunc

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, experiment_name, tracking_uri)
    tags = dict(tags or {})
    last_step = int(history[-1]["step"]) if history else 0
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        run_id = run.info.run_id
        logger.info("MLflow run %s in experiment %r at %s", run_id, experiment_name, redact_uri(tracking_uri))
        metrics = [
            Metric(key=f"trainer.{k}", value=float(v), timestamp=0, step=int(rec["step"]))
            for rec in history for k, v in rec.items() if k != "step"
        ]
        metrics += [Metric(key=k, value=float(v), timestamp=0, step=last_step) for k, v in eval_metrics.items()]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag("blessed", str(bool(blessed)).lower())])
        if tensorboard_dir and os.path.isdir(tensorboard_dir):
            mlflow.log_artifacts(tensorboard_dir, artifact_path="tensorboard")
        tokenizer_files = [os.path.join(model_dir, n) for n in ("encoder.json", "vocab.bpe")]
        for path in tokenizer_files:
            mlflow.log_artifact(path, artifact_path="tokenizer")
        if samples:
            mlflow.log_text("\n\n---\n\n".join(samples), "samples.txt")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=GPT2PyFunc(),
            artifacts={MODEL_DIR_ARTIFACT: model_dir},
            signature=SIGNATURE,
            pip_requirements=["tfx-gpt2", "tensorflow==2.16.2", f"mlflow=={mlflow.__version__}"],
        )
    version = mlflow.register_model(info.model_uri, registered_model_name, tags=tags)
    aliases = [CHALLENGER] + ([CHAMPION] if blessed else [])
    for alias in aliases:
        client.set_registered_model_alias(registered_model_name, alias, version.version)
    logger.info("registered %s version %s with alias(es) %s", registered_model_name, version.version, aliases)
    return PushResult(
        run_id=run_id, experiment_id=experiment_id, registered_model_name=registered_model_name,
        version=int(version.version), model_uri=f"models:/{registered_model_name}/{version.version}",
        aliases=aliases,
    )
