"""Training GPT-2 on packed token blocks (plain TensorFlow/Keras, no TFX).

`train()` runs AdamW with linear warm-up and cosine decay, global-norm gradient clipping, gradient
accumulation, early stopping, frozen embeddings, LoRA adapters on a frozen model, gradient
checkpointing, mixed precision, XLA and
`tf.distribute` strategies, resumable checkpoints (weights, optimizer, step and data position),
progress lines with tokens/s, TensorBoard scalars and text samples.

The parts, in the order a step meets them:
    build_state()      the model, the optimizer and its schedule, the step counter
    open_checkpoints() restores a resumable checkpoint, saves new ones
    TrainStep          one optimizer step (micro-batches, replicas, clipping, loss scaling) as one program
    SubsetEvaluation   the eval loss on the first `eval_batches` batches of the eval split
    EarlyStopping      keeps the best weights, says when to stop
    Sampler            text samples of a few prompts, with one compiled generator
    TrainLog           progress lines, TensorBoard scalars and text, the history
    run_loop()         the loop that calls them on their schedules

TensorBoard (under `log_dir`): run `train` has `loss`, `perplexity`, `learning_rate`, `grad_norm`,
`tokens_per_sec` and the text `samples`; run `eval` has `subset_loss` and `subset_perplexity`
(the eval subset: its block count is in the tag's description and the log line).
The TFX Trainer's `run_fn` (tfx_gpt2/components/trainer.py) only resolves paths and calls `train()`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfx_gpt2.config.model import GPT2Config, TrainConfig
from tfx_gpt2.model.gpt2 import GPT2, is_adapter_name, token_loss, weight_name
from tfx_gpt2.model.lora import merged_model
from tfx_gpt2.progress import get_logger
from tfx_gpt2.text.blocks import block_dataset
from tfx_gpt2.training.evaluation import EvaluationError, check_block_length, count_blocks, evaluate
from tfx_gpt2.training.perplexity import perplexity

logger = get_logger("tfx_gpt2.train")

# AdamW decays matrices (weights, embeddings) only: biases `b` and layer-norm gains `g` are left alone.
NO_WEIGHT_DECAY = ["^b$", "^g$"]


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
        eval_subset_loss: loss on the eval subset (the first `eval_batches` batches of the eval
            split) at the last evaluation; with early stopping, the best one's. The whole split
            is scored by the PerplexityEvaluator, not here.
        eval_subset_blocks: blocks in that subset.
        eval_blocks: blocks in the whole eval split.
        history: one dict per logged or evaluated step: `step`, and `loss`, `perplexity`,
            `learning_rate`, `grad_norm`, `tokens_per_sec` at log steps, `eval_subset_loss`,
            `eval_subset_perplexity` at evaluations.
        samples: text samples (`step`, `prompt`, `text`).
        stopped_early: early stopping ended the run (the best weights were kept).
        resumed_from_step: the step of the checkpoint this run resumed from (0: a fresh start).
        trainable_params: the parameters that trained (the adapters' only, with LoRA).
    """

    steps: int
    tokens: int
    seconds: float
    train_loss: float
    eval_subset_loss: float
    eval_subset_blocks: int
    eval_blocks: int
    history: List[Dict[str, float]]
    samples: List[Dict[str, object]] = dataclasses.field(default_factory=list)
    stopped_early: bool = False
    resumed_from_step: int = 0
    trainable_params: int = 0

    @property
    def eval_subset_perplexity(self) -> float:
        return perplexity(self.eval_subset_loss)


