"""Typed configuration: frozen dataclasses with presets, and their JSON round trip.

Configs travel into TFX components as JSON strings (component properties, the Trainer's
`custom_config`) and come back typed with `from_json`, which refuses unknown or mistyped fields
with an error that names the field, the value and what is accepted.

Presets:
    * `GPT2Config` presets: `tiny` (tests and CPU demos) and OpenAI's four published sizes
      `124M`, `355M`, `774M`, `1558M` (their `hparams.json` values).
    * `TrainConfig` presets: `tiny` (about a minute on a 2-core CPU), `finetune` (a sane default
      for fine-tuning a published checkpoint on a GPU) and `lora` (the same with low-rank adapters:
      the base frozen, rank-8 adapters on every attention and MLP projection).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Dict, Optional, Tuple, Type, TypeVar

T = TypeVar("T")

# The top-k of generated samples by default (training samples, the pusher's samples, MLflow's
# `params`), as in GPT-2's release; the sampler is `tfx_gpt2.model.sampling`.
DEFAULT_TOP_K = 40
# The sampling settings' defaults as request params (MLflow's `params`, the server's MLflow route).
SAMPLING_PARAM_DEFAULTS = {"max_new_tokens": 32, "temperature": 1.0, "top_k": DEFAULT_TOP_K, "top_p": 1.0,
                           "repetition_penalty": 1.0, "seed": -1}


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


def _check_field_types(obj: Any) -> None:
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        expected = hints[field.name]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(obj, field.name, float(value))
            continue
        if expected in (int, float, str, bool):
            ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
            if not ok:
                raise ConfigError(
                    f"{type(obj).__name__}.{field.name} = {value!r} has type {type(value).__name__}; "
                    f"it must be a {expected.__name__}."
                )


def _require_positive(obj: Any, names: Tuple[str, ...]) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} = {getattr(obj, name)} must be positive.")


def _preset(table: Dict[str, T], kind: str, name: str) -> T:
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"{kind} preset {name!r} does not exist; choose one of {sorted(table)}.") from None


def to_json(config: Any) -> str:
    """Serialises a config dataclass as a JSON object (sorted keys, so it is stable for caching)."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def from_dict(cls: Type[T], values: Dict[str, Any]) -> T:
    """Builds `cls` from a dict, refusing fields `cls` does not have.

    Raises:
        ConfigError: an unknown field, or a value of the wrong type or range.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{cls.__name__} must be given as a JSON object, got {values!r}.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{cls.__name__} has no field(s) {unknown}; known fields are {sorted(known)}."
        )
    return cls(**values)


def from_json(cls: Type[T], text: str) -> T:
    """Inverse of `to_json`."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cls.__name__}: not valid JSON ({e}): {text[:200]!r}") from e
    return from_dict(cls, values)


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """The shape of a GPT-2 model, with OpenAI's `hparams.json` names.

    Attributes:
        n_vocab: vocabulary size (50257 for OpenAI's vocabulary).
        n_ctx: the longest sequence the model takes (learned position embeddings).
        n_embd: width of the residual stream.
        n_layer: number of transformer blocks.
        n_head: attention heads per block; must divide `n_embd`.
        dropout: dropout rate on embeddings, attention weights and residual branches (training only).
        layer_norm_epsilon: epsilon of every layer norm (GPT-2 uses 1e-5).
    """

    n_vocab: int = 50257
    n_ctx: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        _check_field_types(self)
        _require_positive(self, ("n_vocab", "n_ctx", "n_embd", "n_layer", "n_head"))
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"GPT2Config.n_embd = {self.n_embd} is not divisible by n_head = {self.n_head}; "
                "choose n_head among the divisors of n_embd."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"GPT2Config.dropout = {self.dropout} must be in [0, 1).")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def num_params(self) -> int:
        """Parameter count (tied embeddings counted once)."""
        d, v, t, n = self.n_embd, self.n_vocab, self.n_ctx, self.n_layer
        per_block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
        return v * d + t * d + n * per_block + 2 * d


