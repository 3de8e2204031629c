"""create_pipeline(): the one place where the components of tfx-gpt2 are wired.

    TextExampleGen | MongoExampleGen ─┬─> StatisticsGen -> TextSchemaGen -> ExampleValidator
                    [spans resolver] ─┴─> [VocabTrainer] -> BpeEncoder -> Trainer
                                               -> PerplexityEvaluator -> MlflowPusher

Runners (Beam locally, Airflow, Kubeflow) supply paths, Beam arguments, the metadata connection
and the orchestrator; they never wire components themselves.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Dict, List, Optional, Sequence, Union

from tfx import v1 as tfx

from tfx_gpt2.components.bpe_encoder import BpeEncoder
from tfx_gpt2.components.data_validation import TextExampleValidator, TextSchemaGen, text_validation_config
from tfx_gpt2.components.evaluator import PerplexityEvaluator
from tfx_gpt2.components.mlflow_pusher import MlflowPusher
from tfx_gpt2.components.mongo_example_gen import MongoExampleGen
from tfx_gpt2.components.text_example_gen import TextExampleGen
from tfx_gpt2.components.vocab_trainer import VocabTrainer
from tfx_gpt2.config import (
    ConfigError,
    GPT2Config,
    TrainConfig,
    model_preset,
    to_json,
    train_preset,
)
from tfx_gpt2.metrics import check_min_improvement
from tfx_gpt2.registry import flatten_params
from tfx_gpt2.sources.mongo import MongoSource
from tfx_gpt2.sources.text_files import DEFAULT_SEPARATOR
from tfx_gpt2.text.bpe import check_special_tokens

TRAINER_RUN_FN = "tfx_gpt2.components.trainer.run_fn"


def check_tracking_uri(uri: str) -> str:
    """Refuses a tracking URI that holds credentials (they would land in ML Metadata)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password or parts.username:
        raise ConfigError(
            f"mlflow_tracking_uri contains credentials ({parts.scheme}://{parts.username}:***@...); they would "
            "be stored in ML Metadata. Pass the URI without them and set MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead."
        )
    return uri


def data_components(
    data_root: Union[str, MongoSource],
    *,
    block_len: int,
    vocab: str = "gpt2",
    vocab_size: Optional[int] = None,
    special_tokens: Sequence[str] = (),
    control_feature: str = "",
    file_pattern: str = "*.txt",
    separator: Optional[str] = DEFAULT_SEPARATOR,
    split_ratios: Optional[Dict[str, int]] = None,
    max_spans: int = 1000,
    min_chars: int = 1,
    max_chars: int = 1_000_000,
    validate: bool = True,
) -> list:
    """The data half of the pipeline, from the source to BpeEncoder (the last component returned):

        ExampleGen [-> latest_spans] [-> VocabTrainer] -> BpeEncoder
                  -> StatisticsGen -> TextSchemaGen -> ExampleValidator   (validate=True)

    See `create_pipeline` for the arguments.
    """
    special_tokens = check_special_tokens(special_tokens)
    if (vocab == "train") != (vocab_size is not None):
        raise ConfigError(
            f"vocab = {vocab!r} with vocab_size = {vocab_size!r}: give vocab='train' together with vocab_size "
            "(a new vocabulary), or vocab='gpt2' / a directory without vocab_size."
        )
    components = []
    if isinstance(data_root, MongoSource):
        example_gen = MongoExampleGen(data_root, split_ratios=split_ratios)
    else:
        example_gen = TextExampleGen(input_base=data_root, file_pattern=file_pattern, separator=separator,
                                     split_ratios=split_ratios)
    components.append(example_gen)
    examples = example_gen.outputs["examples"]
    if isinstance(data_root, MongoSource) and data_root.incremental:
        spans = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.SpanRangeStrategy,
            config={"range_config": tfx.proto.RangeConfig(
                rolling_range=tfx.proto.RollingRange(num_spans=max_spans))},
            # A channel naming the producer sees every span in ML Metadata (the output channel
            # itself would give this run's only); the explicit dependency makes it run after this
            # run's export.
            examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples,
                                     producer_component_id=example_gen.id, output_key="examples"),
        ).with_id("latest_spans")
        spans.add_upstream_node(example_gen)
        components.append(spans)
        examples = spans.outputs["examples"]

    if validate:
        statistics = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
        schema = TextSchemaGen(statistics=statistics.outputs["statistics"])
        validator = TextExampleValidator(
            statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"],
            custom_validation_config=text_validation_config(min_chars, max_chars),
        ).with_id("ExampleValidator")
        components += [statistics, schema, validator]

    vocabulary = None
    if vocab == "train":
        vocab_trainer = VocabTrainer(examples=examples, vocab_size=vocab_size,
                                     special_tokens=json.dumps(special_tokens))
        components.append(vocab_trainer)
        vocabulary = vocab_trainer.outputs["vocabulary"]
    encoder = BpeEncoder(
        examples=examples, vocabulary=vocabulary, block_len=block_len,
        vocab="gpt2" if vocab == "train" else vocab,
        special_tokens="[]" if vocab == "train" else json.dumps(special_tokens),
        control_feature=control_feature,
    )
    return components + [encoder]