_MULTI_WORKER: List[tf.distribute.Strategy] = []


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy that `TrainConfig.distribution` names (see there).

    'multi_worker' must come before TensorFlow runs any op in the process (it configures the
    collective ops); it is made once per process, and later calls return the same strategy."""
    if name == "multi_worker":
        if not _MULTI_WORKER:
            _MULTI_WORKER.append(tf.distribute.MultiWorkerMirroredStrategy())
        return _MULTI_WORKER[0]
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    # One device: TensorFlow's default strategy (the default device, a GPU if there is one), so
    # that the whole step, optimizer update included, compiles into one XLA program.
    return tf.distribute.get_strategy()


def worker_role(strategy: Optional[tf.distribute.Strategy] = None) -> Tuple[bool, int, int]:
    """(is_chief, worker index, number of workers) of this process: from TF_CONFIG under
    MultiWorkerMirroredStrategy (the chief is task `chief`, else `worker` 0); (True, 0, 1)
    under any other strategy or without TF_CONFIG."""
    if strategy is not None and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True, 0, 1
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster, task = config.get("cluster", {}), config.get("task", {})
    task_type, task_id = task.get("type"), int(task.get("index", 0))
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if task_type in (None, "chief"):
        return True, 0, max(workers, 1)
    offset = 1 if "chief" in cluster else 0
    return task_type == "worker" and task_id == 0 and not offset, task_id + offset, max(workers, 1)


def worker_dir(path: Optional[str], strategy: Optional[tf.distribute.Strategy] = None) -> Optional[str]:
    """Where this worker writes what the chief writes to `path`: `path` itself for the chief, a
    new temporary folder for each other worker (every worker must save, only one owns the result)."""
    chief, index, _ = worker_role(strategy)
    if path is None or chief:
        return path
    return tempfile.mkdtemp(prefix=f"tfx_gpt2-worker{index}-")


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


def steps_for(cfg: TrainConfig, train_files: Sequence[str]) -> int:
    """`cfg.max_steps`, or the steps of `cfg.epochs` passes over the train blocks."""
    if cfg.epochs <= 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * count_blocks(train_files) / cfg.batch_size))


# ---------------------------------------------------------------------------------------------
# The model, the optimizer and the checkpoints


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds, and what the step updates."""

    model: GPT2
    optimizer: keras.optimizers.Optimizer
    schedule: WarmupCosine
    variables: List[tf.Variable]  # the trained ones (all, the transformer blocks only, or the adapters)
    step: tf.Variable  # optimizer steps taken (int64)

    @property
    def trainable_params(self) -> int:
        return sum(int(np.prod(v.shape)) for v in self.variables)


