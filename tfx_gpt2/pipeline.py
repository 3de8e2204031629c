"""create_pipeline(): the one place where the components of tfx-gpt2 are wired.

    TextExampleGen | MongoExampleGen ─┬─> StatisticsGen -> TextSchemaGen -> ExampleValidator
                    [spans resolver] ─┴─> [VocabTrainer] -> BpeEncoder -> Trainer
                                               -> PerplexityEvaluator -> MlflowPusher

It takes three typed configs (tfx_gpt2/config/pipeline.py): `DataConfig` (the source, a
`TextFolder` or a `MongoSource`, and the vocabulary), `TrainingSetup` (model, training,
checkpoint) and `RegistryConfig` (MLflow and the blessing rule). Runners (Beam locally, Airflow,
Kubeflow) build them from `tfx_gpt2.config.settings.PipelineSettings` and supply paths, Beam arguments,
the metadata connection and the orchestrator; they never wire components themselves.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional

from tfx import v1 as tfx
from tfx.types.experimental.simple_artifacts import Dataset

from tfx_gpt2.components.bpe_encoder import BpeEncoder
from tfx_gpt2.components.champion_model import ChampionModel
from tfx_gpt2.components.data_validation import TextExampleValidator, TextSchemaGen, text_validation_config
from tfx_gpt2.components.evaluator import PerplexityEvaluator
from tfx_gpt2.components.mlflow_pusher import MlflowPusher
from tfx_gpt2.components.mongo_example_gen import MongoExampleGen
from tfx_gpt2.components.span_strategy import LatestSpansStrategy
from tfx_gpt2.components.text_example_gen import TextExampleGen
from tfx_gpt2.components.vocab_trainer import VocabTrainer
from tfx_gpt2.config.model import GPT2Config, to_json
from tfx_gpt2.config.model import ConfigError
from tfx_gpt2.config.pipeline import DataConfig, EvalConfig, GateMetric, RegistryConfig, TextFolder, TrainingSetup
from tfx_gpt2.config.settings import PipelineSettings
from tfx_gpt2.registry.client import flatten_params

TRAINER_RUN_FN = "tfx_gpt2.components.trainer.run_fn"


def _example_gen(data: DataConfig):
    if data.is_mongo:
        return MongoExampleGen(data.source, split_ratios=data.split_ratios)
    return TextExampleGen(input_base=data.source.root, file_pattern=data.source.file_pattern,
                          separator=data.source.separator, split_ratios=data.split_ratios)


def _latest_spans(example_gen, max_spans: int):
    """A resolver of the latest `max_spans` spans the ExampleGen exported, the newest export of
    each (incremental sources: MongoDB past its watermark, a text folder's `span-{SPAN}`)."""
    spans = tfx.dsl.Resolver(
        strategy_class=LatestSpansStrategy, config={"num_spans": max_spans},
        # A channel naming the producer sees every span in ML Metadata (the output channel itself
        # would give this run's only); the explicit dependency makes it run after this run's export.
        examples=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples,
                                 producer_component_id=example_gen.id, output_key="examples"),
    ).with_id("latest_spans")
    spans.add_upstream_node(example_gen)
    return spans


def _validation(examples, data: DataConfig) -> list:
    statistics = tfx.components.StatisticsGen(examples=examples)
    schema = TextSchemaGen(statistics=statistics.outputs["statistics"])
    validator = TextExampleValidator(
        statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"],
        custom_validation_config=text_validation_config(data.min_chars, data.max_chars),
    ).with_id("ExampleValidator")
    return [statistics, schema, validator]


def data_components(data: DataConfig, block_len: int) -> list:
    """The data half of the pipeline, from the source to BpeEncoder (the last component returned):

        ExampleGen [-> latest_spans] [-> VocabTrainer] -> BpeEncoder
                  -> StatisticsGen -> TextSchemaGen -> ExampleValidator   (data.validate)
    """
    example_gen = _example_gen(data)
    components = [example_gen]
    examples = example_gen.outputs["examples"]
    if data.is_incremental:
        spans = _latest_spans(example_gen, data.max_spans)
        components.append(spans)
        examples = spans.outputs["examples"]
    if data.validate:
        components += _validation(example_gen.outputs["examples"], data)
    vocabulary = None
    if data.vocab == "train":
        vocab_trainer = VocabTrainer(examples=examples, vocab_size=data.vocab_size,
                                     special_tokens=json.dumps(list(data.special_tokens)))
        components.append(vocab_trainer)
        vocabulary = vocab_trainer.outputs["vocabulary"]
    encoder = BpeEncoder(
        examples=examples, vocabulary=vocabulary, block_len=block_len,
        vocab="gpt2" if data.vocab == "train" else data.vocab,
        special_tokens="[]" if data.vocab == "train" else json.dumps(list(data.special_tokens)),
        control_feature=data.control_feature,
    )
    return components + [encoder]


