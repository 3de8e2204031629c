"""Pipeline settings for every runner, from environment variables, a JSON file and flags.

The Beam example and templates (`examples/`), the Airflow DAG (`dags/tfx_gpt2_dag.py`) and the
Kubeflow runner (`pipelines/kubeflow_runner.py`) all start from `from_env()`, apply their
command-line flags with `dataclasses.replace`, and build the pipeline with
`tfx_gpt2.pipeline.pipeline_from_settings()`, so that a deployment is configured without editing code:

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

from tfx_gpt2.config.model import train_preset, warm_schedule
from tfx_gpt2.config.model import ConfigError
from tfx_gpt2.config.pipeline import (DataConfig, EvalConfig, GateMetric, OutputLayout, RegistryConfig, TextFolder,
                                      TrainingSetup)
from tfx_gpt2.sources.mongo import MongoSource

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED_CORPUS = os.path.join(REPO, "data", "pydoc_topics")
BUNDLED_TASKS = os.path.join(REPO, "data", "tasks")  # two task files built from the bundled corpus
PREFIX = "TFX_GPT2_"
# The one default output folder (relative to the working directory) of every runner, example and
# `tfx-gpt2` subcommand; TFX_GPT2_OUTPUT_DIR or --output-dir change it.
DEFAULT_OUTPUT_DIR = "tfx_gpt2_output"
# One Beam worker in this process: the data components are small next to training, and a
# process pool would hold a second TensorFlow. `--beam-arg` / TFX_GPT2_BEAM_ARGS change it.
DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable, the value and the fix."""


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """What a pipeline runs on. Every field is `TFX_GPT2_<FIELD>` in the environment.

    Attributes:
        pipeline_name: the pipeline (and Airflow DAG id, MLflow experiment and registered model).
        data_root: folder of text files (local path or a remote filesystem URI such as gs://).
        file_pattern: glob of the text files under `data_root`.
        mongo_collections: `database.collection`s to read instead of `data_root` (comma-separated).
        mongo_text_field: the MongoDB field with the text.
        mongo_filter: MongoDB query as JSON.
        mongo_uri_env: the variable holding the MongoDB connection string at run time.
        mongo_incremental: export only new documents each run, as a new span.
        mongo_watermark_field: the field that orders documents for incremental exports.
        control_field: a MongoDB field holding a special token that starts each document.
        output_dir: the pipeline root, ML Metadata and (by default) MLflow go here (`OutputLayout`).
        pipeline_root: where component outputs go (default `<output_dir>/pipelines/<name>`).
        model, train: presets (`tiny`, `124M`, ...; `tiny`, `finetune`, `lora`); model '' means `tiny`,
            or the checkpoint's shape when fine-tuning.
        max_steps: overrides the training preset's steps (0: the preset's).
        vocab, vocab_size: 'gpt2', a vocabulary directory, or 'train' with a size.
        special_tokens: extra special tokens (comma-separated).
        init_checkpoint: '' trains from scratch; a checkpoint directory or 'openai:124M' fine-tunes.
        warm_start: fine-tune the registered champion when there is one (on by default for
            `tfx-gpt2 retrain` and the feedback loop's DAG), with its own schedule:
        warm_start_learning_rate: its peak learning rate (0: a third of the training preset's);
        warm_start_steps: its steps (0: the training preset's, or max_steps).
        mlflow_tracking_uri: default `$MLFLOW_TRACKING_URI`, else sqlite under `output_dir`.
        perplexity_threshold, min_improvement, beat_baseline: the evaluator's blessing rule (see
            `RegistryConfig`).
        gate: the gate metrics, comma-separated `metric:direction[:margin]`, e.g.
            `eval_perplexity:lower:0.01,next_word_accuracy:higher:-0.02` (`GateMetric`; empty:
            eval perplexity with min_improvement).
        eval_tasks_dir: a folder of multiple-choice task files for the evaluator (default: the two
            bundled ones, built from the bundled corpus; '' or 'none': no tasks).
        next_word_documents, eval_samples: eval documents whose last word is predicted, and
            document openings sampled for the sample figures (`EvalConfig`; 0: off).
        schedule: the Airflow schedule ('' or 'none': only triggered by hand).
        beam_args: Beam pipeline arguments of the data components (space-separated).
        enable_cache: reuse the outputs of components whose inputs did not change.
        feedback_loop: read the corpus plus users' feedback, as spans under
            `<output_dir>/training-data/<name>` (`tfx_gpt2.orchestration.continuous`; the Airflow feedback DAG).
        feedback_collection: with a MongoDB corpus, the collection of feedback documents
            (default `tfx_gpt2.training_feedback` in the loop).
    """

    pipeline_name: str = "tfx-gpt2"
    data_root: str = BUNDLED_CORPUS
    file_pattern: str = "*.txt"
    mongo_collections: Tuple[str, ...] = ()
    mongo_text_field: str = "text"
    mongo_filter: str = "{}"
    mongo_uri_env: str = "MONGO_URI"
    mongo_incremental: bool = False
    mongo_watermark_field: str = "_id"
    control_field: str = ""
    output_dir: str = DEFAULT_OUTPUT_DIR
    pipeline_root: str = ""
    model: str = ""
    train: str = "tiny"
    max_steps: int = 0
    vocab: str = "gpt2"
    vocab_size: int = 0
    special_tokens: Tuple[str, ...] = ()
    init_checkpoint: str = ""
    warm_start: bool = False
    warm_start_learning_rate: float = 0.0
    warm_start_steps: int = 0
    mlflow_tracking_uri: str = ""
    perplexity_threshold: float = 1e9
    min_improvement: float = 0.0
    beat_baseline: bool = True
    gate: Tuple[str, ...] = ()
    eval_tasks_dir: str = BUNDLED_TASKS
    next_word_documents: int = 200
    eval_samples: int = 8
    schedule: str = ""
    beam_args: Tuple[str, ...] = DEFAULT_BEAM_ARGS
    enable_cache: bool = True
    feedback_loop: bool = False
    feedback_collection: str = ""

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(os.path.abspath(self.output_dir), self.pipeline_name)

    @property
    def root(self) -> str:
        return self.pipeline_root or self.layout.pipeline_root

    @property
    def metadata_path(self) -> str:
        return self.layout.metadata_path

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or self.layout.mlflow_tracking_uri

    def data_config(self) -> DataConfig:
        source = TextFolder(root=self.data_root, file_pattern=self.file_pattern)
        if self.mongo_collections:
            source = MongoSource(
                collections=self.mongo_collections, text_field=self.mongo_text_field, filter=self.mongo_filter,
                uri_env=self.mongo_uri_env, incremental=self.mongo_incremental,
                watermark_field=self.mongo_watermark_field, feedback_collection=self.feedback_collection,
                metadata_fields=(self.control_field,) if self.control_field else ())
        return DataConfig(source=source, vocab=self.vocab, vocab_size=self.vocab_size or None,
                          special_tokens=self.special_tokens, control_feature=self.control_field)

    def training_setup(self) -> TrainingSetup:
        train = train_preset(self.train, self.max_steps)
        return TrainingSetup(model=self.model or None, train=train, init_checkpoint=self.init_checkpoint or None,
                             warm_start=self.warm_start,
                             warm_train=warm_schedule(train, self.warm_start_learning_rate, self.warm_start_steps))

    def registry_config(self) -> RegistryConfig:
        return RegistryConfig(tracking_uri=self.tracking_uri, perplexity_threshold=self.perplexity_threshold,
                              min_improvement=self.min_improvement, beat_baseline=self.beat_baseline,
                              gate=tuple(parse_gate_metric(spec) for spec in self.gate))

    def eval_config(self) -> EvalConfig:
        tasks = "" if self.eval_tasks_dir.lower() in ("", "none") else self.eval_tasks_dir
        return EvalConfig(tasks_dir=tasks, next_word_documents=self.next_word_documents, samples=self.eval_samples)