def build_state(model_config: GPT2Config, cfg: TrainConfig, init_model: Optional[GPT2],
                strategy: tf.distribute.Strategy, policy: str, max_steps: int) -> TrainState:
    """A new model (with `init_model`'s weights if given, and LoRA adapters with `cfg.lora`) and
    its AdamW, inside `strategy`'s scope."""
    with strategy.scope():
        model = GPT2(model_config)
        if cfg.lora is not None:
            model.enable_lora(cfg.lora)
        if init_model is not None:
            copy_weights(_same_adapters(init_model, cfg), model)
        model.recompute = cfg.recompute
        schedule = WarmupCosine(cfg.learning_rate, cfg.min_learning_rate, cfg.warmup_steps, max_steps)
        optimizer = keras.optimizers.AdamW(
            learning_rate=schedule, weight_decay=cfg.weight_decay, beta_1=cfg.beta1, beta_2=cfg.beta2,
        )
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        variables = model.trainable_variables  # the adapters only, with LoRA
        if cfg.only_train_transformer_layers:
            variables = [v for v in variables if weight_name(v).startswith("h")]
        optimizer.build(variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    return TrainState(model, optimizer, schedule, variables, step)


def copy_weights(source: GPT2, target: GPT2) -> None:
    """Sets `target`'s weights from `source`'s of the same names; only adapters that `source` lacks
    keep their initial values (new adapters on a trained model)."""
    values = {weight_name(v): v for v in source.weights}
    for variable in target.weights:
        name = weight_name(variable)
        if name in values:
            variable.assign(values[name].numpy())
        elif not is_adapter_name(name):
            raise TrainingError(f"the initial model has no weight {name}; it does not have the trained shape.")


def _same_adapters(init_model: GPT2, cfg: TrainConfig) -> GPT2:
    """`init_model` as the start of `cfg`'s training: its adapters continue training when `cfg` has
    the same ones, and are merged into its weights when `cfg` trains no adapters."""
    if init_model.lora is None or init_model.lora == cfg.lora:
        return init_model
    if cfg.lora is None:
        return merged_model(init_model)
    raise TrainingError(
        f"the initial model's LoRA adapters ({init_model.lora}) differ from the ones to train ({cfg.lora}); "
        "train with the same lora_rank, lora_alpha and lora_targets, or start from the merged model."
    )


def open_checkpoints(state: TrainState, checkpoint_dir: Optional[str], cfg: TrainConfig,
                     strategy: Optional[tf.distribute.Strategy] = None) -> Optional[tf.train.CheckpointManager]:
    """A manager saving to `checkpoint_dir` (None without one, or with neither `checkpoint_every`
    nor `checkpoint_every_seconds`); the latest checkpoint there, if any, is restored into `state`
    first. With several workers each restores the chief's latest checkpoint, and the others save
    into folders of their own (`worker_dir`)."""
    if not (checkpoint_dir and (cfg.checkpoint_every or cfg.checkpoint_every_seconds)):
        return None
    checkpoint = tf.train.Checkpoint(model=state.model, optimizer=state.optimizer, step=state.step)
    own_dir = worker_dir(checkpoint_dir, strategy or tf.distribute.get_strategy())
    manager = tf.train.CheckpointManager(checkpoint, own_dir, max_to_keep=cfg.keep_checkpoints)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logger.info("resumed from %s at step %d", latest, int(state.step.numpy()))
    return manager


# ---------------------------------------------------------------------------------------------
# One optimizer step


class TrainStep:
    """One optimizer step on a global batch `(x, y)`, each `(batch_size, n_ctx)`: the loss of the
    batch and the global gradient norm before clipping.

    On one device the gradients, the clipping and the AdamW update compile into one XLA program
    (`cfg.xla`). With several replicas each computes its share of the gradient, the shares are
    summed, clipped as one global gradient, and applied.
    """

    def __init__(self, state: TrainState, cfg: TrainConfig, strategy: tf.distribute.Strategy, n_ctx: int):
        self.state, self.cfg, self.strategy = state, cfg, strategy
        self.replicas = strategy.num_replicas_in_sync
        self.tokens = cfg.batch_size * n_ctx  # targets per optimizer step
        self.micro = cfg.batch_size // self.replicas // cfg.grad_accum_steps
        self.loss_scaling = isinstance(state.optimizer, keras.optimizers.LossScaleOptimizer)
        self._grads = self._replica_grads if self.replicas == 1 else tf.function(self._replica_grads)
        self._step = tf.function(self._single_device, jit_compile=cfg.xla) if self.replicas == 1 \
            else tf.function(self._distributed)

    def __call__(self, x, y) -> Tuple[tf.Tensor, tf.Tensor]:
        return self._step(x, y)

    def _micro_grads(self, x, y):
        with tf.GradientTape() as tape:
            loss_sum = tf.reduce_sum(token_loss(self.state.model(x, training=True), y))
            # Each replica's share of the global mean: summed over replicas and micro-batches,
            # the gradient is the gradient of the mean loss of the whole batch.
            loss = loss_sum / self.tokens
            scaled = self.state.optimizer.scale_loss(loss) if self.loss_scaling else loss
        return loss_sum, tape.gradient(scaled, self.state.variables)

    def _replica_grads(self, x, y):
        n = self.cfg.grad_accum_steps
        if n == 1:
            return self._micro_grads(x, y)
        xs, ys = tf.reshape(x, (n, self.micro, -1)), tf.reshape(y, (n, self.micro, -1))
        total = tf.zeros([], tf.float32)
        acc = [tf.zeros_like(v) for v in self.state.variables]
        for i in tf.range(n):  # a while loop: one micro-batch's activations at a time
            loss_sum, grads = self._micro_grads(xs[i], ys[i])
            total += loss_sum
            acc = [a + tf.convert_to_tensor(g) for a, g in zip(acc, grads)]
        return total, acc

    def _replica_step(self, x, y):
        optimizer = self.state.optimizer
        loss_sum, grads = self._grads(x, y)
        grads = [tf.convert_to_tensor(g) for g in grads]
        if self.loss_scaling:
            grads = [g / optimizer.dynamic_scale for g in grads]
        if self.replicas > 1:
            # Clip the *global* gradient: sum it over replicas here; Keras sums what it is given
            # again, so each replica passes its share of the clipped sum.
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grad_norm = tf.linalg.global_norm(grads)
        if self.cfg.grad_clip > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.cfg.grad_clip, use_norm=grad_norm)
        if self.replicas > 1:
            grads = [g / self.replicas for g in grads]
        if self.loss_scaling:
            grads = [g * optimizer.dynamic_scale for g in grads]  # the optimizer unscales them
        optimizer.apply_gradients(zip(grads, self.state.variables))
        return loss_sum, grad_norm

    def _single_device(self, x, y):
        loss_sum, grad_norm = self._replica_step(x, y)
        self.state.step.assign_add(1)
        return loss_sum / self.tokens, grad_norm

    def _distributed(self, x, y):
        loss_sum, grad_norm = self.strategy.run(self._replica_step, args=(x, y))
        loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None) / self.tokens
        self.state.step.assign_add(1)
        return loss, self.strategy.reduce(tf.distribute.ReduceOp.MEAN, grad_norm, axis=None)


