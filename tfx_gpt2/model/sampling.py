"""Choosing the next token: the sampler shared by serving, the `Generator`, training samples and
the pusher's samples.

Rule, in order (as Hugging Face applies it): repetition penalty (CTRL style: a seen token's logit
is divided by the penalty when positive, multiplied when negative), temperature, top-k, top-p on
what top-k left (renormalised), then a sample drawn with one uniform number `u` per token by
inverse CDF; temperature 0 is greedy. Tokens tied at a top-k or top-p cut are all kept. Every
setting is per row, so requests with different settings share a batch; `u` is drawn before
generation from a seed (`draw_uniforms`), so a seed gives the same tokens with or without XLA and
whatever the row is batched with.

Speed on CPUs, where a sort or a cumulative sum over 50,257 logits is slow under XLA. A row takes
the first of three paths that is exact for it:

* **candidates** (top-k up to `CANDIDATES`, or a top-p nucleus that the candidates hold): the
  `CANDIDATES` largest logits by a two-stage top-k (the maximum of each block of `BLOCK` ids, the
  blocks of the largest maxima, then the largest entries of those blocks), the cuts on that short
  sorted list, and the inverse CDF over it, most probable first. About one pass over the
  vocabulary.
* **full** (no top-k and no top-p: plain temperature sampling): the inverse CDF over the whole
  vocabulary in id order, in two levels (sums of blocks of `CDF_BLOCK` ids, then inside one
  block). Two passes.
* **bisection** (a top-k above `CANDIDATES`, or a nucleus larger than the candidates): the cuts
  found by bisecting over the logits' keys (33 passes), then the two-level inverse CDF.

Each path runs only when some row of the batch needs it. The distribution is the same whichever
path a row takes (`tests/test_sampling.py` checks the masks exactly and the frequencies against a
sort-based reference); the token a given `u` picks depends on the path (the candidate path orders
the kept tokens by probability, the others by id).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla

from tfx_gpt2.config.model import DEFAULT_TOP_K  # noqa: F401 -- the samples' default, kept with the configs

# Candidates kept by the fast path, and the block width of its first stage; the block width of
# the two-level inverse CDF (measured fastest on CPUs).
CANDIDATES = 64
BLOCK = 32
CDF_BLOCK = 128


class GenerationError(ValueError):
    """A sampling setting is out of range, or a prompt does not fit the model."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to continue prompts.

    Attributes:
        max_new_tokens: tokens to generate at most (per sequence).
        temperature: softmax temperature; 0 means greedy (argmax).
        top_k: keep only the k most likely tokens (0: no limit).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1: no limit).
        repetition_penalty: > 1 discourages tokens already in the sequence (1: off).
        num_return_sequences: continuations per prompt.
        seed: seed of the sampler (None: a random one); the same seed gives the same text.
        stop: strings that end a continuation (the stop string is not returned).
        stop_at_eot: end a continuation at `<|endoftext|>`.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    seed: Optional[int] = None
    stop: Tuple[str, ...] = ()
    stop_at_eot: bool = True

    def __post_init__(self):
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature >= 0, "must be >= 0 (0 means greedy)"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 means no top-k filtering)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be > 0 (1 means off)"),
            ("num_return_sequences", self.num_return_sequences >= 1, "must be >= 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise GenerationError(f"{name} = {getattr(self, name)!r} {rule}.")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))


def draw_uniforms(seed: int, batch: int, steps: int):
    """The uniform numbers `(B, steps)` a generation with `seed` samples with (TensorFlow's
    stateless Philox generator, the same in Python and in an exported SavedModel)."""
    return tf.random.stateless_uniform([batch, steps], seed=tf.stack([seed, 0]), dtype=tf.float32)


@dataclasses.dataclass(frozen=True)
class RowSettings:
    """Per-row sampling settings of a batch, each `(B,)`.

    `max_new` counts the tokens a row may generate; `stop_at_eot` ends a row at `<|endoftext|>`.
    """

    temperature: tf.Tensor
    top_k: tf.Tensor
    top_p: tf.Tensor
    penalty: tf.Tensor
    max_new: tf.Tensor
    stop_at_eot: tf.Tensor

    @classmethod
    def columns(cls, configs: Sequence[SamplingConfig], max_new=None) -> Tuple[np.ndarray, ...]:
        """The settings of one row per config, as numpy columns in field order (`max_new`: each
        row's token limit, when not its config's)."""
        if max_new is None:
            max_new = [c.max_new_tokens for c in configs]
        return (np.array([c.temperature for c in configs], np.float32), np.array([c.top_k for c in configs], np.int32),
                np.array([c.top_p for c in configs], np.float32),
                np.array([c.repetition_penalty for c in configs], np.float32), np.asarray(max_new, np.int32),
                np.array([c.stop_at_eot for c in configs], bool))

    @classmethod
    def of(cls, configs: Sequence[SamplingConfig]) -> "RowSettings":
        return cls(*(tf.constant(c) for c in cls.columns(configs)))

    def choose(self, logits, seen, u):
        return choose(logits, seen, self.temperature, self.top_k, self.top_p, self.penalty, u)


def choose(logits, seen, temperature, top_k, top_p, penalty, u):
    """Next ids `(B,)` from float32 logits `(B, V)`.

    Args:
        logits: `(B, V)` float32.
        seen: `(B, V)` 1.0 where a token is already in the row's sequence (repetition penalty), or
            None when the caller applied the penalty itself (`penalise`).
        temperature, top_k, top_p, penalty: `(B,)` or scalars (see `SamplingConfig`).
        u: `(B,)` uniform numbers in [0, 1), one per row.
    """
    b = tf.shape(logits)[0]
    temperature, top_k, top_p, penalty = (tf.broadcast_to(v, [b]) for v in (temperature, top_k, top_p, penalty))
    if seen is not None:
        logits = tf.cond(tf.reduce_any(penalty != 1.0), lambda: penalise(logits, seen, penalty), lambda: logits)
    sampling = temperature > 0
    greedy = tf.cond(tf.reduce_any(tf.logical_not(sampling)), lambda: argmax(logits), lambda: tf.zeros([b], tf.int32))

    def sample():
        scaled = logits / tf.maximum(temperature, 1e-6)[:, None]
        return _sample(scaled, top_k, top_p, u)

    sampled = tf.cond(tf.reduce_any(sampling), sample, lambda: greedy)
    return tf.ensure_shape(tf.where(sampling, sampled, greedy), logits.shape[:1])


def penalise(logits, seen, penalty):
    """The repetition penalty (CTRL style): a seen token's logit divided by the row's penalty
    `(B,)` when positive, multiplied when negative."""
    pen = penalty[:, None]
    return tf.where(seen > 0, tf.where(logits > 0, logits / pen, logits * pen), logits)


def argmax(x):
    """`tf.argmax` over the last axis (the lowest id among ties) in two vectorised reductions
    (XLA's CPU argmax, a reduction over (value, index) pairs, is about twice as slow)."""
    ids = tf.range(tf.shape(x)[-1])
    return tf.reduce_min(tf.where(x >= tf.reduce_max(x, -1, keepdims=True), ids, tf.int32.max), -1)


def _sample(x, top_k, top_p, u):
    """Samples rows of scaled logits `x` `(B, V)`; each row takes its exact path (module docstring)."""
    vocab = x.shape[-1]
    top_k = tf.where(top_k >= vocab, 0, top_k)  # a top-k of the whole vocabulary is no top-k
    fast_id, fast_ok = _candidate_choice(x, top_k, top_p, u)
    plain = (top_k <= 0) & (top_p >= 1.0)
    cut = tf.logical_not(fast_ok | plain)
    out = tf.where(fast_ok, fast_id, 0)
    out = tf.where(plain, tf.cond(tf.reduce_any(plain), lambda: _inverse_cdf(x, u), lambda: out), out)
    return tf.where(cut, tf.cond(tf.reduce_any(cut), lambda: _inverse_cdf(_bisection_mask(x, top_k, top_p), u),
                                 lambda: out), out)


def top_candidates(x, k: int = CANDIDATES, block: int = BLOCK):
    """`(values, ids)`, each `(B, k)`: the k largest entries of each row of `x` `(B, V)`,
    descending, by a two-stage top-k.

    Every entry of the k largest lies in one of the k blocks of `block` ids with the largest
    maxima (a block whose maximum is below k other blocks' maxima has k larger entries elsewhere),
    or in the last, shorter block, so the second stage looks at about `k * block` entries instead
    of V."""
    b, vocab = tf.shape(x)[0], x.shape[-1]
    n_full = vocab // block
    if n_full <= k:  # a small vocabulary: one stage
        return _top_k(x, min(k, vocab))
    # Sliced (not padded) and materialised: a gather of blocks that XLA fuses with a padding
    # computes each entry apart (ten times slower on CPUs than copying whole blocks).
    blocks = _barrier(tf.reshape(x[:, :n_full * block], [b, n_full, block]))[0]
    _, chosen = _top_k(tf.reduce_max(blocks, -1), k)  # (B, k) block numbers
    entries = tf.concat([tf.reshape(tf.gather(blocks, chosen, batch_dims=1), [b, k * block]),
                         x[:, n_full * block:]], -1)  # the chosen blocks, then the last, shorter one
    vals, where = _top_k(entries, k)
    in_blocks = tf.gather(chosen, tf.minimum(where // block, k - 1), batch_dims=1) * block + where % block
    return vals, tf.where(where < k * block, in_blocks, n_full * block + where - k * block)


def _top_k(x, k: int):
    """`tf.math.top_k`, kept by XLA as a partial sort. Without the barrier, XLA's simplifier folds a
    slice of the result (`vals[:, 39]`) into the sort, which then no longer matches its top-k
    pattern and runs as a full sort of every row (40 times slower on CPUs)."""
    return _barrier(*tf.math.top_k(x, k))


_plain = threading.local()


@contextlib.contextmanager
def without_xla_ops():
    """Traces the sampler with no XLA-only op (its optimisation barriers), for graphs that run
    without XLA: the exported SavedModel, which a serving system may run without XLA's kernels."""
    _plain.on = True
    try:
        yield
    finally:
        _plain.on = False


def _barrier(*tensors):
    """XLA's optimisation barrier (the tensors are computed once, as they are), when tracing for XLA."""
    if getattr(_plain, "on", False):
        return tensors
    return tuple(xla.optimization_barrier(*tensors))


def _candidate_choice(x, top_k, top_p, u):
    """The candidate path: `(ids (B,), exact (B,))`; `exact` is False where a row's cut may reach
    outside the `CANDIDATES` largest logits (its id is then not used)."""
    vals, ids = top_candidates(x, min(CANDIDATES + 1, x.shape[-1]))
    complete = vals.shape[-1] <= CANDIDATES  # a vocabulary of at most CANDIDATES ids
    outside = tf.fill(tf.shape(vals)[:1], float("-inf")) if complete else vals[:, CANDIDATES]
    vals, ids = vals[:, :CANDIDATES], ids[:, :CANDIDATES]
    k_max = vals.shape[-1]
    has_k = top_k > 0
    kth = tf.gather(vals, tf.clip_by_value(top_k - 1, 0, k_max - 1), batch_dims=1)
    keep = tf.where(has_k[:, None], vals >= kth[:, None], True)
    # Top-p sees the probabilities renormalised over what top-k keeps; without top-k, the whole
    # vocabulary's (one more pass, only when a row asks for top-p alone).
    nucleus_alone = tf.logical_not(has_k) & (top_p < 1.0)
    log_total = tf.where(has_k, tf.reduce_logsumexp(tf.where(keep, vals, float("-inf")), -1),
                         tf.cond(tf.reduce_any(nucleus_alone), lambda: tf.reduce_logsumexp(x, -1),
                                 lambda: tf.zeros_like(outside)))
    probs = tf.where(keep, tf.exp(vals - log_total[:, None]), 0.0)
    # The nucleus: tokens up to the first whose cumulative probability reaches top_p (and ties).
    in_nucleus = (tf.cumsum(probs, axis=-1, exclusive=True) < top_p[:, None]) | (top_p[:, None] >= 1.0)
    cut = tf.reduce_min(tf.where(in_nucleus & keep, vals, float("inf")), -1)
    # Exact when no entry left out ties with or passes the cut, and, for a nucleus alone, when
    # the candidates hold top_p of the probability.
    exact = (has_k & (top_k <= k_max)) | (nucleus_alone & (tf.reduce_sum(probs, -1) >= top_p))
    exact &= cut > outside
    # The draw: inverse CDF over the kept candidates, most probable first.
    keep &= vals >= cut[:, None]
    cdf = tf.cumsum(tf.where(keep, probs, 0.0), axis=-1)
    index = tf.reduce_sum(tf.cast(cdf <= u[:, None] * cdf[:, -1:], tf.int32), -1)
    index = tf.minimum(index, tf.reduce_max(tf.where(keep, tf.range(k_max)[None, :], 0), -1))  # rounding
    return tf.gather(ids, index, batch_dims=1), exact


def _inverse_cdf(x, u, block: int = CDF_BLOCK):
    """Samples `softmax(x)` `(B, V)` (entries of -inf excluded) by inverse CDF in id order: the
    first id whose cumulative probability exceeds `u * total`, found in two levels (the block of
    `block` ids, then the id inside it), so no cumulative sum runs over the whole vocabulary. Two
    reads of `x` (its maximum; exponentials summed by block), and nothing of its size written."""
    b, vocab = tf.shape(x)[0], x.shape[-1]
    n_full = vocab // block
    e = tf.exp(x - tf.reduce_max(x, -1, keepdims=True))
    sums = [tf.reduce_sum(tf.reshape(e[:, :n_full * block], [b, n_full, block]), -1)]
    if vocab % block:  # the last, shorter block (slicing, not padding: XLA fuses a slice into the sums)
        sums.append(tf.reduce_sum(e[:, n_full * block:], -1, keepdims=True))
    block_cdf = tf.cumsum(tf.concat(sums, -1), axis=-1)  # (B, n)
    target = u * block_cdf[:, -1]
    chosen = tf.minimum(tf.reduce_sum(tf.cast(block_cdf <= target[:, None], tf.int32), -1), block_cdf.shape[-1] - 1)
    before = tf.where(chosen > 0, tf.gather(block_cdf, tf.maximum(chosen - 1, 0), batch_dims=1), 0.0)
    ids = chosen[:, None] * block + tf.range(block)[None, :]  # (B, block): the chosen block's ids
    inside = tf.where(ids < vocab, tf.gather(e, tf.minimum(ids, vocab - 1), batch_dims=1), 0.0)
    cdf = tf.cumsum(inside, axis=-1)
    offset = tf.reduce_sum(tf.cast(cdf <= (target - before)[:, None], tf.int32), -1)
    last_positive = tf.reduce_max(tf.where(inside > 0, tf.range(block)[None, :], 0), -1)  # rounding at the end
    return chosen * block + tf.minimum(offset, last_positive)


def _sortable_keys(x):
    """int32 keys with the order of the float32 values `x` (flip the magnitude bits of negatives)."""
    bits = tf.bitcast(x, tf.int32)
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.int32.max), bits)


def _largest_key_where(keys, holds):
    """Per row, the largest int32 key `t` for which `holds(t)` (monotone: true up to some key, false
    after), by a 33-step bisection over the key range."""
    lo = tf.fill(tf.shape(keys)[:1], tf.constant(-(2**31), tf.int64))  # holds(lo) for every row
    hi = tf.fill(tf.shape(keys)[:1], tf.constant(2**31, tf.int64))  # holds(hi) for no row

    def halve(lo, hi):
        mid = lo + (hi - lo) // 2
        ok = holds(tf.cast(mid, tf.int32))
        return tf.where(ok, mid, lo), tf.where(ok, hi, mid)

    lo, _ = tf.while_loop(lambda lo, hi: True, halve, (lo, hi), maximum_iterations=33)
    return tf.cast(lo, tf.int32)


def _bisection_mask(x, top_k, top_p):
    """`x` with -inf outside each row's top-k and then top-p cut, found by bisection (any k)."""
    vocab, neg = tf.shape(x)[-1], float("-inf")
    keys = _sortable_keys(x)
    k = tf.minimum(top_k, vocab)
    kth = _largest_key_where(keys, lambda t: tf.reduce_sum(tf.cast(keys >= t[:, None], tf.int32), -1) >= k)
    x = tf.where((keys >= kth[:, None]) | (top_k[:, None] <= 0), x, neg)
    probs = tf.nn.softmax(x, axis=-1)
    cut = _largest_key_where(keys, lambda t: tf.reduce_sum(tf.where(keys >= t[:, None], probs, 0.0), -1) >= top_p)
    return tf.where((keys >= cut[:, None]) | (top_p[:, None] >= 1.0), x, neg)
