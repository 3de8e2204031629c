"""Logging a trained model to MLflow and registering it (plain MLflow, no TFX).

One MLflow run per pushed model: configs as params, the training history and evaluation figures
as metrics, samples, the TensorBoard logs and the tokenizer as artifacts, and the model as an
MLflow `pyfunc` (`tfx_gpt2.registry.pyfunc`) registered as a new version of
`registered_model_name`. Aliases: the new version takes `challenger`; a blessed one also takes
`champion`, the production label, from whichever version held it.

A model of LoRA adapters (a PEFT adapter directory, `tfx_gpt2.model.lora`) is registered as an
adapter-only version: its pyfunc holds the adapters and the vocabulary, its `adapter_config.json`
names the base as a registered version (`models:/<name>-base/<version>`, registered once from the
base's directory by the first push that needs it), and the version is tagged `tfx_gpt2.adapter`
(`lora`) and `tfx_gpt2.base_model` (that URI). Loading it fetches the base and merges the adapters.

A push is idempotent: the version is tagged with a key of the pushed model (the TFX model
artifact's URI), and pushing the same key again returns the version that holds it. A push whose
process died is ended as KILLED by the next one (`end_dead_runs`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import tempfile
from typing import Dict, List, Mapping, Optional

from tfx_gpt2.config.checkpoint_shape import PEFT_CONFIG, adapter_base, read_adapter_config
from tfx_gpt2.config.model import SAMPLING_PARAM_DEFAULTS
from tfx_gpt2.progress import get_logger
from tfx_gpt2.registry.champion import MODEL_DIR_ARTIFACT, MODEL_KEY_TAG, stage_model_dir, version_with_alias
from tfx_gpt2.registry.client import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    connect,
    describe_error,
    ensure_experiment,
    redact_uri,
)
from tfx_gpt2.registry.pyfunc import SIGNATURE, GPT2PyFunc

logger = get_logger("tfx_gpt2.registry")


SAMPLE_PROMPTS = ("The", "A function is", "In Python,")
# On a push's MLflow run: the host and process that run it (a later push ends it as KILLED when
# that process died with the run still RUNNING).
HOST_TAG = "tfx_gpt2.host"
PID_TAG = "tfx_gpt2.pid"
# On an adapter-only version: what it holds (`lora`) and its base (`models:/<name>/<version>`).
ADAPTER_TAG = "tfx_gpt2.adapter"
BASE_MODEL_TAG = "tfx_gpt2.base_model"
# The registered model that holds the bases of `<name>`'s adapter versions.
BASE_MODEL_SUFFIX = "-base"


@dataclasses.dataclass(frozen=True)
class PushResult:
    run_id: str
    experiment_id: str
    registered_model_name: str
    version: int
    model_uri: str
    aliases: List[str]
    already_pushed: bool = False


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


def push_model(
    *, tracking_uri: str, experiment_name: str, registered_model_name: str, model_dir: str, model_key: str,
    params: Mapping[str, str], history: List[Dict[str, float]], eval_metrics: Mapping[str, float], blessed: bool,
    tensorboard_dir: Optional[str] = None, tags: Optional[Mapping[str, str]] = None,
    samples: Optional[List[str]] = None, input_example: Optional[List[str]] = None,
    training_samples: Optional[List[Dict[str, object]]] = None, evaluation_dir: Optional[str] = None,
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
        evaluation_dir: the evaluator's output: its `tensorboard/` is logged under
            `tensorboard/evaluation`, its `samples.json` as `evaluation_samples.json`.

    Raises:
        RegistryError: the server is unreachable or refuses the credentials.
    """
    import mlflow

    client = connect(tracking_uri)
    tags = {**(tags or {}), MODEL_KEY_TAG: model_key}
    with _what_to_do(tracking_uri):
        existing = pushed_version(client, registered_model_name, model_key)
        if existing is not None:
            return _push_again(client, registered_model_name, existing, model_key, blessed)
        experiment_id = ensure_experiment(client, experiment_name, tracking_uri)
        end_dead_runs(client, experiment_id)
        base_uri = registered_base(client, model_dir, experiment_id, registered_model_name)
        tags.update({ADAPTER_TAG: "lora", BASE_MODEL_TAG: base_uri} if base_uri else {})
        run_tags = {**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}  # see end_dead_runs
        with _killed_on_interrupt(client), mlflow.start_run(experiment_id=experiment_id, tags=run_tags) as run:
            run_id = run.info.run_id
            logger.info("MLflow run %s in experiment %r at %s", run_id, experiment_name, redact_uri(tracking_uri))
            _log_figures(client, run_id, history, eval_metrics, params, blessed)
            _log_files(model_dir, tensorboard_dir, samples, training_samples)
            _log_evaluation(evaluation_dir)
            model_uri = _log_pyfunc(model_dir, input_example, base_uri).model_uri
        version, aliases = _register(client, model_uri, registered_model_name, tags, blessed)
    return PushResult(
        run_id=run_id, experiment_id=experiment_id, registered_model_name=registered_model_name,
        version=int(version.version), model_uri=f"models:/{registered_model_name}/{version.version}",
        aliases=aliases,
    )