def create_data_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: Union[str, MongoSource],
    *,
    block_len: int,
    metadata_connection_config=None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    **data_args,
) -> tfx.dsl.Pipeline:
    """A pipeline of `data_components` only: export, validate and encode, no training."""
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root,
        components=data_components(data_root, block_len=block_len, **data_args),
        enable_cache=enable_cache, metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: Union[str, MongoSource],
    mlflow_tracking_uri: str,
    *,
    model: Union[str, GPT2Config] = "tiny",
    train: Union[str, TrainConfig] = "tiny",
    vocab: str = "gpt2",
    vocab_size: Optional[int] = None,
    special_tokens: Sequence[str] = (),
    control_feature: str = "",
    file_pattern: str = "*.txt",
    separator: Optional[str] = DEFAULT_SEPARATOR,
    split_ratios: Optional[Dict[str, int]] = None,
    max_spans: int = 1000,
    min_chars: int = 1,
    max_chars: int = 1_000_000,
    init_checkpoint: Optional[str] = None,
    perplexity_threshold: float = 1e9,
    min_improvement: float = 0.0,
    compare_with_champion: bool = True,
    registered_model_name: Optional[str] = None,
    experiment_name: Optional[str] = None,
    metadata_connection_config=None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the tfx-gpt2 pipeline.

    Args:
        pipeline_name: the pipeline's name in ML Metadata (also the default experiment and
            registered model name).
        pipeline_root: where component outputs are written.
        data_root: the folder of text files, or a `MongoSource` (MongoDB collections; with
            `incremental=True` each run exports the new documents as a new span, and the
            encoder reads the latest `max_spans` spans).
        mlflow_tracking_uri: where the pusher logs and registers (no credentials in it).
        model: a `GPT2Config` or the name of a preset (`tiny`, `124M`, ...).
        train: a `TrainConfig` or the name of a preset (`tiny`, `finetune`).
        vocab: 'gpt2' (OpenAI's vocabulary), a vocabulary directory (e.g. a checkpoint's), or
            'train' to learn a new one of `vocab_size` tokens on the train split (VocabTrainer).
        vocab_size: the size of a trained vocabulary (with vocab='train').
        special_tokens: extra tokens kept whole, e.g. ('<|dialogue|>', '<|action|>').
        control_feature: a feature of the examples (e.g. a MongoSource metadata field) holding a
            special token that starts each document.
        file_pattern: glob of the text files under `data_root`.
        separator: the string between documents in a text file (None: one document per file).
        split_ratios: hash buckets per split; default `{"train": 9, "eval": 1}`; e.g.
            `{"train": 18, "eval": 1, "test": 1}` for 90/5/5.
        max_spans: with incremental MongoDB exports, how many of the latest spans to train on.
        min_chars, max_chars: document lengths outside these bounds are data anomalies.
        init_checkpoint: None trains `model` from scratch; a directory (OpenAI, Hugging Face or
            tfx-gpt2 layout; imported with a TFX Importer) or 'openai:124M' (downloaded by
            `OpenAICheckpointDownloader`) is fine-tuned instead, and `model` is ignored (the
            shape is the checkpoint's). Encode the data with the checkpoint's vocabulary.
        perplexity_threshold: the evaluator blesses a model only below this eval perplexity.
        min_improvement: ... and only below the champion's (the registered version holding the
            `champion` alias, scored on the same eval blocks) times (1 - min_improvement).
        compare_with_champion: False blesses on the threshold alone (e.g. to replace a champion
            with another vocabulary).
        registered_model_name: MLflow registered model (default: `pipeline_name`).
        experiment_name: MLflow experiment (default: `pipeline_name`).
        metadata_connection_config: ML Metadata connection (e.g. sqlite for local runs).
        beam_pipeline_args: arguments of the Beam pipelines that data components run.
        enable_cache: reuse outputs of components whose inputs and settings did not change.

    Returns:
        A `tfx.dsl.Pipeline` for any TFX orchestrator.
    """
    model_config = model_preset(model) if isinstance(model, str) else model
    train_config = train_preset(train) if isinstance(train, str) else train
    check_tracking_uri(mlflow_tracking_uri)
    components = data_components(
        data_root, block_len=model_config.n_ctx + 1, vocab=vocab, vocab_size=vocab_size,
        special_tokens=special_tokens, control_feature=control_feature, file_pattern=file_pattern,
        separator=separator, split_ratios=split_ratios, max_spans=max_spans, min_chars=min_chars,
        max_chars=max_chars,
    )
    encoder = components[-1]
    base_model = None
    if init_checkpoint:
        if init_checkpoint.startswith("openai:"):
            from tfx_gpt2.components.checkpoint_downloader import OpenAICheckpointDownloader

            source = OpenAICheckpointDownloader(size=init_checkpoint.split(":", 1)[1]).with_id("base_model")
            base_model = source.outputs["model"]
        else:
            source = tfx.dsl.Importer(source_uri=init_checkpoint,
                                      artifact_type=tfx.types.standard_artifacts.Model).with_id("base_model")
            base_model = source.outputs["result"]
        components.append(source)
    trainer = tfx.components.Trainer(
        run_fn=TRAINER_RUN_FN,
        examples=encoder.outputs["encoded"],
        base_model=base_model,
        train_args=tfx.proto.TrainArgs(num_steps=train_config.max_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=train_config.eval_batches),
        custom_config={"model_config": to_json(model_config), "train_config": to_json(train_config)},
    )
    check_min_improvement(min_improvement)
    evaluator = PerplexityEvaluator(
        model=trainer.outputs["model"], examples=encoder.outputs["encoded"],
        perplexity_threshold=perplexity_threshold, batch_size=train_config.batch_size,
        tracking_uri=mlflow_tracking_uri, registered_model_name=registered_model_name or pipeline_name,
        min_improvement=min_improvement, compare_with_champion=int(compare_with_champion),
    )
    params = {
        **flatten_params("model", json.loads(to_json(model_config))),
        **flatten_params("train", json.loads(to_json(train_config))),
        "data.vocab": vocab, "data.vocab_size": str(vocab_size), "data.special_tokens": json.dumps(special_tokens),
        "data.source": "mongodb:" + ",".join(data_root.collections) if isinstance(data_root, MongoSource)
        else "files:" + file_pattern,
        "eval.perplexity_threshold": str(perplexity_threshold),
        "eval.min_improvement": str(min_improvement),
        "eval.compare_with_champion": str(bool(compare_with_champion)),
        "train.init": init_checkpoint or "scratch",
    }
    pusher = MlflowPusher(
        model=trainer.outputs["model"], model_run=trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"], model_blessing=evaluator.outputs["blessing"],
        tracking_uri=mlflow_tracking_uri,
        registered_model_name=registered_model_name or pipeline_name,
        experiment_name=experiment_name or pipeline_name,
        params_json=json.dumps(params, sort_keys=True), pipeline=pipeline_name,
    )
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components + [trainer, evaluator, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
