"""The production model: which version holds `@champion`, a key of it for the gate, and its model
directory downloaded (plain MLflow, no TFX). A version that holds LoRA adapters only comes with
its base, downloaded from the registry into the adapter directory's `base/`."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Optional

from tfx_gpt2.config.checkpoint_shape import (
    ADAPTER_BASE_DIR,
    CONFIG_FILE,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    WEIGHTS_FILE,
    read_adapter_config,
)
from tfx_gpt2.progress import get_logger
from tfx_gpt2.registry.client import CHAMPION, connect
from tfx_gpt2.text.bpe import ENCODER_FILE, MERGES_FILE, SPECIAL_TOKENS_FILE

logger = get_logger("tfx_gpt2.registry")


# On a version: the key of the pushed model (the TFX model artifact's URI).
MODEL_KEY_TAG = "tfx_gpt2.model_key"
# On a version: the champion its blessing was decided against (`champion_key()` at evaluation time).
COMPARED_WITH_TAG = "tfx_gpt2.compared_with"
NO_CHAMPION = "none"
# What the pyfunc needs from a model directory (the Trainer's `hf/` and `savedmodel/` stay out).
MODEL_DIR_FILES = (CONFIG_FILE, WEIGHTS_FILE, PEFT_CONFIG, PEFT_WEIGHTS, ENCODER_FILE, MERGES_FILE,
                   SPECIAL_TOKENS_FILE)
# The pyfunc's artifact that holds the model directory.
MODEL_DIR_ARTIFACT = "model_dir"


@dataclasses.dataclass(frozen=True)
class Champion:
    """The version that holds the `champion` alias, and where its model directory was downloaded."""

    version: int
    run_id: str
    model_dir: str


def version_with_alias(client, registered_model_name: str, alias: str):
    """The `ModelVersion` holding `alias`, or None (also when the registered model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(registered_model_name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


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
    version = version_with_alias(connect(tracking_uri), registered_model_name, alias)
    if version is None:
        return None
    model_dir = download_model_dir(f"models:/{registered_model_name}/{version.version}",
                                   dst or tempfile.mkdtemp(prefix="champion-"), tracking_uri)
    return Champion(version=int(version.version), run_id=version.run_id, model_dir=model_dir)


def download_model_dir(model_uri: str, dst: str, tracking_uri: Optional[str] = None) -> str:
    """The model directory of a registered version (`models:/...`), downloaded into `dst`, with its
    base beside it when it holds adapters only (`stage_adapter_base`)."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst, tracking_uri=tracking_uri)
    model_dir = pyfunc_model_dir(local)
    if model_dir is None:
        raise ValueError(f"{model_uri} is not a tfx-gpt2 pyfunc: its MLmodel has no {MODEL_DIR_ARTIFACT!r} artifact.")
    stage_adapter_base(model_dir, tracking_uri)
    return model_dir


def pyfunc_model_dir(local: str) -> Optional[str]:
    """The model directory inside a downloaded tfx-gpt2 pyfunc (its MLmodel's `model_dir` artifact),
    or None when `local` is no such pyfunc."""
    import yaml

    if not os.path.exists(os.path.join(local, "MLmodel")):
        return None
    with open(os.path.join(local, "MLmodel")) as f:
        flavor = yaml.safe_load(f)["flavors"].get("python_function", {})
    path = (flavor.get("artifacts") or {}).get(MODEL_DIR_ARTIFACT, {}).get("path")
    return os.path.join(local, path) if path else None


def fetch_adapter_base(model_dir: str, tracking_uri: Optional[str] = None, dst: Optional[str] = None) -> Optional[str]:
    """The base of the adapter directory `model_dir` when it is a registered version
    (`models:/<name>/<version>`): its model directory, downloaded into `dst` (default: a new
    temporary folder). None when `model_dir` holds no adapters or names another kind of base."""
    import mlflow

    if not os.path.exists(os.path.join(model_dir, PEFT_CONFIG)):
        return None
    base = read_adapter_config(model_dir).get("base_model_name_or_path", "")
    if not base.startswith("models:/"):
        return None
    local = mlflow.artifacts.download_artifacts(artifact_uri=base, dst_path=dst or tempfile.mkdtemp(prefix="base-"),
                                                tracking_uri=tracking_uri)
    logger.info("downloaded %s, the base of the adapters in %s", base, model_dir)
    return pyfunc_model_dir(local) or local


def load_model_with_base(model_dir: str, tracking_uri: Optional[str] = None):
    """`load_model(model_dir)`, where an adapter folder whose base is a registered version
    (`models:/`, as a warm start from an adapter champion writes) gets that base from the registry,
    into a temporary folder removed once the model is loaded."""
    from tfx_gpt2.model.checkpoints import load_model

    with tempfile.TemporaryDirectory(prefix="base-") as tmp:
        return load_model(model_dir, base_dir=fetch_adapter_base(model_dir, tracking_uri, tmp))


def stage_adapter_base(model_dir: str, tracking_uri: Optional[str] = None) -> None:
    """`fetch_adapter_base` into `model_dir/base/`, where the loaders look first (for a folder this
    process downloaded; a pyfunc's own artifacts are left as they are)."""
    staged = os.path.join(model_dir, ADAPTER_BASE_DIR)
    if os.path.isdir(staged):
        return
    download = tempfile.mkdtemp(prefix=".base-", dir=model_dir)
    try:
        base = fetch_adapter_base(model_dir, tracking_uri, download)
        if base is not None:
            os.replace(base, staged)
    finally:
        shutil.rmtree(download, ignore_errors=True)


def stage_model_dir(model_dir: str, dst: str) -> str:
    os.makedirs(dst)
    for name in MODEL_DIR_FILES:
        if os.path.exists(os.path.join(model_dir, name)):
            shutil.copy2(os.path.join(model_dir, name), dst)
    return dst