def parse_gate_metric(spec: str) -> GateMetric:
    """`metric:direction[:margin]` (a `gate` setting's entry) as a `GateMetric`."""
    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError("it has no direction")
        return GateMetric(parts[0], parts[1], float(parts[2]) if len(parts) == 3 else 0.0)
    except (ValueError, ConfigError) as e:
        raise SettingsError(f"{PREFIX}GATE entry {spec!r} is not metric:direction[:margin] ({e}); e.g. "
                            "eval_perplexity:lower:0.01,next_word_accuracy:higher:-0.02") from None


def _convert(name: str, value, field: dataclasses.Field, where: str):
    default = field.default
    try:
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v] if name != "beam_args" else value.split()
            return tuple(str(v) for v in value)
        if isinstance(default, bool) and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        return type(default)(value)
    except (TypeError, ValueError):
        raise SettingsError(
            f"{where} = {value!r} is not a valid {name} (expected {type(default).__name__}, like {default!r})."
        ) from None


def _from_file(path: str, fields: Dict[str, dataclasses.Field]) -> Dict[str, object]:
    try:
        with open(path) as f:
            from_file = json.load(f)
    except (OSError, ValueError) as e:
        raise SettingsError(f"{PREFIX}CONFIG = {path!r} could not be read as JSON: {e}.") from None
    unknown = sorted(set(from_file) - set(fields))
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {unknown}; the settings are {sorted(fields)}.")
    return {name: _convert(name, value, fields[name], f"{path}: {name}") for name, value in from_file.items()}


def from_env(environ: Optional[Mapping[str, str]] = None, **defaults) -> PipelineSettings:
    """Settings from `defaults` (a runner's own, e.g. its output directory), then `TFX_GPT2_CONFIG`
    (a JSON file), then `MLFLOW_TRACKING_URI`, then `TFX_GPT2_<FIELD>` variables, each over the last.

    Raises:
        SettingsError: an unknown key in the file, or a value of the wrong type, named with its source.
    """
    environ = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(PipelineSettings)}
    values: Dict[str, object] = dict(defaults)
    if environ.get(PREFIX + "CONFIG"):
        values.update(_from_file(environ[PREFIX + "CONFIG"], fields))
    if environ.get("MLFLOW_TRACKING_URI") and not environ.get(PREFIX + "MLFLOW_TRACKING_URI"):
        values["mlflow_tracking_uri"] = environ["MLFLOW_TRACKING_URI"]
    for name, field in fields.items():
        key = PREFIX + name.upper()
        if key in environ:
            values[name] = _convert(name, environ[key], field, key)
    if str(values.get("schedule", "")).lower() == "none":
        values["schedule"] = ""
    return PipelineSettings(**values)
