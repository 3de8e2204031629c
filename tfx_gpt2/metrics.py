"""Language-model metrics: perplexity, and the unigram baseline a trained model must beat."""

from __future__ import annotations

import math
from typing import Optional, Tuple

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


def check_min_improvement(min_improvement: float) -> None:
    """Raises ValueError unless `min_improvement` is a fraction in [0, 1)."""
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"min_improvement = {min_improvement} must be in [0, 1) (a fraction: 0.01 = 1% lower).")


def blessing_decision(
    perplexity: float,
    threshold: float,
    champion_perplexity: Optional[float] = None,
    min_improvement: float = 0.0,
    baseline_perplexity: Optional[float] = None,
) -> Tuple[bool, str]:
    """Whether a candidate model is blessed, and the reason in words.

    Blessed only if its perplexity is below `threshold`, below `baseline_perplexity` when given
    (the unigram baseline on the same tokens: a model that does not beat token frequencies learned
    nothing from context), and, when there is a champion (the model in production) scored on the
    same tokens, below `champion_perplexity * (1 - min_improvement)` (`min_improvement=0.01`: at
    least 1% lower). The first model is held to the threshold and the baseline.
    """
    check_min_improvement(min_improvement)
    if not perplexity < threshold:
        return False, f"eval perplexity {perplexity:.3f} >= threshold {threshold:g}"
    margin = f" less {min_improvement:.1%}" if min_improvement else ""
    if champion_perplexity is not None and not perplexity < champion_perplexity * (1.0 - min_improvement):
        return False, (f"eval perplexity {perplexity:.3f} is not below the champion's {champion_perplexity:.3f}{margin} "
                       "on the same tokens")
    if baseline_perplexity is not None and not perplexity < baseline_perplexity:
        return False, (f"eval perplexity {perplexity:.3f} is not below the unigram baseline's {baseline_perplexity:.3f} "
                       "on the same tokens: train longer or on more data (beat_baseline=False turns this off)")
    passed = f"eval perplexity {perplexity:.3f} < threshold {threshold:g}"
    if baseline_perplexity is not None:
        passed += f", < unigram baseline {baseline_perplexity:.3f}"
    if champion_perplexity is None:
        return True, f"{passed}; no champion to beat"
    return True, f"{passed} and < champion's {champion_perplexity:.3f}{margin} on the same tokens"
