"""Pipeline settings for orchestrators, from environment variables or a JSON file.

The Airflow DAG (`dags/tfx_gpt2_dag.py`) and the Kubeflow runner (`pipelines/kubeflow_runner.py`)
build their pipeline with `create_pipeline()` from these settings, so that a deployment is
configured without editing code:

    TFX_GPT2_CONFIG        a JSON file with any of the fields below (environment variables win)
    TFX_GPT2_<FIELD>       one field, e.g. TFX_GPT2_MODEL=124M, TFX_GPT2_MAX_STEPS=2000,
                           TFX_GPT2_MONGO_COLLECTIONS=db.coll1,db.coll2
    MLFLOW_TRACKING_URI    the tracking server (MLflow's own variable), unless TFX_GPT2_MLFLOW_TRACKING_URI

Secrets are never settings: the MongoDB connection string is read at run time from the variable
named by `mongo_uri_env`, and MLflow credentials from MLflow's variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Mapping, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_CORPUS = os.path.join(REPO, "data", "pydoc_topics")
PREFIX = "TFX_GPT2_"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable, the value and the fix."""


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """What a deployed pipeline runs on. Every field is `TFX_GPT2_<FIELD>` in the environment.

    Attributes:
        pipeline_name: the pipeline (and Airflow DAG id, MLflow experiment and registered model).
        data_root: folder of text files (local path or a remote filesystem URI such as gs://).
        mongo_collections: `database.collection`s to read instead of `data_root` (comma-separated).
        mongo_text_field: the MongoDB field with the text.
        mongo_filter: MongoDB query as JSON.
        mongo_uri_env: the variable holding the MongoDB connection string at run time.
        output_dir: local runs keep the pipeline root, ML Metadata and (by default) MLflow here.
        pipeline_root: where component outputs go (default `<output_dir>/pipelines/<name>`).
        model, train: presets (`tiny`, `124M`, ...; `tiny`, `finetune`).
        max_steps: overrides the training preset's steps (0: the preset's).
        vocab, vocab_size: 'gpt2', a vocabulary directory, or 'train' with a size.
        init_checkpoint: '' trains from scratch; a checkpoint directory or 'openai:124M' fine-tunes.
        mlflow_tracking_uri: default `$MLFLOW_TRACKING_URI`, else sqlite under `output_dir`.
        perplexity_threshold, min_improvement: the evaluator's blessing rule.
        schedule: the Airflow schedule ('' or 'none': only triggered by hand).
        beam_args: Beam pipeline arguments of the data components (space-separated).
    """

    pipeline_name: str = "tfx-gpt2"
    data_root: str = BUNDLED_CORPUS
    mongo_collections: Tuple[str, ...] = ()
    mongo_text_field: str = "text"
    mongo_filter: str = "{}"
    mongo_uri_env: str = "MONGO_URI"
    output_dir: str = os.path.join(os.path.expanduser("~"), "tfx_gpt2_output")
    pipeline_root: str = ""
    model: str = "tiny"
    train: str = "tiny"
    max_steps: int = 0
    vocab: str = "gpt2"
    vocab_size: int = 0
    init_checkpoint: str = ""
    mlflow_tracking_uri: str = ""
    perplexity_threshold: float = 1e9
    min_improvement: float = 0.0
    schedule: str = "@daily"
    beam_args: Tuple[str, ...] = ("--direct_running_mode=in_memory", "--direct_num_workers=1")

    @property
    def root(self) -> str:
        return self.pipeline_root or os.path.join(self.output_dir, "pipelines", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_dir, "metadata", f"{self.pipeline_name}.db")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or "sqlite:///" + os.path.join(self.output_dir, "mlflow", "mlflow.db")

    def create_pipeline(self, metadata_connection_config=None, **overrides):
        """The pipeline of `tfx_gpt2.pipeline.create_pipeline()` for these settings."""
        from tfx_gpt2.config import train_preset
        from tfx_gpt2.pipeline import create_pipeline
        from tfx_gpt2.sources.mongo import MongoSource

        train = train_preset(self.train, self.max_steps)
        source = self.data_root
        if self.mongo_collections:
            source = MongoSource(collections=self.mongo_collections, text_field=self.mongo_text_field,
                                 filter=self.mongo_filter, uri_env=self.mongo_uri_env)
        if self.tracking_uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(self.tracking_uri[len("sqlite:///"):]), exist_ok=True)
        kwargs = dict(
            pipeline_name=self.pipeline_name, pipeline_root=self.root, data_root=source,
            mlflow_tracking_uri=self.tracking_uri, model=self.model, train=train, vocab=self.vocab,
            vocab_size=self.vocab_size or None, init_checkpoint=self.init_checkpoint or None,
            perplexity_threshold=self.perplexity_threshold, min_improvement=self.min_improvement,
            metadata_connection_config=metadata_connection_config, beam_pipeline_args=list(self.beam_args),
        )
        kwargs.update(overrides)
        return create_pipeline(**kwargs)


def _convert(name: str, value, field: dataclasses.Field, where: str):
    default = field.default
    try:
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v] if name != "beam_args" else value.split()
            return tuple(str(v) for v in value)
        return type(default)(value)
    except (TypeError, ValueError):
        raise SettingsError(
            f"{where} = {value!r} is not a valid {name} (expected {type(default).__name__}, like {default!r})."
        ) from None


def from_env(environ: Optional[Mapping[str, str]] = None) -> PipelineSettings:
    """Settings from `TFX_GPT2_CONFIG` (a JSON file) and `TFX_GPT2_<FIELD>` variables.

    Raises:
        SettingsError: an unknown key in the file, or a value of the wrong type, named with its source.
    """
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(PipelineSettings)}
    values: Dict[str, object] = {}
    path = environ.get(PREFIX + "CONFIG")
    if path:
        try:
            with open(path) as f:
                from_file = json.load(f)
        except (OSError, ValueError) as e:
            raise SettingsError(f"{PREFIX}CONFIG = {path!r} could not be read as JSON: {e}.") from None
        unknown = sorted(set(from_file) - set(fields))
        if unknown:
            raise SettingsError(f"{path}: unknown setting(s) {unknown}; the settings are {sorted(fields)}.")
        for name, value in from_file.items():
            values[name] = _convert(name, value, fields[name], f"{path}: {name}")
    if environ.get("MLFLOW_TRACKING_URI") and not environ.get(PREFIX + "MLFLOW_TRACKING_URI"):
        values["mlflow_tracking_uri"] = environ["MLFLOW_TRACKING_URI"]
    for name, field in fields.items():
        key = PREFIX + name.upper()
        if key in environ:
            values[name] = _convert(name, environ[key], field, key)
    if str(values.get("schedule", "")).lower() == "none":
        values["schedule"] = ""
    return PipelineSettings(**values)

