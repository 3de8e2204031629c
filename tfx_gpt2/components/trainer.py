"""The TFX Trainer's `run_fn` for GPT-2: `Trainer(run_fn="tfx_gpt2.components.trainer.run_fn", ...)`.

`custom_config` (JSON-compatible dict):
    model_config  a `GPT2Config` as a JSON string
    train_config  a `TrainConfig` as a JSON string

Reads the encoded blocks (BpeEncoder's `encoded` artifact) and writes:
    serving_model_dir (Model artifact, `Format-Serving/`): the model directory of
        `tfx_gpt2.model.io.save_model_dir` (config, weights, the data's vocabulary), plus
        `train_metrics.json` (the `TrainResult`, history included) for the pusher.
    model_run_dir (ModelRun artifact): TensorBoard logs, `train/` and `eval/` runs.
"""

from __future__ import annotations

import dataclasses
import json
import os

from tfx_gpt2.config import GPT2Config, TrainConfig, from_json
from tfx_gpt2.model.io import save_model_dir
from tfx_gpt2.progress import get_logger
from tfx_gpt2.text.bpe import BPETokenizer
from tfx_gpt2.training import train

TRAIN_METRICS_FILE = "train_metrics.json"
logger = get_logger("tfx_gpt2.trainer")


def _examples_uri(file_pattern: str) -> str:
    # Trainer gives `<examples uri>/Split-train/*`.
    return os.path.dirname(os.path.dirname(file_pattern))


def run_fn(fn_args) -> None:
    """Trains GPT-2 as `fn_args.custom_config` says; see the module docstring."""
    custom = fn_args.custom_config or {}
    for key in ("model_config", "train_config"):
        if key not in custom:
            raise ValueError(
                f"Trainer custom_config has no {key!r}; build the Trainer with create_pipeline() or pass "
                f"custom_config={{'model_config': ..., 'train_config': ...}} (JSON strings)."
            )
    model_config = from_json(GPT2Config, custom["model_config"])
    train_config = from_json(TrainConfig, custom["train_config"])
    vocab_dir = os.path.join(_examples_uri(fn_args.train_files[0]), "vocab")
    vocab_size = BPETokenizer.from_dir(vocab_dir).vocab_size
    if model_config.n_vocab != vocab_size:
        # Training from scratch: the embedding follows the data's vocabulary (trained, or with
        # added special tokens).
        logger.warning("from scratch: n_vocab %d -> %d, the size of the data's vocabulary (%s)",
                       model_config.n_vocab, vocab_size, vocab_dir)
        model_config = dataclasses.replace(model_config, n_vocab=vocab_size)
    model, result = train(
        model_config, train_config, fn_args.train_files, fn_args.eval_files, log_dir=fn_args.model_run_dir,
    )
    save_model_dir(model, fn_args.serving_model_dir, vocab_dir)
    with open(os.path.join(fn_args.serving_model_dir, TRAIN_METRICS_FILE), "w") as f:
        json.dump(dataclasses.asdict(result), f, indent=1)