# ---------------------------------------------------------------------------------------------
# What happens around the steps: evaluation, early stopping, samples, logs


class SubsetEvaluation:
    """The eval loss on the first `batches` batches of the eval split: cheap enough to run every
    `eval_every` steps, and named a subset wherever it is shown."""

    def __init__(self, eval_files: Sequence[str], block_len: int, batch_size: int, batches: int):
        self.dataset = block_dataset(eval_files, block_len, batch_size, drop_remainder=False)
        self.batches = batches
        self.total_blocks = count_blocks(eval_files)
        self.blocks = min(self.total_blocks, batches * batch_size)
        self.description = f"{self.blocks:,} of {self.total_blocks:,} eval blocks"

    def __call__(self, model: GPT2) -> float:
        return evaluate(model, self.dataset, self.batches)[0]


class EarlyStopping:
    """Stops after `patience` evaluations without an improvement of `min_delta` on the best
    eval loss, and puts the best weights back (`patience=0`: never stops)."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best_loss = float("inf")
        self.best_weights: Optional[List[np.ndarray]] = None
        self.misses = 0

    def should_stop(self, eval_loss: float, model: GPT2) -> bool:
        if not self.patience:
            return False
        if eval_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_weights, self.misses = eval_loss, [v.numpy() for v in model.weights], 0
        else:
            self.misses += 1
        return self.misses >= self.patience

    def restore_best(self, model: GPT2) -> None:
        for v, value in zip(model.weights, self.best_weights or []):
            v.assign(value)


class Sampler:
    """Continues each of `prompts` with one generator, compiled once and reused for every sample
    (the model's weights change between samples; the compiled loop reads them as they are)."""

    def __init__(self, model: GPT2, tokenizer, cfg: TrainConfig):
        from tfx_gpt2.model.generate import Generator, SamplingConfig
        from tfx_gpt2.model.sampling import DEFAULT_TOP_K

        self.prompts = list(cfg.sample_prompts)
        self.generator = Generator(model, tokenizer)
        self.sampling = SamplingConfig(max_new_tokens=min(cfg.sample_tokens, model.config.n_ctx - 1),
                                       temperature=0.8, top_k=DEFAULT_TOP_K, seed=cfg.seed)

    def __call__(self, step: int) -> List[Dict[str, object]]:
        texts = self.generator.generate(self.prompts, self.sampling)
        return [{"step": step, "prompt": p, "text": t} for p, t in zip(self.prompts, texts)]


class TrainLog:
    """Progress lines, TensorBoard scalars and text (runs `train` and `eval` under `log_dir`),
    and the history of logged values."""

    def __init__(self, log_dir: Optional[str], max_steps: int):
        self.max_steps = max_steps
        self.writers = {}
        if log_dir:
            self.writers = {k: tf.summary.create_file_writer(os.path.join(log_dir, k)) for k in ("train", "eval")}
        self.history: List[Dict[str, float]] = []

    def record(self, step: int, values: Dict[str, float]) -> None:
        if self.history and self.history[-1]["step"] == step:
            self.history[-1].update(values)
        else:
            self.history.append({"step": step, **values})

    def scalars(self, run: str, step: int, values: Dict[str, float], description: str = "") -> None:
        if run in self.writers:
            with self.writers[run].as_default(step=step):
                for k, v in values.items():
                    tf.summary.scalar(k, v, description=description or None)

    def train_line(self, step: int, values: Dict[str, float]) -> None:
        self.record(step, values)
        self.scalars("train", step, values)
        logger.info("step %d/%d: loss %.4f, lr %.2e, grad norm %.2f, %s tokens/s", step, self.max_steps,
                    values["loss"], values["learning_rate"], values["grad_norm"], f"{values['tokens_per_sec']:,.0f}")

    def eval_line(self, step: int, loss: float, description: str) -> None:
        self.record(step, {"eval_subset_loss": loss, "eval_subset_perplexity": perplexity(loss)})
        self.scalars("eval", step, {"subset_loss": loss, "subset_perplexity": perplexity(loss)},
                     f"on the eval subset: {description}")
        logger.info("step %d/%d: eval subset (%s): loss %.4f, perplexity %.1f", step, self.max_steps,
                    description, loss, perplexity(loss))

    def samples(self, step: int, samples: List[Dict[str, object]]) -> None:
        if "train" in self.writers:
            table = "\n\n".join(f"**{s['prompt']!r}** → {s['text']}" for s in samples)
            with self.writers["train"].as_default(step=step):
                tf.summary.text("samples", table)
        for s in samples:
            logger.info("step %d sample: %r -> %r", step, s["prompt"], s["text"])

    def close(self) -> None:
        for w in self.writers.values():
            w.flush()



# ---------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class LoopParts:
    """What `run_loop` calls, built by `train()`."""

    state: TrainState
    step_fn: TrainStep
    batches: object  # iterator of (x, y) global batches
    evaluation: SubsetEvaluation
    early_stopping: EarlyStopping
    log: TrainLog
    checkpoints: Optional[tf.train.CheckpointManager] = None
    sampler: Optional[Sampler] = None


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def _overdue(saved_at: float, cfg: TrainConfig) -> bool:
    """Whether `checkpoint_every_seconds` have passed since the last checkpoint (or the start)."""
    return bool(cfg.checkpoint_every_seconds) and time.monotonic() - saved_at >= cfg.checkpoint_every_seconds


def _sample_every(cfg: TrainConfig) -> int:
    # -1: with every evaluation; 0: never (the Sampler is not built then).
    return cfg.eval_every if cfg.samples_every < 0 else cfg.samples_every


def _checked_loss(loss: float, step: int, cfg: TrainConfig) -> float:
    if not math.isfinite(loss):
        raise TrainingError(
            f"the training loss became {loss} at step {step}; lower the learning rate "
            f"(now {cfg.learning_rate}) or check the data."
        )
    return loss


def run_loop(parts: LoopParts, cfg: TrainConfig, start: int, max_steps: int) -> Tuple[int, List[dict], bool]:
    """Steps from `start + 1` to `max_steps`, logging every `log_every` steps, evaluating every
    `eval_every` steps, sampling and checkpointing on their own schedules, and at the last step.

    Returns:
        The last step taken, the samples, and whether early stopping ended the run.
    """
    samples: List[dict] = []
    window: List[float] = []
    window_seconds = 0.0
    step = start
    saved_at = time.monotonic()
    for step in range(start + 1, max_steps + 1):
        t0 = time.monotonic()
        loss, grad_norm = parts.step_fn(*next(parts.batches))
        window.append(_checked_loss(float(loss), step, cfg))  # float() waits for the step to finish
        window_seconds += time.monotonic() - t0
        if _due(step, cfg.log_every, max_steps):
            parts.log.train_line(step, {
                "loss": float(np.mean(window)), "perplexity": perplexity(float(np.mean(window))),
                "learning_rate": float(parts.state.schedule(step - 1)), "grad_norm": float(grad_norm),
                "tokens_per_sec": len(window) * parts.step_fn.tokens / max(window_seconds, 1e-9),
            })
            window, window_seconds = [], 0.0
        if parts.checkpoints is not None and (_due(step, cfg.checkpoint_every, max_steps) or _overdue(saved_at, cfg)):
            parts.checkpoints.save(checkpoint_number=step)
            saved_at = time.monotonic()
        if parts.sampler is not None and _due(step, _sample_every(cfg), max_steps):
            samples += parts.sampler(step)
            parts.log.samples(step, samples[-len(parts.sampler.prompts):])
        if _due(step, cfg.eval_every, max_steps):
            eval_loss = parts.evaluation(parts.state.model)
            parts.log.eval_line(step, eval_loss, parts.evaluation.description)
            if parts.early_stopping.should_stop(eval_loss, parts.state.model):
                logger.warning("early stopping at step %d: the eval subset loss has not improved on %.4f for %d "
                               "evaluations; keeping the best weights", step, parts.early_stopping.best_loss,
                               parts.early_stopping.misses)
                return step, samples, True
    return step, samples, False


# ---------------------------------------------------------------------------------------------
# train()


def train(
    model_config: GPT2Config,
    train_config: TrainConfig,
    train_files: Sequence[str],
    eval_files: Sequence[str],
    log_dir: Optional[str] = None,
    model: Optional[GPT2] = None,
    checkpoint_dir: Optional[str] = None,
    tokenizer=None,
    load_model: Optional[Callable[[], GPT2]] = None,
) -> Tuple[GPT2, TrainResult]:
    """Trains GPT-2 on packed blocks.

    Args:
        model_config: the model's shape (ignored when `model` is given).
        train_config: optimisation settings (see `TrainConfig`).
        train_files: globs of the training block files.
        eval_files: globs of the eval block files.
        log_dir: TensorBoard log directory (`train/` and `eval/` runs are written below it).
        model: a model to start from (fine-tuning); a new one is initialised if None and there is
            no `load_model`. Its weights are copied into the model trained; it stays in memory as
            long as the caller holds it, which is the whole call.
        load_model: instead of `model`, a function that returns it: train() then holds the only
            reference and releases it once its weights are copied, so that one copy of the
            weights stays in memory while training (a 1558M model is 6 GB a copy).
        checkpoint_dir: where resumable checkpoints go (with `checkpoint_every`); if it holds one,
            training resumes from it: same step, optimizer state and data position.
        tokenizer: a `BPETokenizer`, for text samples (`samples_every`); None: no samples.

    Returns:
        The trained model and a `TrainResult`.

    Raises:
        TrainingError: the data does not fit the model, or the loss became NaN or infinite.
    """
    if model is not None and load_model is not None:
        raise ValueError("train() takes a model to start from or a function that loads one (load_model), not both.")
    # A list that _train() empties once the weights are copied: then nothing holds the loaded model.
    handed_over = [load_model()] if load_model is not None else [model] if model is not None else []
    del model
    previous_policy = keras.config.dtype_policy()
    policy = precision_policy(train_config.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    try:
        return _train(model_config, train_config, train_files, eval_files, log_dir, handed_over, checkpoint_dir,
                      tokenizer, policy)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _effective_config(model_config: GPT2Config, cfg: TrainConfig, init_model: Optional[GPT2],
                      train_files: Sequence[str], eval_files: Sequence[str]) -> GPT2Config:
    """The shape trained (the initial model's, if any), with the run's dropout; checked against the data."""
    if init_model is not None:
        model_config = init_model.config
    if cfg.dropout >= 0:
        model_config = dataclasses.replace(model_config, dropout=cfg.dropout)
    try:
        check_block_length(train_files, model_config, "train")
        check_block_length(eval_files, model_config, "eval")
    except EvaluationError as e:
        raise TrainingError(str(e)) from None
    return model_config


def _check_batch_split(cfg: TrainConfig, replicas: int) -> None:
    if cfg.batch_size % (replicas * cfg.grad_accum_steps):
        raise TrainingError(
            f"batch_size = {cfg.batch_size} must split evenly over {replicas} replica(s) x "
            f"{cfg.grad_accum_steps} micro-batch(es); choose a multiple of {replicas * cfg.grad_accum_steps}."
        )


def _train_batches(train_files, cfg: TrainConfig, block_len: int, start: int, strategy):
    # The training stream is a function of the seed alone (seeded file order and shuffle), so a
    # resumed run finds its data position by skipping the batches the first run consumed.
    ds = block_dataset(train_files, block_len, cfg.batch_size, shuffle_buffer=cfg.shuffle_buffer,
                       seed=cfg.seed, repeat=True).skip(start)
    if strategy.num_replicas_in_sync == 1:
        return iter(ds)
    if worker_role(strategy)[2] > 1:
        return iter(strategy.distribute_datasets_from_function(lambda context: _worker_slice(ds, context)))
    return iter(strategy.experimental_distribute_dataset(ds))


def _worker_slice(ds: tf.data.Dataset, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Worker `context.input_pipeline_id`'s rows of every global batch, one element per local
    replica: each worker reads the whole stream (no file sharding) and keeps its slice, so that
    the replicas' batches together are exactly one worker's global batch, in the same order."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    workers, worker = context.num_input_pipelines, context.input_pipeline_id
    local = context.num_replicas_in_sync // workers

    def slices(x, y):
        rows = tf.shape(x)[0] // (workers * local)
        mine = slice(worker * local * rows, (worker + 1) * local * rows)
        shape = tf.stack([local, rows, tf.shape(x)[1]])
        return tf.data.Dataset.from_tensor_slices((tf.reshape(x[mine], shape), tf.reshape(y[mine], shape)))

    return ds.flat_map(slices).with_options(options)


def _announce(model_config: GPT2Config, cfg: TrainConfig, max_steps: int, start: int, replicas: int,
              policy: str, trainable: int) -> None:
    trained = "transformer layers only" if cfg.only_train_transformer_layers else "all weights"
    if cfg.lora is not None:
        trained = (f"LoRA rank {cfg.lora.rank} on {', '.join(cfg.lora.targets)}: {trainable:,} trainable, "
                   f"{trainable / model_config.num_params():.2%}")
    logger.info(
        "training %s parameters (%s) for %d steps%s: batch %d x %d tokens (%d replica(s), %d micro-batch(es)), "
        "peak lr %g, %s, XLA %s%s",
        f"{model_config.num_params():,}", trained, max_steps, f" from step {start}" if start else "",
        cfg.batch_size, model_config.n_ctx, replicas, cfg.grad_accum_steps, cfg.learning_rate, policy,
        "on" if cfg.xla else "off", ", recompute" if cfg.recompute else "",
    )


def _train(model_config, cfg, train_files, eval_files, log_dir, handed_over, checkpoint_dir, tokenizer, policy):
    # First: MultiWorkerMirroredStrategy configures collective ops, which must precede any op.
    strategy = make_strategy(cfg.distribution)
    init_model = handed_over.pop() if handed_over else None
    keras.utils.set_random_seed(cfg.seed)
    model_config = _effective_config(model_config, cfg, init_model, train_files, eval_files)
    block_len = model_config.n_ctx + 1
    max_steps = steps_for(cfg, train_files)
    _check_batch_split(cfg, strategy.num_replicas_in_sync)
    state = build_state(model_config, cfg, init_model, strategy, policy, max_steps)
    del init_model  # copied: free its weights now, not after training (its layers refer to each other)
    gc.collect()
    checkpoints = open_checkpoints(state, checkpoint_dir, cfg, strategy)
    chief = worker_role(strategy)[0]
    start = int(state.step.numpy())
    parts = LoopParts(
        state=state, step_fn=TrainStep(state, cfg, strategy, model_config.n_ctx),
        batches=_train_batches(train_files, cfg, block_len, start, strategy),
        evaluation=SubsetEvaluation(eval_files, block_len, cfg.batch_size, cfg.eval_batches),
        early_stopping=EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta),
        log=TrainLog(log_dir if chief else None, max_steps), checkpoints=checkpoints,
        sampler=Sampler(state.model, tokenizer, cfg) if chief and tokenizer is not None and cfg.samples_every else None,
    )
    _announce(model_config, cfg, max_steps, start, strategy.num_replicas_in_sync, policy, state.trainable_params)
    t_start = time.monotonic()
    step, samples, stopped_early = run_loop(parts, cfg, start, max_steps)
    seconds = time.monotonic() - t_start
    return state.model, _finish(parts, cfg, step, start, max_steps, samples, stopped_early, seconds, checkpoint_dir)


def _finish(parts: LoopParts, cfg: TrainConfig, step: int, start: int, max_steps: int, samples: List[dict],
            stopped_early: bool, seconds: float, checkpoint_dir: Optional[str]) -> TrainResult:
    model, history = parts.state.model, parts.log.history
    evals = [h["eval_subset_loss"] for h in history if "eval_subset_loss" in h]
    if start >= max_steps:
        logger.info("the checkpoint in %s is already at step %d of %d: nothing left to train", checkpoint_dir,
                    start, max_steps)
        evals.append(parts.evaluation(model))
    eval_loss = evals[-1]
    if stopped_early and parts.early_stopping.best_weights is not None:
        parts.early_stopping.restore_best(model)
        eval_loss = parts.early_stopping.best_loss
    parts.log.close()
    model.recompute = False
    trained = [h for h in history if "loss" in h]
    tokens = (step - start) * parts.step_fn.tokens
    logger.info("trained %d steps in %.1fs (%s tokens/s)", step - start, seconds, f"{tokens / max(seconds, 1e-9):,.0f}")
    return TrainResult(
        steps=step, tokens=tokens, seconds=seconds, train_loss=trained[-1]["loss"] if trained else float("nan"),
        eval_subset_loss=eval_loss, eval_subset_blocks=parts.evaluation.blocks,
        eval_blocks=parts.evaluation.total_blocks, history=history, samples=samples,
        stopped_early=stopped_early, resumed_from_step=start,
        trainable_params=parts.state.trainable_params,
    )
