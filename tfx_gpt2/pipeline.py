"""create_pipeline(): the one place where the components of tfx-gpt2 are wired.

    TextExampleGen -> BpeEncoder -> Trainer -> PerplexityEvaluator -> MlflowPusher

Runners (Beam locally, Airflow, Kubeflow) supply paths, Beam arguments, the metadata connection
and the orchestrator; they never wire components themselves.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Dict, List, Optional, Union

from tfx import v1 as tfx

from tfx_gpt2.components.bpe_encoder import BpeEncoder
from tfx_gpt2.components.evaluator import PerplexityEvaluator
from tfx_gpt2.components.mlflow_pusher import MlflowPusher
from tfx_gpt2.components.text_example_gen import TextExampleGen
from tfx_gpt2.config import (
    ConfigError,
    GPT2Config,
    TrainConfig,
    model_preset,
    to_json,
    train_preset,
)
from tfx_gpt2.registry import flatten_params

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


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    mlflow_tracking_uri: str,
    *,
    model: Union[str, GPT2Config] = "tiny",
    train: Union[str, TrainConfig] = "tiny",
    vocab: str = "gpt2",
    file_pattern: str = "*.txt",
    split_ratios: Optional[Dict[str, int]] = None,
    perplexity_threshold: float = 1e9,
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
        data_root: the folder of text files (documents separated by `<|endoftext|>`).
        mlflow_tracking_uri: where the pusher logs and registers (no credentials in it).
        model: a `GPT2Config` or the name of a preset (`tiny`, `124M`, ...).
        train: a `TrainConfig` or the name of a preset (`tiny`, `finetune`).
        vocab: 'gpt2' (OpenAI's vocabulary) or a vocabulary directory.
        file_pattern: glob of the text files under `data_root`.
        split_ratios: hash buckets per split; default `{"train": 9, "eval": 1}`.
        perplexity_threshold: the evaluator blesses a model only below this eval perplexity.
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

    example_gen = TextExampleGen(input_base=data_root, file_pattern=file_pattern, split_ratios=split_ratios)
    encoder = BpeEncoder(
        examples=example_gen.outputs["examples"], block_len=model_config.n_ctx + 1, vocab=vocab,
    )
    trainer = tfx.components.Trainer(
        run_fn=TRAINER_RUN_FN,
        examples=encoder.outputs["encoded"],
        train_args=tfx.proto.TrainArgs(num_steps=train_config.max_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=train_config.eval_batches),
        custom_config={"model_config": to_json(model_config), "train_config": to_json(train_config)},
    )
    evaluator = PerplexityEvaluator(
        model=trainer.outputs["model"], examples=encoder.outputs["encoded"],
        perplexity_threshold=perplexity_threshold, batch_size=train_config.batch_size,
    )
    params = {
        **flatten_params("model", json.loads(to_json(model_config))),
        **flatten_params("train", json.loads(to_json(train_config))),
        "data.vocab": vocab, "data.file_pattern": file_pattern,
        "eval.perplexity_threshold": str(perplexity_threshold),
    }
    pusher = MlflowPusher(
        model=trainer.outputs["model"], model_run=trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"], blessing=evaluator.outputs["blessing"],
        tracking_uri=mlflow_tracking_uri,
        registered_model_name=registered_model_name or pipeline_name,
        experiment_name=experiment_name or pipeline_name,
        params_json=json.dumps(params, sort_keys=True), pipeline_name=pipeline_name,
    )
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, encoder, trainer, evaluator, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
