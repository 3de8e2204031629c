"""Language-model metrics: perplexity, and the unigram baseline a trained model must beat."""

from __future__ import annotations

import math

import numpy as np


def perplexity(mean_loss_nats: float) -> float:
    """exp(mean cross-entropy per token); `inf` when the loss overflows."""
    try:
        return math.exp(mean_loss_nats)
    except OverflowError:
        return float("inf")


def unigram_perplexity(train_counts: np.ndarray, eval_counts: np.ndarray) -> float:
    """Perplexity on the eval tokens of a unigram (token frequency) model fitted on train tokens.

    The model is p(id) = (count_train(id) + 1) / (N_train + V) (add-one smoothing, so ids unseen in
    training keep a non-zero probability). It ignores all context, so any language model that
    learned something from its context must score below it.

    Args:
        train_counts: counts per id of the train split's targets, shape (V,).
        eval_counts: counts per id of the eval split's targets, shape (V,).
    """
    train_counts = np.asarray(train_counts, dtype=np.float64)
    eval_counts = np.asarray(eval_counts, dtype=np.float64)
    if train_counts.shape != eval_counts.shape:
        raise ValueError(f"count vectors differ in size: {train_counts.shape} vs {eval_counts.shape}.")
    n_eval = eval_counts.sum()
    if n_eval == 0:
        raise ValueError("the eval split has no tokens; the unigram baseline needs some.")
    log_p = np.log(train_counts + 1.0) - math.log(train_counts.sum() + train_counts.size)
    return perplexity(-float((eval_counts * log_p).sum() / n_eval))