def create_data_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data: DataConfig,
    block_len: int,
    *,
    metadata_connection_config=None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """A pipeline of `data_components` only: export, validate and encode, no training."""
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, components=data_components(data, block_len),
        enable_cache=enable_cache, metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )


def _base_model(init_checkpoint: str):
    """The component that brings the checkpoint in, and its model channel."""
    if init_checkpoint.startswith("openai:"):
        from tfx_gpt2.components.checkpoint_downloader import OpenAICheckpointDownloader

        source = OpenAICheckpointDownloader(size=init_checkpoint.split(":", 1)[1]).with_id("base_model")
        return source, source.outputs["model"]
    source = tfx.dsl.Importer(source_uri=init_checkpoint,
                              artifact_type=tfx.types.standard_artifacts.Model).with_id("base_model")
    return source, source.outputs["result"]


def run_params(data: DataConfig, training: TrainingSetup, registry: RegistryConfig,
               model_config: GPT2Config, evaluation: EvalConfig = EvalConfig()) -> dict:
    """The MLflow run's params: every config, flattened (no secret is in any of them)."""
    train_config = training.train_config
    return {
        **flatten_params("model", json.loads(to_json(model_config))),
        **flatten_params("train", json.loads(to_json(train_config))),
        "data.vocab": data.vocab, "data.vocab_size": str(data.vocab_size),
        "data.special_tokens": json.dumps(list(data.special_tokens)), "data.source": data.describe_source(),
        "eval.perplexity_threshold": str(registry.perplexity_threshold),
        "eval.min_improvement": str(registry.min_improvement),
        "eval.compare_with_champion": str(bool(registry.compare_with_champion)),
        "eval.beat_baseline": str(bool(registry.beat_baseline)),
        "eval.gate": ", ".join(f"{g.metric} {g.direction} (margin {g.margin:g})" for g in registry.gate_metrics),
        "eval.tasks_dir": evaluation.tasks_dir or "none",
        "eval.next_word_documents": str(evaluation.next_word_documents),
        "eval.samples": str(evaluation.samples),
        "train.init": ("the champion when there is one (warm start), else " if training.warm_start else "")
                      + (training.init_checkpoint or "scratch"),
        **(flatten_params("warm_train", json.loads(to_json(training.warm_train_config))) if training.warm_start
           else {}),
    }


def check_gate(gate, evaluation: EvalConfig) -> None:
    """Refuses a gate metric that `evaluation` does not measure, when the pipeline is built."""
    from tfx_gpt2.training.tasks import task_files

    tasks = set(task_files(evaluation.tasks_dir)) if evaluation.tasks_dir and "://" not in evaluation.tasks_dir else None
    for g in gate:
        if not evaluation.measures(g.metric):
            raise ConfigError(f"RegistryConfig.gate has {g.metric!r}, which the evaluator does not measure with "
                              f"{evaluation}; turn its measure on (EvalConfig) or leave it out of the gate")
        if g.metric.startswith("task_") and tasks is not None and not any(
                g.metric in (f"task_{t}_acc", f"task_{t}_acc_norm") for t in tasks):
            raise ConfigError(f"RegistryConfig.gate has {g.metric!r}, but {evaluation.tasks_dir} has the tasks "
                              f"{sorted(tasks)}: name task_<task>_acc or task_<task>_acc_norm")


def evaluator_for(trainer, encoder, train_config, registry: RegistryConfig, evaluation: EvalConfig, name: str):
    """The PerplexityEvaluator of the pipeline, and the importer of its task files (or None)."""
    from tfx_gpt2.registry.blessing import gate_json

    tasks = None
    if evaluation.tasks_dir:
        tasks = tfx.dsl.Importer(source_uri=evaluation.tasks_dir, artifact_type=Dataset).with_id("eval_tasks")
    evaluator = PerplexityEvaluator(
        model=trainer.outputs["model"], examples=encoder.outputs["encoded"],
        perplexity_threshold=registry.perplexity_threshold, batch_size=train_config.batch_size,
        tracking_uri=registry.tracking_uri, registered_model_name=name, min_improvement=registry.min_improvement,
        compare_with_champion=int(registry.compare_with_champion), beat_baseline=int(registry.beat_baseline),
        documents=encoder.inputs["examples"] if evaluation.next_word_documents else None,
        tasks=tasks.outputs["result"] if tasks else None, gate=gate_json(registry.gate_metrics),
        next_word_documents=evaluation.next_word_documents, samples=evaluation.samples,
    )
    return evaluator, tasks