@contextlib.contextmanager
def _what_to_do(tracking_uri: str):
    """Connection and authentication failures inside the block become a `RegistryError` that says
    what to do (`describe_error`); other errors pass as they are."""
    try:
        yield
    except RegistryError:
        raise
    except Exception as e:  # noqa: BLE001 - connection and auth failures get what to do
        error = describe_error(e, tracking_uri)
        if error is None:
            raise
        raise error from None


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


def _log_evaluation(evaluation_dir: Optional[str]) -> None:
    """The evaluator's TensorBoard scalars and samples, into the active run."""
    import mlflow

    if not evaluation_dir:
        return
    if os.path.isdir(os.path.join(evaluation_dir, "tensorboard")):
        mlflow.log_artifacts(os.path.join(evaluation_dir, "tensorboard"), artifact_path="tensorboard/evaluation")
    if os.path.exists(os.path.join(evaluation_dir, "samples.json")):
        with open(os.path.join(evaluation_dir, "samples.json")) as f:
            mlflow.log_dict(json.load(f), "evaluation_samples.json")


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


def _log_pyfunc(model_dir: str, input_example, base_uri: Optional[str] = None):
    """The model as an MLflow pyfunc in the active run; returns MLflow's ModelInfo. Adapters are
    logged with `base_uri` as their base."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        staged = stage_model_dir(model_dir, os.path.join(tmp, "model_dir"))
        if base_uri:
            config = read_adapter_config(staged)
            with open(os.path.join(staged, PEFT_CONFIG), "w") as f:
                json.dump({**config, "base_model_name_or_path": base_uri}, f, indent=2)
        example = None
        if input_example:
            example = (list(input_example), {**SAMPLING_PARAM_DEFAULTS, "max_new_tokens": 8, "temperature": 0.0})
        return mlflow.pyfunc.log_model(
            name="model", python_model=GPT2PyFunc(),
            artifacts={MODEL_DIR_ARTIFACT: staged},
            signature=SIGNATURE, input_example=example,
            pip_requirements=["tfx-gpt2", "tensorflow==2.16.2", "tensorflow-text==2.16.1",
                              f"mlflow=={mlflow.__version__}"],
        )


def registered_base(client, model_dir: str, experiment_id: str, name: str) -> Optional[str]:
    """For an adapter directory, the `models:/` URI of its base: the one it names, or, when it names
    a directory, a version of `<name>-base` that holds that base, registered by the first push
    that needs it (a later one finds it by the directory's path). None for a full model."""
    import mlflow

    if not os.path.exists(os.path.join(model_dir, PEFT_CONFIG)):
        return None
    named = read_adapter_config(model_dir).get("base_model_name_or_path") or ""
    if named.startswith("models:/"):
        return named
    base_dir = os.path.abspath(adapter_base(model_dir))
    base_name = name + BASE_MODEL_SUFFIX
    existing = pushed_version(client, base_name, base_dir)
    if existing is None:
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"base of {name}",
                              tags={MODEL_KEY_TAG: base_dir}) as run, tempfile.TemporaryDirectory() as tmp:
            info = _log_pyfunc(full_model_dir(base_dir, os.path.join(tmp, "full")), None)
        existing = mlflow.register_model(info.model_uri, base_name, tags={MODEL_KEY_TAG: base_dir})
        logger.info("registered the adapters' base %s as %s version %s (run %s)", base_dir, base_name,
                    existing.version, run.info.run_id)
    return f"models:/{base_name}/{existing.version}"


def full_model_dir(path: str, out: str) -> str:
    """`path` as a tfx-gpt2 model directory: itself, or an OpenAI or Hugging Face checkpoint converted into `out`."""
    from tfx_gpt2.config.checkpoint_shape import detect_format

    if detect_format(path) == "tfx-gpt2":
        return path
    from tfx_gpt2.model.checkpoints import load_checkpoint
    from tfx_gpt2.model.io import save_model_dir

    return save_model_dir(load_checkpoint(path)[0], out, vocab_dir=path)


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
