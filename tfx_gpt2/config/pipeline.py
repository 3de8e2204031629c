"""The typed configs that `create_pipeline()` takes, and the output layout of a run (no TFX).

    data      DataConfig:      where the documents come from (`TextFolder` or `MongoSource`),
                               the vocabulary, the splits and the validation bounds
    training  TrainingSetup:   the model shape, the training settings, the checkpoint to start from
    registry  RegistryConfig:  MLflow (tracking URI, names) and the blessing rule, with its gate
                               metrics (`GateMetric`)
    evaluation EvalConfig:     what the evaluator measures beyond perplexity (next-word accuracy,
                               task files, sample quality)

Every runner (the Beam example and templates, the Airflow DAG, the Kubeflow runner) builds these
from `tfx_gpt2.config.settings.PipelineSettings`, so that a setting means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from typing import Dict, Optional, Tuple, Union

from tfx_gpt2.config.checkpoint_shape import read_checkpoint_config
from tfx_gpt2.config.model import ConfigError, GPT2Config, TrainConfig, model_preset, train_preset, warm_schedule
from tfx_gpt2.sources.mongo import MongoSource
from tfx_gpt2.sources.text_files import DEFAULT_SEPARATOR
from tfx_gpt2.text.bpe import VocabularyError, check_special_tokens, vocab_files


@dataclasses.dataclass(frozen=True)
class TextFolder:
    """Text files as the data source.

    Attributes:
        root: the folder (a local path or a filesystem URI such as gs://).
        file_pattern: glob of the files under `root`.
        separator: the string between documents in a file (None: one document per file).
    """

    root: str
    file_pattern: str = "*.txt"
    separator: Optional[str] = DEFAULT_SEPARATOR


DataSource = Union[TextFolder, MongoSource]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data half of the pipeline.

    Attributes:
        source: a `TextFolder`, or a `MongoSource` (with `incremental=True` each run exports the
            new documents as a new span, and the encoder reads the latest `max_spans` spans).
        vocab: 'gpt2' (OpenAI's vocabulary), a vocabulary directory (e.g. a checkpoint's), or
            'train' to learn one of `vocab_size` tokens on the train split (VocabTrainer).
        vocab_size: the size of a trained vocabulary (with vocab='train' only).
        special_tokens: extra tokens kept whole, e.g. ('<|dialogue|>', '<|action|>').
        control_feature: a feature of the examples (e.g. a MongoSource metadata field) holding a
            special token that starts each document.
        split_ratios: hash buckets per split; default `{"train": 9, "eval": 1}`; e.g.
            `{"train": 18, "eval": 1, "test": 1}` for 90/5/5.
        max_spans: with incremental MongoDB exports, how many of the latest spans to train on.
        min_chars, max_chars: document lengths outside these bounds are data anomalies.
        validate: run StatisticsGen, TextSchemaGen and ExampleValidator.
    """

    source: DataSource
    vocab: str = "gpt2"
    vocab_size: Optional[int] = None
    special_tokens: Tuple[str, ...] = ()
    control_feature: str = ""
    split_ratios: Optional[Dict[str, int]] = None
    max_spans: int = 1000
    min_chars: int = 1
    max_chars: int = 1_000_000
    validate: bool = True

    def __post_init__(self):
        if not isinstance(self.source, (TextFolder, MongoSource)):
            raise ConfigError(f"DataConfig.source = {self.source!r}; give a TextFolder(root=...) or a "
                              "MongoSource(collections=...).")
        object.__setattr__(self, "special_tokens", tuple(check_special_tokens(self.special_tokens)))
        if (self.vocab == "train") != (self.vocab_size is not None):
            raise ConfigError(
                f"DataConfig.vocab = {self.vocab!r} with vocab_size = {self.vocab_size!r}: give vocab='train' together "
                "with vocab_size (a new vocabulary), or vocab='gpt2' / a directory without vocab_size."
            )
        check_vocab_dir(self.vocab)

    @property
    def is_mongo(self) -> bool:
        return isinstance(self.source, MongoSource)

    @property
    def is_incremental(self) -> bool:
        """Each run exports a new span, and the encoder reads the latest `max_spans` spans: an
        incremental MongoSource, or a TextFolder whose pattern has `{SPAN}` (`span-{SPAN}/*.txt`)."""
        if self.is_mongo:
            return self.source.incremental
        return "{SPAN}" in self.source.file_pattern

    def describe_source(self) -> str:
        """'mongodb:db.coll,...' or 'files:<pattern>' (an MLflow param; no connection string)."""
        if isinstance(self.source, MongoSource):
            return "mongodb:" + ",".join(self.source.collections)
        return "files:" + self.source.file_pattern


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """What is trained, and from where.

    Attributes:
        model: a `GPT2Config` or a preset name (`tiny`, `124M`, ...) for training from scratch;
            None: `tiny`, or the checkpoint's shape when fine-tuning.
        train: a `TrainConfig` or a preset name (`tiny`, `finetune`, `lora`).
        init_checkpoint: None trains from scratch; a directory (OpenAI, Hugging Face or tfx-gpt2
            layout; imported with a TFX Importer) or 'openai:SIZE' (downloaded in the pipeline)
            is fine-tuned. The shape is the checkpoint's: read from a local directory, the preset
            SIZE for 'openai:SIZE'; for a remote directory give `model` (it cannot be read when
            the pipeline is built).
        warm_start: fine-tune the registered champion when there is one (`ChampionModel`, resolved
            when the pipeline runs), with `warm_train`'s schedule; without a champion, start from
            `init_checkpoint` (or from scratch) with `train`'s.
        warm_train: the warm start's `TrainConfig` or preset name; None: `warm_schedule(train)`.
    """

    model: Union[None, str, GPT2Config] = None
    train: Union[str, TrainConfig] = "tiny"
    init_checkpoint: Optional[str] = None
    warm_start: bool = False
    warm_train: Union[None, str, TrainConfig] = None

    def __post_init__(self):
        if self.train_config.lora is not None and not (self.init_checkpoint or self.warm_start):
            raise ConfigError(
                f"TrainingSetup.train = {self.train if isinstance(self.train, str) else 'a TrainConfig'} trains LoRA "
                "adapters (lora_rank > 0), which adapt a base model; give init_checkpoint (a checkpoint directory "
                "or 'openai:124M') or warm_start=True, or train without LoRA.")

    @property
    def train_config(self) -> TrainConfig:
        return train_preset(self.train) if isinstance(self.train, str) else self.train

    @property
    def warm_train_config(self) -> TrainConfig:
        if self.warm_train is None:
            return warm_schedule(self.train_config)
        return train_preset(self.warm_train) if isinstance(self.warm_train, str) else self.warm_train

    @property
    def model_config(self) -> GPT2Config:
        """The shape trained (see `model`); a given `model` that differs from the checkpoint's is an error."""
        given = model_preset(self.model) if isinstance(self.model, str) else self.model
        ckpt = self.init_checkpoint
        if not ckpt:
            return given or model_preset("tiny")
        if ckpt.startswith("openai:"):
            shape = model_preset(ckpt.split(":", 1)[1])
        elif "://" in ckpt:
            if given is None:
                raise ConfigError(f"TrainingSetup.init_checkpoint = {ckpt!r} is remote: its shape cannot be read "
                                  "when the pipeline is built; give TrainingSetup.model (a preset or a GPT2Config).")
            return given
        else:
            shape = read_checkpoint_config(ckpt)
        if given is not None and (given.n_ctx, given.n_embd, given.n_layer) != (shape.n_ctx, shape.n_embd,
                                                                                 shape.n_layer):
            raise ConfigError(f"TrainingSetup.model = {self.model!r} does not match the checkpoint {ckpt!r} "
                              f"(n_ctx {shape.n_ctx}, n_embd {shape.n_embd}, n_layer {shape.n_layer}); leave "
                              "model unset to use the checkpoint's shape.")
        return shape


PERPLEXITY = "eval_perplexity"
DIRECTIONS = ("lower", "higher")


@dataclasses.dataclass(frozen=True)
class GateMetric:
    """One metric the candidate must win on against the champion, both scored on the same data.

    Attributes:
        metric: an evaluation metric's name (`eval_perplexity`, `next_word_accuracy`,
            `task_<name>_acc`, `sample_distinct_2`, ...; docs/evaluation.md lists them).
        direction: 'lower' or 'higher' is better.
        margin: the relative improvement required: with 0.01 the candidate must be 1% better
            than the champion (lower: below champion x 0.99; higher: above champion x 1.01); with
            0, any improvement. A negative margin is a tolerance: -0.02 lets the candidate be up
            to 2% worse on this metric (e.g. accuracy, while perplexity must improve).
    """

    metric: str
    direction: str = "lower"
    margin: float = 0.0

    def __post_init__(self):
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(f"GateMetric.metric = {self.metric!r} must be a metric's name, e.g. {PERPLEXITY!r}")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"GateMetric({self.metric!r}).direction = {self.direction!r} must be 'lower' or "
                              "'higher' (which way is better)")
        if not -1.0 < self.margin < 1.0:
            raise ConfigError(f"GateMetric({self.metric!r}).margin = {self.margin} must be in (-1, 1): a fraction "
                              "(0.01: 1% better than the champion; -0.02: at most 2% worse)")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What the evaluator measures beyond perplexity (docs/evaluation.md).

    Attributes:
        tasks_dir: a folder of multiple-choice task files (`*.jsonl`: context, choices, gold),
            scored as lm-evaluation-harness scores them; '' for none. `data/tasks` holds two
            built from the bundled corpus.
        next_word_documents: how many eval documents' last words to predict (LAMBADA's method);
            0 turns next-word accuracy off.
        samples: how many eval documents' openings to continue (fixed seed) for the sample
            quality figures; 0 turns them off.
    """

    tasks_dir: str = ""
    next_word_documents: int = 200
    samples: int = 8

    def __post_init__(self):
        for name in ("next_word_documents", "samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"EvalConfig.{name} = {value!r} must be a whole number >= 0 (0 turns it off)")
        if self.tasks_dir and "://" not in self.tasks_dir and not os.path.isdir(self.tasks_dir):
            raise ConfigError(f"EvalConfig.tasks_dir = {self.tasks_dir!r} is not a folder; give a folder of *.jsonl "
                              "task files (data/tasks has two), or '' for none")

    def measures(self, metric: str) -> bool:
        """Whether these settings measure `metric` (the task metrics: when there is a task folder)."""
        if metric.startswith("next_word_"):
            return self.next_word_documents > 0
        if metric.startswith("sample"):
            return self.samples > 0
        if metric.startswith("task_"):
            return bool(self.tasks_dir)
        return metric in (PERPLEXITY, "eval_loss", "eval_unigram_perplexity")


@dataclasses.dataclass(frozen=True)
class RegistryConfig:
    """Where the model is registered, and when it becomes the champion.

    Attributes:
        tracking_uri: the MLflow tracking URI, without credentials (they come from MLflow's
            environment variables, never from pipeline settings).
        registered_model_name, experiment_name: default: the pipeline's name.
        perplexity_threshold: the evaluator blesses a model only below this eval perplexity.
        min_improvement: ... and only below the champion's (the registered version holding the
            `champion` alias, scored on the same eval blocks) times (1 - min_improvement).
        compare_with_champion: False blesses without comparing with the champion (e.g. to
            replace one with another vocabulary).
        beat_baseline: a model is blessed only below the unigram baseline's eval perplexity on
            the same blocks (False turns this off, e.g. for a smoke run that trains a few steps).
        gate: the metrics the candidate must win on against the champion (`GateMetric`s); empty:
            `eval_perplexity`, lower, with `min_improvement` as its margin.
    """

    tracking_uri: str
    registered_model_name: str = ""
    experiment_name: str = ""
    perplexity_threshold: float = 1e9
    min_improvement: float = 0.0
    compare_with_champion: bool = True
    beat_baseline: bool = True
    gate: Tuple[GateMetric, ...] = ()

    def __post_init__(self):
        check_tracking_uri(self.tracking_uri)
        check_min_improvement(self.min_improvement)
        object.__setattr__(self, "gate", tuple(self.gate))
        if self.gate and self.min_improvement:
            raise ConfigError("RegistryConfig: min_improvement applies to the default gate only; with gate given, "
                              f"set the margin on its {PERPLEXITY!r} entry instead")
        names = [g.metric for g in self.gate]
        if len(set(names)) < len(names):
            raise ConfigError(f"RegistryConfig.gate names a metric twice: {names}")

    @property
    def gate_metrics(self) -> Tuple[GateMetric, ...]:
        """The gate in effect (see `gate`)."""
        return self.gate or (GateMetric(PERPLEXITY, "lower", self.min_improvement),)


# Query-string keys that carry a secret (`?token=...`, `?access_token=...`, `?sig=...`).
SECRET_QUERY_WORDS = ("token", "password", "passwd", "secret", "key", "auth", "sig", "credential", "session")


def secret_query_keys(uri: str):
    """The query-string keys of `uri` that look like they carry a secret."""
    query = urllib.parse.urlsplit(uri).query
    keys = [k for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True)]
    return [k for k in keys if any(word in k.lower() for word in SECRET_QUERY_WORDS)]


def check_vocab_dir(vocab: str) -> None:
    """Refuses, when the pipeline is built, a local vocabulary folder that does not exist or lacks
    a vocabulary (a remote one, `gs://...`, is checked where it runs)."""
    if vocab in ("gpt2", "train") or "://" in vocab:
        return

    if not os.path.isdir(vocab):
        raise ConfigError(f"DataConfig.vocab = {vocab!r}: the folder does not exist; give 'gpt2', 'train' (with "
                          "vocab_size), or a vocabulary folder (a checkpoint's, or one from `tfx-gpt2 train-vocab`).")
    try:
        vocab_files(vocab)
    except VocabularyError as e:
        raise ConfigError(f"DataConfig.vocab = {vocab!r}: {e}") from None


def check_tracking_uri(uri: str, field: str = "mlflow_tracking_uri") -> str:
    """Refuses a tracking URI that holds credentials, as a user name and password or in its query
    string (they would land in ML Metadata, compiled pipelines and logs)."""
    parts = urllib.parse.urlsplit(uri)
    where = "be stored in ML Metadata and the compiled pipeline, and show in logs"
    fix = ("Pass the URI without them and set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
           "MLFLOW_TRACKING_TOKEN) in the environment instead.")
    if parts.password or parts.username:
        raise ConfigError(
            f"{field} contains credentials ({parts.scheme}://{parts.username}:***@...); they would {where}. {fix}")
    secret = secret_query_keys(uri)
    if secret:
        raise ConfigError(
            f"{field} carries a credential in its query string ({', '.join(k + '=***' for k in secret)}); it "
            f"would {where}. {fix}")
    return uri


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    """Where a run keeps its outputs under `output_dir` (the one definition, for every runner):

        pipelines/<name>/     component outputs (the pipeline root)
        metadata/<name>.db    ML Metadata (sqlite)
        mlflow/mlflow.db      the default MLflow store (sqlite); artifacts in mlflow/mlartifacts/
    """

    output_dir: str
    pipeline_name: str

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_dir, "pipelines", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_dir, "metadata", f"{self.pipeline_name}.db")

    @property
    def mlflow_db(self) -> str:
        return os.path.join(self.output_dir, "mlflow", "mlflow.db")

    @property
    def mlflow_tracking_uri(self) -> str:
        return "sqlite:///" + self.mlflow_db

    def create(self) -> "OutputLayout":
        """Makes the folders (local output directories only) and returns self."""
        for d in (self.pipeline_root, os.path.dirname(self.metadata_path), os.path.dirname(self.mlflow_db)):
            os.makedirs(d, exist_ok=True)
        return self


def check_min_improvement(min_improvement: float) -> None:
    """Raises ValueError unless `min_improvement` is a fraction in [0, 1)."""
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"min_improvement = {min_improvement} must be in [0, 1) (a fraction: 0.01 = 1% lower).")
