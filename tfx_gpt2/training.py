"""Training and evaluating GPT-2 on packed token blocks (plain TensorFlow/Keras, no TFX).

`train()` runs AdamW with linear warm-up and cosine decay, global-norm gradient clipping, periodic
evaluation, progress lines with tokens/s, and TensorBoard scalars (`train/loss`,
`train/learning_rate`, `train/grad_norm`, `train/tokens_per_sec`, `eval/loss`, `eval/perplexity`).
The TFX Trainer's `run_fn` (tfx_gpt2/components/trainer.py) only resolves paths and calls it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfx_gpt2.config import GPT2Config, TrainConfig
from tfx_gpt2.metrics import perplexity
from tfx_gpt2.model.gpt2 import GPT2, token_loss
from tfx_gpt2.progress import Progress, get_logger
from tfx_gpt2.text.blocks import block_dataset, block_length_of

logger = get_logger("tfx_gpt2.train")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, data that does not fit the model)."""


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to `floor` at `total`."""

    def __init__(self, peak: float, floor: float, warmup: int, total: int):
        self.peak, self.floor, self.warmup, self.total = peak, floor, warmup, total

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup, 1)
        progress = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1), 0.0, 1.0)
        cosine = self.floor + 0.5 * (self.peak - self.floor) * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "floor": self.floor, "warmup": self.warmup, "total": self.total}


@dataclasses.dataclass
class TrainResult:
    """What a training run measured.

    Attributes:
        steps: optimizer steps taken.
        tokens: training tokens seen.
        seconds: wall time of the training loop.
        train_loss: mean training loss over the last `log_every` steps.
        eval_loss: loss on the eval batches after the last step.
        history: one dict per logged step (`step`, `loss`, `learning_rate`, `grad_norm`,
            `tokens_per_sec`, and `eval_loss` where evaluated).
    """

    steps: int
    tokens: int
    seconds: float
    train_loss: float
    eval_loss: float
    history: List[Dict[str, float]]

    @property
    def eval_perplexity(self) -> float:
        return perplexity(self.eval_loss)


def check_block_length(files: Sequence[str], config: GPT2Config, what: str) -> None:
    """Raises TrainingError unless the blocks in `files` are `n_ctx + 1` tokens long."""
    got = block_length_of(files)
    if got != config.n_ctx + 1:
        raise TrainingError(
            f"the {what} blocks hold {got} tokens but the model takes n_ctx + 1 = {config.n_ctx + 1}; "
            f"encode the data with block length {config.n_ctx + 1} (n_ctx = {config.n_ctx}) or choose "
            f"a model with n_ctx = {got - 1}."
        )


def evaluate(model: GPT2, dataset: tf.data.Dataset, max_batches: Optional[int] = None) -> Tuple[float, int]:
    """Mean next-token loss (nats) over every target of `dataset`, and the number of targets."""

    @tf.function
    def batch_loss(x, y):
        return tf.reduce_sum(token_loss(model(x, training=False), y)), tf.size(y)

    total, count = 0.0, 0
    for i, (x, y) in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        s, n = batch_loss(x, y)
        total += float(s)
        count += int(n)
    if count == 0:
        raise TrainingError("the evaluation data holds no block; the eval split is empty or too small.")
    return total / count, count


# AdamW decays matrices (weights, embeddings) only: biases `b` and layer-norm gains `g` are left alone.
NO_WEIGHT_DECAY = ["^b$", "^g$"]


def train(
    model_config: GPT2Config,
    train_config: TrainConfig,
    train_files: Sequence[str],
    eval_files: Sequence[str],
    log_dir: Optional[str] = None,
    model: Optional[GPT2] = None,
) -> Tuple[GPT2, TrainResult]:
    """Trains GPT-2 on packed blocks.

    Args:
        model_config: the model's shape (ignored when `model` is given).
        train_config: optimisation settings.
        train_files: globs of the training block files.
        eval_files: globs of the eval block files.
        log_dir: TensorBoard log directory (`train/` and `eval/` runs are written below it).
        model: a model to continue from (fine-tuning); a new one is initialised if None.

    Returns:
        The trained model and a `TrainResult`.

    Raises:
        TrainingError: the data does not fit the model, or the loss became NaN or infinite.
    """
    cfg = train_config
    keras.utils.set_random_seed(cfg.seed)
    if model is None:
        model = GPT2(model_config)
    model_config = model.config
    check_block_length(train_files, model_config, "train")
    check_block_length(eval_files, model_config, "eval")
    block_len = model_config.n_ctx + 1

    train_ds = block_dataset(train_files, block_len, cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer,
                             seed=cfg.seed, repeat=True)
    eval_ds = block_dataset(eval_files, block_len, cfg.batch_size, drop_remainder=False)

    schedule = WarmupCosine(cfg.learning_rate, cfg.min_learning_rate, cfg.warmup_steps, cfg.max_steps)
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=cfg.weight_decay, beta_1=cfg.beta1, beta_2=cfg.beta2,
    )
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(token_loss(model(x, training=True), y))
        grads = tape.gradient(loss, model.trainable_variables)
        grad_norm = tf.linalg.global_norm(grads)
        if cfg.grad_clip > 0:
            grads, _ = tf.clip_by_global_norm(grads, cfg.grad_clip, use_norm=grad_norm)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, grad_norm

    writers = {}
    if log_dir:
        writers = {k: tf.summary.create_file_writer(os.path.join(log_dir, k)) for k in ("train", "eval")}

    def scalars(run: str, step: int, values: Dict[str, float]) -> None:
        if run in writers:
            with writers[run].as_default(step=step):
                for k, v in values.items():
                    tf.summary.scalar(k, v)

    tokens_per_step = cfg.batch_size * model_config.n_ctx
    logger.info(
        "training %s parameters for %d steps: batch %d x %d tokens, peak lr %g",
        f"{model_config.num_params():,}", cfg.max_steps, cfg.batch_size, model_config.n_ctx, cfg.learning_rate,
    )
    progress = Progress(logger, "train", "steps", total=cfg.max_steps, every_s=float("inf"))
    history: List[Dict[str, float]] = []
    window: List[float] = []
    eval_loss = float("nan")
    t_start = t_window = time.monotonic()
    step = 0
    batches = iter(train_ds)
    for step in range(1, cfg.max_steps + 1):
        x, y = next(batches)
        loss, grad_norm = train_step(x, y)
        loss = float(loss)
        if not math.isfinite(loss):
            raise TrainingError(
                f"the training loss became {loss} at step {step}; lower the learning rate "
                f"(now {cfg.learning_rate}) or check the data."
            )
        window.append(loss)
        progress.update(1, tokens=tokens_per_step)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.monotonic()
            record = {
                "step": step,
                "loss": float(np.mean(window)),
                "learning_rate": float(schedule(step - 1)),
                "grad_norm": float(grad_norm),
                "tokens_per_sec": len(window) * tokens_per_step / max(now - t_window, 1e-9),
            }
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                eval_loss, _ = evaluate(model, eval_ds, cfg.eval_batches)
                record["eval_loss"] = eval_loss
                scalars("eval", step, {"loss": eval_loss, "perplexity": perplexity(eval_loss)})
            scalars("train", step, {k: v for k, v in record.items() if k not in ("step", "eval_loss")})
            history.append(record)
            logger.info(
                "step %d/%d: loss %.4f, lr %.2e, grad norm %.2f, %s tokens/s%s",
                step, cfg.max_steps, record["loss"], record["learning_rate"], record["grad_norm"],
                f"{record['tokens_per_sec']:,.0f}",
                f", eval loss {eval_loss:.4f} (perplexity {perplexity(eval_loss):.1f})"
                if "eval_loss" in record else "",
            )
            window, t_window = [], time.monotonic()
    for w in writers.values():
        w.flush()
    seconds = time.monotonic() - t_start
    progress.done()
    result = TrainResult(
        steps=step, tokens=step * tokens_per_step, seconds=seconds,
        train_loss=history[-1]["loss"] if history else float("nan"), eval_loss=eval_loss, history=history,
    )
    return model, result
