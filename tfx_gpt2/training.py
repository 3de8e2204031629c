"""Training and evaluating GPT-2 on packed token blocks (plain TensorFlow/Keras, no TFX).

`train()` runs AdamW with linear warm-up and cosine decay, global-norm gradient clipping, gradient
accumulation, early stopping, frozen embeddings, gradient checkpointing, mixed precision, XLA and
`tf.distribute` strategies, resumable checkpoints (weights, optimizer, step and data position),
progress lines with tokens/s, and TensorBoard scalars (`train/loss`, `train/perplexity`,
`train/learning_rate`, `train/grad_norm`, `train/tokens_per_sec`, `eval/loss`, `eval/perplexity`)
and text samples (`train/samples`).
The TFX Trainer's `run_fn` (tfx_gpt2/components/trainer.py) only resolves paths and calls it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfx_gpt2.config import GPT2Config, TrainConfig
from tfx_gpt2.metrics import perplexity
from tfx_gpt2.model.gpt2 import GPT2, token_loss, weight_name
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
        history: one dict per logged step (`step`, `loss`, `perplexity`, `learning_rate`,
            `grad_norm`, `tokens_per_sec`, and `eval_loss` where evaluated).
        samples: text samples (`step`, `prompt`, `text`) taken every `samples_every` steps.
        stopped_early: early stopping ended the run (the best weights were kept).
        resumed_from_step: the step of the checkpoint this run resumed from (0: a fresh start).
    """

    steps: int
    tokens: int
    seconds: float
    train_loss: float
    eval_loss: float
    history: List[Dict[str, float]]
    samples: List[Dict[str, object]] = dataclasses.field(default_factory=list)
    stopped_early: bool = False
    resumed_from_step: int = 0

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


_EVAL_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def evaluate(model: GPT2, dataset: tf.data.Dataset, max_batches: Optional[int] = None) -> Tuple[float, int]:
    """Mean next-token loss (nats) over every target of `dataset`, and the number of targets."""
    batch_loss = _EVAL_FUNCTIONS.get(model)
    if batch_loss is None:
        # One traced function per model, reused by every evaluation of a training run (a new
        # tf.function per call would trace the whole model again each time). It holds the model
        # weakly, so the cache keeps no model alive.
        ref = weakref.ref(model)

        @tf.function(reduce_retracing=True)
        def batch_loss(x, y):
            return tf.reduce_sum(token_loss(ref()(x, training=False), y)), tf.size(y)

        _EVAL_FUNCTIONS[model] = batch_loss
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
CHECKPOINT_DIR = "checkpoints"


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy that `TrainConfig.distribution` names (see there)."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    # One device: TensorFlow's default strategy (the default device, a GPU if there is one), so
    # that the whole step, optimizer update included, compiles into one XLA program.
    return tf.distribute.get_strategy()


def precision_policy(name: str) -> str:
    """The Keras dtype policy for `TrainConfig.mixed_precision` on this machine."""
    if name == "bf16":
        return "mixed_bfloat16"
    if name == "fp16":
        return "mixed_float16"
    if name == "off":
        return "float32"
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "float32"
    capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
    return "mixed_bfloat16" if tuple(capability) >= (8, 0) else "mixed_float16"


def count_blocks(files: Sequence[str]) -> int:
    """Blocks in the block files (a pass over them, without parsing)."""
    from tfx_gpt2.text.blocks import compression_of

    paths = sorted(f for p in files for f in tf.io.gfile.glob(p))
    return sum(1 for path in paths for _ in tf.data.TFRecordDataset(path, compression_type=compression_of([path])))


def steps_for(cfg: TrainConfig, train_files: Sequence[str]) -> int:
    """`cfg.max_steps`, or the steps of `cfg.epochs` passes over the train blocks."""
    if cfg.epochs <= 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * count_blocks(train_files) / cfg.batch_size))


