"""ChampionModel: the registered champion as the Trainer's `base_model` (a warm start).

    champion = ChampionModel(examples=encoder.outputs["encoded"], tracking_uri=..., registered_model_name=NAME)
    Trainer(..., base_model=champion.outputs["model"])

At run time it downloads the model directory of the version that holds `alias` (TFX's pattern of a
Trainer warm-started from the latest blessed model, with the registry saying which model that is:
a version promoted or rolled back by hand counts). The artifact's `registered.json` names the
version, and the Trainer fine-tunes it with the warm-start schedule and records "fine-tuned from
version N". With no version holding the alias, the artifact holds no model: `registered.json`
points to `initial` (the pipeline's own starting checkpoint) if given, else the Trainer trains from
scratch; either way its log says so.

`examples` orders it after the encoder and keys TFX's cache on the data: a run on new data asks
the registry again, a run on the same data reuses the earlier answer along with the Trainer's.
"""

import json
import os
import tempfile

from tfx import v1 as tfx
from tfx.dsl.io import fileio

from tfx_gpt2.progress import get_logger
from tfx_gpt2.uris import copy_tree

REGISTERED_FILE = "registered.json"
logger = get_logger("tfx_gpt2.champion_model")


@tfx.dsl.components.component
def ChampionModel(
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    model: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Model],
    tracking_uri: tfx.dsl.components.Parameter[str],
    registered_model_name: tfx.dsl.components.Parameter[str],
    initial: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model] = None,
    alias: tfx.dsl.components.Parameter[str] = "champion",
):
    """Downloads the version of `registered_model_name` holding `alias` into `model` (see the module docstring)."""
    from tfx_gpt2.registry.champion import download_champion

    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        champion = download_champion(tracking_uri, registered_model_name, tmp, alias=alias)
        if champion is not None:
            copy_tree(champion.model_dir, model.uri)
            record = {"name": registered_model_name, "version": champion.version, "run_id": champion.run_id,
                      "alias": alias}
            logger.info("warm start: models:/%s/%d (@%s) downloaded to %s", registered_model_name,
                        champion.version, alias, model.uri)
        else:
            fallback = _model_dir(initial.uri) if initial is not None else None
            record = {"name": registered_model_name, "version": None, "alias": alias, "fallback": fallback}
            logger.info("warm start: no version of %r holds @%s yet; the Trainer starts from %s", registered_model_name,
                        alias, fallback or "scratch")
    _write(os.path.join(model.uri, REGISTERED_FILE), record)
    model.set_string_custom_property("source", f"models:/{registered_model_name}/{record['version']}"
                                     if record["version"] else (record.get("fallback") or "scratch"))
    model.set_int_custom_property("registered_version", record["version"] or 0)


def _model_dir(uri: str) -> str:
    """A Model artifact's directory as the Trainer reads it (Trainers write into `Format-Serving/`)."""
    serving = os.path.join(uri, "Format-Serving")
    return serving if fileio.isdir(serving) else uri


def _write(path: str, record: dict) -> None:
    fileio.makedirs(os.path.dirname(path))
    with fileio.open(path, "w") as f:
        f.write(json.dumps(record, indent=1))


def read_registered(base_dir: str):
    """The `registered.json` of a ChampionModel artifact, or None for any other base model."""
    path = os.path.join(base_dir, REGISTERED_FILE)
    if not fileio.exists(path):
        return None
    with fileio.open(path) as f:
        return json.loads(f.read())