MODEL_PRESETS: Dict[str, GPT2Config] = {
    # Small enough to train in about a minute on a 2-core CPU, with the full GPT-2 vocabulary.
    "tiny": GPT2Config(n_ctx=64, n_embd=64, n_layer=2, n_head=2),
    # OpenAI's published sizes (hparams.json of each release).
    "124M": GPT2Config(n_ctx=1024, n_embd=768, n_layer=12, n_head=12),
    "355M": GPT2Config(n_ctx=1024, n_embd=1024, n_layer=24, n_head=16),
    "774M": GPT2Config(n_ctx=1024, n_embd=1280, n_layer=36, n_head=20),
    "1558M": GPT2Config(n_ctx=1024, n_embd=1600, n_layer=48, n_head=25),
}


def model_preset(name: str) -> GPT2Config:
    """Returns the `GPT2Config` preset called `name`.

    Raises:
        ConfigError: `name` is not a preset.
    """
    return _preset(MODEL_PRESETS, "model", name)


# The projections LoRA can adapt, as module paths within a block: PEFT matches a target by the
# end of a module's name, so these also select `transformer.h.<i>.attn.c_attn`, ... in PEFT.
LORA_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Low-rank adapters (LoRA, Hu et al. 2021): each target projection `x @ w + b` becomes
    `x @ w + b + dropout(x) @ a @ b_lora * alpha / rank`, with `w`, `b` frozen.

    Attributes:
        rank: the inner width of each adapter.
        alpha: the adapters' output is scaled by `alpha / rank`.
        dropout: dropout on the adapters' input while training.
        targets: which projections of every block carry one (a subset of `LORA_TARGETS`).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Tuple[str, ...] = LORA_TARGETS

    def __post_init__(self):
        _check_field_types(self)
        _require_positive(self, ("rank", "alpha"))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoraSpec.dropout = {self.dropout} must be in [0, 1).")
        targets = self.targets
        if isinstance(targets, str) or not targets or not set(targets) <= set(LORA_TARGETS):
            raise ConfigError(f"LoRA targets {targets!r} must be a non-empty list drawn from {list(LORA_TARGETS)}.")
        object.__setattr__(self, "targets", tuple(t for t in LORA_TARGETS if t in targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        batch_size: sequences per optimizer step.
        max_steps: optimizer steps to run.
        learning_rate: peak learning rate, reached after `warmup_steps`, then cosine decay to
            `min_learning_rate` at `max_steps`.
        min_learning_rate: the learning rate at the end of the cosine decay.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW's decoupled weight decay, applied to the matrices (embeddings
            included, as in nanoGPT), not to biases or layer-norm gains.
        beta1, beta2: Adam's moment decay rates.
        grad_clip: clip the global gradient norm to this value (0 disables clipping).
        eval_every: evaluate on the eval subset (the first `eval_batches` batches of the eval
            split) every this many steps and at the last step. It is shown as the eval subset
            (`eval_subset_loss`, with its block count); the PerplexityEvaluator scores the whole split.
        eval_batches: batches in the eval subset.
        log_every: log progress (loss, tokens/s) every this many steps.
        seed: seed for initialisation, shuffling and dropout.
        shuffle_buffer: blocks held for shuffling the training stream.
        epochs: if > 0, train for this many passes over the train blocks instead of `max_steps`
            (the step count is derived from the number of blocks; the schedule follows it).
        grad_accum_steps: split each batch into this many micro-batches whose gradients are summed
            before one optimizer step (same result, less memory); must divide `batch_size`.
        early_stopping_patience: stop after this many evaluations without an eval loss better than
            the best by `early_stopping_min_delta`, and keep the best weights (0: never stop early).
        early_stopping_min_delta: the improvement that counts for early stopping (nats).
        only_train_transformer_layers: freeze the token and position embeddings and the final
            layer norm; train the transformer blocks only.
        recompute: recompute each block's activations in the backward pass (gradient
            checkpointing): less memory for bigger models or batches, about a third more compute.
        dropout: dropout rate while training; -1 keeps the model's own (`GPT2Config.dropout`).
        mixed_precision: 'auto' (bf16 on GPUs that have it, fp16 with loss scaling on older GPUs,
            float32 on CPU), 'bf16', 'fp16' or 'off'.
        xla: compile the training step with XLA.
        distribution: 'auto' (all local GPUs with MirroredStrategy if there are several, else one
            device), 'one_device', 'mirrored', or 'multi_worker' (MultiWorkerMirroredStrategy,
            configured by `TF_CONFIG`).
        checkpoint_every: save a resumable checkpoint (weights, optimizer, step, data position)
            every this many steps (0: never); a run given the same checkpoint directory resumes.
        checkpoint_every_seconds: also save one when this many seconds passed since the last
            (0: never), so a killed run loses at most that much work whatever the step count.
        keep_checkpoints: checkpoints kept on disk.
        samples_every: continue each of `sample_prompts` at every evaluation and at the end (-1,
            the default), every this many steps and at the end (> 0), or never (0). Samples go to
            TensorBoard's Text tab (`train/samples`), the log, `samples.json` and the MLflow run.
        sample_prompts: the prompts of the samples.
        sample_tokens: tokens per sample.
        lora_rank: train low-rank adapters of this rank on a frozen model (0: train the weights
            themselves); see `LoraSpec` and the `lora` property.
        lora_alpha, lora_dropout, lora_targets: the adapters' scale numerator, input dropout and
            the projections that carry them (`LORA_TARGETS`).
    """

    batch_size: int = 8
    max_steps: int = 1000
    learning_rate: float = 3e-4
    min_learning_rate: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 20
    log_every: int = 20
    seed: int = 1337
    shuffle_buffer: int = 10000
    epochs: float = 0.0
    grad_accum_steps: int = 1
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    only_train_transformer_layers: bool = False
    recompute: bool = False
    dropout: float = -1.0
    mixed_precision: str = "auto"
    xla: bool = True
    distribution: str = "auto"
    checkpoint_every: int = 500
    checkpoint_every_seconds: float = 300.0
    keep_checkpoints: int = 3
    samples_every: int = -1
    sample_prompts: Tuple[str, ...] = ("\n", "The", "In Python,")
    sample_tokens: int = 32
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: Tuple[str, ...] = LORA_TARGETS

    @property
    def lora(self) -> Optional[LoraSpec]:
        """The adapters to train, or None when the weights themselves train."""
        if not self.lora_rank:
            return None
        return LoraSpec(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets)

    def __post_init__(self):
        _check_field_types(self)
        self._check_lora()
        _require_positive(self, ("batch_size", "max_steps", "eval_every", "eval_batches", "log_every",
                                 "grad_accum_steps", "keep_checkpoints", "sample_tokens"))
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(
                f"TrainConfig.grad_accum_steps = {self.grad_accum_steps} does not divide batch_size = "
                f"{self.batch_size}; choose a divisor (each micro-batch is batch_size / grad_accum_steps)."
            )
        choices = {"mixed_precision": ("auto", "bf16", "fp16", "off"),
                   "distribution": ("auto", "one_device", "mirrored", "multi_worker")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"TrainConfig.{name} = {getattr(self, name)!r}; choose one of {list(allowed)}.")
        if (self.epochs < 0 or self.early_stopping_patience < 0 or self.checkpoint_every < 0
                or not self.checkpoint_every_seconds >= 0):
            raise ConfigError("TrainConfig.epochs, early_stopping_patience, checkpoint_every and "
                              "checkpoint_every_seconds must not be negative (0 turns each off).")
        if self.samples_every < -1:
            raise ConfigError(f"TrainConfig.samples_every = {self.samples_every}; use -1 (at every evaluation), "
                              "0 (never) or a number of steps.")
        prompts = self.sample_prompts
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts) or not prompts:
            raise ConfigError(f"TrainConfig.sample_prompts = {prompts!r} must be a non-empty list of strings.")
        object.__setattr__(self, "sample_prompts", tuple(prompts))
        if not (self.dropout == -1.0 or 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"TrainConfig.dropout = {self.dropout} must be in [0, 1), or -1 for the model's own.")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"TrainConfig.learning_rate = {self.learning_rate} must be in (0, 1).")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ConfigError(
                f"TrainConfig.min_learning_rate = {self.min_learning_rate} must be in "
                f"[0, learning_rate = {self.learning_rate}]."
            )
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ConfigError(
                f"TrainConfig.warmup_steps = {self.warmup_steps} must be in [0, max_steps = {self.max_steps}]."
            )
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("TrainConfig.grad_clip and weight_decay must not be negative.")

    def _check_lora(self) -> None:
        if self.lora_rank < 0:
            raise ConfigError(f"TrainConfig.lora_rank = {self.lora_rank} must not be negative (0: no LoRA).")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets) if isinstance(self.lora_targets, list)
                           else self.lora_targets)
        if not self.lora_rank:
            return
        try:
            LoraSpec(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets)
        except ConfigError as e:
            raise ConfigError(f"TrainConfig lora_*: {e}") from None
        if self.only_train_transformer_layers:
            raise ConfigError("TrainConfig.lora_rank > 0 trains adapters only; only_train_transformer_layers must "
                              "be False with it.")


TRAIN_PRESETS: Dict[str, TrainConfig] = {
    # About a minute on a 2-core CPU with the `tiny` model on the bundled corpus.
    "tiny": TrainConfig(
        batch_size=16, max_steps=160, learning_rate=3e-3, min_learning_rate=3e-4, warmup_steps=16,
        eval_every=80, eval_batches=8, log_every=20, shuffle_buffer=2048, checkpoint_every_seconds=15.0,
    ),
    "finetune": TrainConfig(
        batch_size=8, max_steps=2000, learning_rate=1e-4, min_learning_rate=1e-5, warmup_steps=100,
    ),
    # Fine-tuning with rank-8 adapters on every projection (under 1% of 124M's parameters train):
    # a higher learning rate than the full fine-tune's, and no weight decay, as PEFT's examples.
    "lora": TrainConfig(
        batch_size=8, max_steps=2000, learning_rate=2e-4, min_learning_rate=2e-5, warmup_steps=100,
        weight_decay=0.0, lora_rank=8, lora_alpha=16.0, lora_dropout=0.05,
    ),
}


def train_preset(name: str, max_steps: int = 0) -> TrainConfig:
    """Returns the `TrainConfig` preset called `name`, set to `max_steps` if given (see
    `with_max_steps`)."""
    cfg = _preset(TRAIN_PRESETS, "train", name)
    return with_max_steps(cfg, max_steps) if max_steps else cfg


def warm_schedule(cfg: TrainConfig, learning_rate: float = 0.0, max_steps: int = 0) -> TrainConfig:
    """The schedule of a warm start from `cfg`'s: fine-tuning a trained model wants a lower peak
    (a third of `cfg`'s unless given) and a short warm-up; `max_steps` 0 keeps `cfg`'s steps."""
    warm = with_max_steps(cfg, max_steps) if max_steps else cfg
    peak = learning_rate or cfg.learning_rate / 3
    return dataclasses.replace(warm, learning_rate=peak, min_learning_rate=min(warm.min_learning_rate, peak / 10),
                               warmup_steps=max(1, warm.max_steps // 20))


def with_max_steps(cfg: TrainConfig, max_steps: int) -> TrainConfig:
    """`cfg` shortened or lengthened to `max_steps`, with evaluation and warm-up kept inside it."""
    return dataclasses.replace(cfg, max_steps=max_steps, eval_every=min(cfg.eval_every, max_steps),
                               log_every=min(cfg.log_every, max_steps),
                               warmup_steps=min(cfg.warmup_steps, max(1, max_steps // 10)))