def train(
    model_config: GPT2Config,
    train_config: TrainConfig,
    train_files: Sequence[str],
    eval_files: Sequence[str],
    log_dir: Optional[str] = None,
    model: Optional[GPT2] = None,
    checkpoint_dir: Optional[str] = None,
    tokenizer=None,
) -> Tuple[GPT2, TrainResult]:
    """Trains GPT-2 on packed blocks.

    Args:
        model_config: the model's shape (ignored when `model` is given).
        train_config: optimisation settings (see `TrainConfig`).
        train_files: globs of the training block files.
        eval_files: globs of the eval block files.
        log_dir: TensorBoard log directory (`train/` and `eval/` runs are written below it).
        model: a model to start from (fine-tuning); a new one is initialised if None.
        checkpoint_dir: where resumable checkpoints go (with `checkpoint_every`); if it holds one,
            training resumes from it: same step, optimizer state and data position.
        tokenizer: a `BPETokenizer`, for text samples (`samples_every`).

    Returns:
        The trained model and a `TrainResult`.

    Raises:
        TrainingError: the data does not fit the model, or the loss became NaN or infinite.
    """
    cfg = train_config
    previous_policy = keras.config.dtype_policy()
    policy = precision_policy(cfg.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    try:
        return _train(model_config, cfg, train_files, eval_files, log_dir, model, checkpoint_dir, tokenizer, policy)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(model_config, cfg, train_files, eval_files, log_dir, init_model, checkpoint_dir, tokenizer, policy):
    keras.utils.set_random_seed(cfg.seed)
    if init_model is not None:
        model_config = init_model.config
    if cfg.dropout >= 0:
        model_config = dataclasses.replace(model_config, dropout=cfg.dropout)
    check_block_length(train_files, model_config, "train")
    check_block_length(eval_files, model_config, "eval")
    block_len = model_config.n_ctx + 1
    max_steps = steps_for(cfg, train_files)
    strategy = make_strategy(cfg.distribution)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % (replicas * cfg.grad_accum_steps):
        raise TrainingError(
            f"batch_size = {cfg.batch_size} must split evenly over {replicas} replica(s) x "
            f"{cfg.grad_accum_steps} micro-batch(es); choose a multiple of {replicas * cfg.grad_accum_steps}."
        )

    with strategy.scope():
        model = GPT2(model_config)
        if init_model is not None:
            for target, source in zip(model.weights, init_model.weights):
                target.assign(source.numpy())
        model.recompute = cfg.recompute
        schedule = WarmupCosine(cfg.learning_rate, cfg.min_learning_rate, cfg.warmup_steps, max_steps)
        optimizer = keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=cfg.weight_decay, beta_1=cfg.beta1, beta_2=cfg.beta2,
        )
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        variables = model.trainable_variables
        if cfg.only_train_transformer_layers:
            variables = [v for v in variables if weight_name(v).startswith("h")]
        optimizer.build(variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")

    manager = None
    if checkpoint_dir and cfg.checkpoint_every:
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=cfg.keep_checkpoints)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            logger.info("resumed from %s at step %d", manager.latest_checkpoint, int(step_var.numpy()))
    start = int(step_var.numpy())

    # The training stream is a function of the seed alone (seeded file order and shuffle), so a
    # resumed run finds its data position by skipping the batches the first run consumed.
    train_ds = block_dataset(train_files, block_len, cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer,
                             seed=cfg.seed, repeat=True).skip(start)
    eval_ds = block_dataset(eval_files, block_len, cfg.batch_size, drop_remainder=False)
    batches = iter(train_ds if replicas == 1 else strategy.experimental_distribute_dataset(train_ds))

    tokens_global = cfg.batch_size * model_config.n_ctx  # targets per optimizer step
    micro = cfg.batch_size // replicas // cfg.grad_accum_steps
    scale_loss = optimizer.scale_loss if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None

    def micro_grads(x, y):
        with tf.GradientTape() as tape:
            loss_sum = tf.reduce_sum(token_loss(model(x, training=True), y))
            # Each replica's share of the global mean: summed over replicas and micro-batches,
            # the gradient is the gradient of the mean loss of the whole batch.
            loss = loss_sum / tokens_global
            scaled = scale_loss(loss) if scale_loss is not None else loss
        return loss_sum, tape.gradient(scaled, variables)

    def replica_grads(x, y):
        if cfg.grad_accum_steps == 1:
            return micro_grads(x, y)
        xs = tf.reshape(x, (cfg.grad_accum_steps, micro, -1))
        ys = tf.reshape(y, (cfg.grad_accum_steps, micro, -1))
        total = tf.zeros([], tf.float32)
        acc = [tf.zeros_like(v) for v in variables]
        for i in tf.range(cfg.grad_accum_steps):  # a while loop: one micro-batch's activations at a time
            loss_sum, grads = micro_grads(xs[i], ys[i])
            total += loss_sum
            acc = [a + tf.convert_to_tensor(g) for a, g in zip(acc, grads)]
        return total, acc

    compute = replica_grads if replicas == 1 else tf.function(replica_grads)

    def replica_step(x, y):
        loss_sum, grads = compute(x, y)
        grads = [tf.convert_to_tensor(g) for g in grads]
        if scale_loss is not None:
            grads = [g / optimizer.dynamic_scale for g in grads]
        if replicas > 1:
            context = tf.distribute.get_replica_context()
            # Clip the *global* gradient: sum it over replicas here; Keras sums what it is given
            # again, so each replica passes its share of the clipped sum.
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grad_norm = tf.linalg.global_norm(grads)
        if cfg.grad_clip > 0:
            grads, _ = tf.clip_by_global_norm(grads, cfg.grad_clip, use_norm=grad_norm)
        if replicas > 1:
            grads = [g / replicas for g in grads]
        if scale_loss is not None:
            grads = [g * optimizer.dynamic_scale for g in grads]  # the optimizer unscales them
        optimizer.apply_gradients(zip(grads, variables))
        return loss_sum, grad_norm

    if replicas == 1:
        @tf.function(jit_compile=cfg.xla)
        def train_step(x, y):  # gradients, clipping and the AdamW update in one XLA program
            loss_sum, grad_norm = replica_step(x, y)
            step_var.assign_add(1)
            return loss_sum / tokens_global, grad_norm
    else:
        @tf.function
        def train_step(x, y):
            loss_sum, grad_norm = strategy.run(replica_step, args=(x, y))
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None) / tokens_global
            step_var.assign_add(1)
            return loss, strategy.reduce(tf.distribute.ReduceOp.MEAN, grad_norm, axis=None)

    writers = {}
    if log_dir:
        writers = {k: tf.summary.create_file_writer(os.path.join(log_dir, k)) for k in ("train", "eval")}

    def scalars(run: str, step: int, values: Dict[str, float]) -> None:
        if run in writers:
            with writers[run].as_default(step=step):
                for k, v in values.items():
                    tf.summary.scalar(k, v)

    trained = "transformer layers only" if cfg.only_train_transformer_layers else "all weights"
    logger.info(
        "training %s parameters (%s) for %d steps%s: batch %d x %d tokens (%d replica(s), %d micro-batch(es)), "
        "peak lr %g, %s, XLA %s%s",
        f"{model_config.num_params():,}", trained, max_steps, f" from step {start}" if start else "",
        cfg.batch_size, model_config.n_ctx, replicas, cfg.grad_accum_steps, cfg.learning_rate, policy,
        "on" if cfg.xla else "off", ", recompute" if cfg.recompute else "",
    )
    progress = Progress(logger, "train", "steps", total=max_steps, every_s=float("inf"))
    history: List[Dict[str, float]] = []
    samples: List[Dict[str, object]] = []
    window: List[float] = []
    eval_loss = float("nan")
    best = (float("inf"), None)  # (eval loss, weights) for early stopping
    evals_without_improvement = 0
    stopped_early = False
    t_start = t_window = time.monotonic()
    step = start
    for step in range(start + 1, max_steps + 1):
        x, y = next(batches)
        loss, grad_norm = train_step(x, y)
        loss = float(loss)
        if not math.isfinite(loss):
            raise TrainingError(
                f"the training loss became {loss} at step {step}; lower the learning rate "
                f"(now {cfg.learning_rate}) or check the data."
            )
        window.append(loss)
        progress.update(1, tokens=tokens_global)
        if manager is not None and (step % cfg.checkpoint_every == 0 or step == max_steps):
            manager.save(checkpoint_number=step)
        if cfg.samples_every and tokenizer is not None and (step % cfg.samples_every == 0 or step == max_steps):
            text = _sample(model, tokenizer, cfg)
            samples.append({"step": step, "prompt": cfg.sample_prompt, "text": text})
            if "train" in writers:
                with writers["train"].as_default(step=step):
                    tf.summary.text("samples", f"**{cfg.sample_prompt!r}** → {text}")
        if step % cfg.log_every == 0 or step == max_steps:
            now = time.monotonic()
            record = {
                "step": step,
                "loss": float(np.mean(window)),
                "learning_rate": float(schedule(step - 1)),
                "grad_norm": float(grad_norm),
                "tokens_per_sec": len(window) * tokens_global / max(now - t_window, 1e-9),
            }
            record["perplexity"] = perplexity(record["loss"])
            if step % cfg.eval_every == 0 or step == max_steps:
                eval_loss, _ = evaluate(model, eval_ds, cfg.eval_batches)
                record["eval_loss"] = eval_loss
                scalars("eval", step, {"loss": eval_loss, "perplexity": perplexity(eval_loss)})
                if cfg.early_stopping_patience:
                    if eval_loss < best[0] - cfg.early_stopping_min_delta:
                        best = (eval_loss, [v.numpy() for v in model.weights])
                        evals_without_improvement = 0
                    else:
                        evals_without_improvement += 1
            scalars("train", step, {k: v for k, v in record.items() if k not in ("step", "eval_loss")})
            history.append(record)
            logger.info(
                "step %d/%d: loss %.4f, lr %.2e, grad norm %.2f, %s tokens/s%s",
                step, max_steps, record["loss"], record["learning_rate"], record["grad_norm"],
                f"{record['tokens_per_sec']:,.0f}",
                f", eval loss {eval_loss:.4f} (perplexity {perplexity(eval_loss):.1f})"
                if "eval_loss" in record else "",
            )
            window, t_window = [], time.monotonic()
            if cfg.early_stopping_patience and evals_without_improvement >= cfg.early_stopping_patience:
                logger.warning("early stopping at step %d: eval loss %.4f has not improved on %.4f for %d "
                               "evaluations; keeping the best weights", step, eval_loss, best[0],
                               evals_without_improvement)
                stopped_early = True
                break
    if start >= max_steps:
        logger.info("the checkpoint in %s is already at step %d of %d: nothing left to train", checkpoint_dir,
                    start, max_steps)
        eval_loss, _ = evaluate(model, eval_ds, cfg.eval_batches)
    if stopped_early and best[1] is not None:
        for v, value in zip(model.weights, best[1]):
            v.assign(value)
        eval_loss = best[0]
    for w in writers.values():
        w.flush()
    seconds = time.monotonic() - t_start
    progress.done()
    result = TrainResult(
        steps=step, tokens=(step - start) * tokens_global, seconds=seconds,
        train_loss=history[-1]["loss"] if history else float("nan"), eval_loss=eval_loss, history=history,
        samples=samples, stopped_early=stopped_early, resumed_from_step=start,
    )
    model.recompute = False
    return model, result


def _sample(model: GPT2, tokenizer, cfg: TrainConfig) -> str:
    from tfx_gpt2.model.generate import generate_text

    return generate_text(model, tokenizer, [cfg.sample_prompt], max_new_tokens=cfg.sample_tokens,
                         temperature=0.8, top_k=40, seed=cfg.seed)[0]
