"""Scoring GPT-2 on packed token blocks (plain TensorFlow, no TFX).

Used while training (a subset of the eval split every `eval_every` steps) and by the
PerplexityEvaluator (every block of the eval and test splits, and the champion on the same blocks).
"""

from __future__ import annotations

import weakref
from typing import Optional, Sequence, Tuple

import tensorflow as tf

from tfx_gpt2.config.model import GPT2Config
from tfx_gpt2.model.gpt2 import GPT2, scored_token_loss
from tfx_gpt2.text.blocks import block_length_of, compression_of


class EvaluationError(RuntimeError):
    """The blocks cannot be scored: they do not fit the model, or there are none."""


def check_block_length(files: Sequence[str], config: GPT2Config, what: str) -> None:
    """Raises EvaluationError unless the blocks in `files` are `n_ctx + 1` tokens long."""
    got = block_length_of(files)
    if got != config.n_ctx + 1:
        raise EvaluationError(
            f"the {what} blocks hold {got} tokens but the model takes n_ctx + 1 = {config.n_ctx + 1}; "
            f"encode the data with block length {config.n_ctx + 1} (n_ctx = {config.n_ctx}) or choose "
            f"a model with n_ctx = {got - 1}."
        )


def count_blocks(files: Sequence[str]) -> int:
    """Blocks in the block files (a pass over the records, without parsing them)."""
    paths = sorted(f for p in files for f in tf.io.gfile.glob(p))
    return sum(1 for path in paths for _ in tf.data.TFRecordDataset(path, compression_type=compression_of([path])))


# One traced loss function per model, reused by every evaluation of that model (a new tf.function
# per call would trace the whole model again each time). Keys are held weakly: no model is kept alive.
_EVAL_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _batch_loss_fn(model: GPT2):
    fn = _EVAL_FUNCTIONS.get(model)
    if fn is None:
        ref = weakref.ref(model)

        @tf.function(reduce_retracing=True, autograph=False)
        def fn(x, y):  # x, y: (B, T) -> summed loss over the B*T targets, and their count
            return tf.reduce_sum(scored_token_loss(ref()(x, training=False), y)), tf.size(y)

        _EVAL_FUNCTIONS[model] = fn
    return fn


def evaluate(model: GPT2, dataset: tf.data.Dataset, max_batches: Optional[int] = None) -> Tuple[float, int]:
    """Mean next-token loss (nats) over the targets of `dataset` (its first `max_batches` batches
    if given), and the number of targets.

    Raises:
        EvaluationError: the dataset holds no block.
    """
    batch_loss = _batch_loss_fn(model)
    total, count = 0.0, 0
    for i, (x, y) in enumerate(dataset):
        if max_batches is not None and i >= max_batches:
            break
        s, n = batch_loss(x, y)
        total += float(s)
        count += int(n)
    if count == 0:
        raise EvaluationError("the evaluation data holds no block; the eval split is empty or too small.")
    return total / count, count
