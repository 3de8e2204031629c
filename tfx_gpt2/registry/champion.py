"""The production model: which version holds `@champion`, a key of it for the gate, and its model
directory downloaded (plain MLflow, no TFX)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Optional

from tfx_gpt2.config.checkpoint_shape import CONFIG_FILE, WEIGHTS_FILE
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
MODEL_DIR_FILES = (CONFIG_FILE, WEIGHTS_FILE, ENCODER_FILE, MERGES_FILE, SPECIAL_TOKENS_FILE)
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

    model_dir = os.path.join(local, flavor["artifacts"][MODEL_DIR_ARTIFACT]["path"])
    return Champion(version=int(version.version), run_id=version.run_id, model_dir=model_dir)


def stage_model_dir(model_dir: str, dst: str) -> str:
    os.makedirs(dst)
    for name in MODEL_DIR_FILES:
        if os.path.exists(os.path.join(model_dir, name)):
            shutil.copy2(os.path.join(model_dir, name), dst)
    return dst