def training_components(pipeline_name: str, encoder, training: TrainingSetup, registry: RegistryConfig,
                        model_config: GPT2Config, params: dict, evaluation: EvalConfig = EvalConfig()) -> list:
    """[base_model] [-> champion_model] -> Trainer -> PerplexityEvaluator -> MlflowPusher, on the encoder's blocks;
    `model_config` is `training.model_config`, resolved once (it may read the checkpoint)."""
    train_config = training.train_config
    name = registry.registered_model_name or pipeline_name
    components, base_model = [], None
    if training.init_checkpoint:
        source, base_model = _base_model(training.init_checkpoint)
        components.append(source)
    custom_config = {"model_config": to_json(model_config), "train_config": to_json(train_config)}
    if training.warm_start:
        champion = ChampionModel(examples=encoder.outputs["encoded"], initial=base_model,
                                 tracking_uri=registry.tracking_uri, registered_model_name=name).with_id("champion_model")
        components.append(champion)
        base_model = champion.outputs["model"]
        custom_config["warm_train_config"] = to_json(training.warm_train_config)
    trainer = tfx.components.Trainer(
        run_fn=TRAINER_RUN_FN, examples=encoder.outputs["encoded"], base_model=base_model,
        train_args=tfx.proto.TrainArgs(num_steps=train_config.max_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=train_config.eval_batches),
        custom_config=custom_config,
    )
    evaluator, tasks = evaluator_for(trainer, encoder, train_config, registry, evaluation, name)
    components += [tasks] if tasks else []
    pusher = MlflowPusher(
        model=trainer.outputs["model"], model_run=trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"], model_blessing=evaluator.outputs["blessing"],
        examples=encoder.outputs["encoded"],
        tracking_uri=registry.tracking_uri, registered_model_name=name,
        experiment_name=registry.experiment_name or pipeline_name,
        params_json=json.dumps(params, sort_keys=True), pipeline=pipeline_name,
    )
    return components + [trainer, evaluator, pusher]


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data: DataConfig,
    training: TrainingSetup,
    registry: RegistryConfig,
    *,
    evaluation: EvalConfig = EvalConfig(),
    metadata_connection_config=None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Builds the tfx-gpt2 pipeline.

    Args:
        pipeline_name: the pipeline's name in ML Metadata (also the default experiment and
            registered model name).
        pipeline_root: where component outputs are written.
        data: the source, vocabulary, splits and validation bounds (`DataConfig`).
        training: the model, training settings and checkpoint (`TrainingSetup`).
        registry: MLflow and the blessing rule (`RegistryConfig`).
        evaluation: what the evaluator measures beyond perplexity (`EvalConfig`).
        metadata_connection_config: ML Metadata connection (e.g. sqlite for local runs).
        beam_pipeline_args: arguments of the Beam pipelines that data components run.
        enable_cache: reuse outputs of components whose inputs and settings did not change.

    Returns:
        A `tfx.dsl.Pipeline` for any TFX orchestrator.

    Example:
        >>> create_pipeline("my-gpt2", "/tmp/root", DataConfig(TextFolder("data/pydoc_topics")),
        ...                 TrainingSetup(model="tiny", train="tiny"), RegistryConfig("sqlite:///mlflow.db"))
    """
    model_config = training.model_config  # read once: with a checkpoint directory, from its files
    check_gate(registry.gate_metrics, evaluation)
    components = data_components(data, model_config.n_ctx + 1)
    components += training_components(pipeline_name, components[-1], training, registry, model_config,
                                      run_params(data, training, registry, model_config, evaluation), evaluation)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, components=components,
        enable_cache=enable_cache, metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )


def pipeline_from_settings(settings: PipelineSettings, metadata_connection_config=None,
                           data: Optional[DataConfig] = None, training: Optional[TrainingSetup] = None,
                           registry: Optional[RegistryConfig] = None, evaluation: Optional[EvalConfig] = None):
    """`create_pipeline()` for `settings` (what every runner builds); `data`, `training` or
    `registry` replace the configs the settings make."""
    if settings.tracking_uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(settings.tracking_uri[len("sqlite:///"):]), exist_ok=True)
    return create_pipeline(
        settings.pipeline_name, settings.root, data or settings.data_config(), training or settings.training_setup(),
        registry or settings.registry_config(), evaluation=evaluation or settings.eval_config(),
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(settings.beam_args), enable_cache=settings.enable_cache,
    )


# The configs, importable from here with create_pipeline().
__all__ = ["DataConfig", "EvalConfig", "GateMetric", "RegistryConfig", "TextFolder", "TrainingSetup", "create_data_pipeline", "create_pipeline",
           "data_components", "pipeline_from_settings"]
