"""The blessing decision (no TFX): a candidate's eval perplexity against the threshold, the
unigram baseline and the registry's champion scored on the same eval blocks.

The evaluator decides with it; the pusher decides again with it when the champion moved after
the evaluation (`decide_again`)."""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Dict, Optional, Tuple

from tfx_gpt2.config.pipeline import check_min_improvement
from tfx_gpt2.model.checkpoints import load_model
from tfx_gpt2.progress import get_logger
from tfx_gpt2.registry.champion import download_champion, load_model_with_base
from tfx_gpt2.text.blocks import block_dataset
from tfx_gpt2.text.bpe import BPETokenizer
from tfx_gpt2.training.evaluation import evaluate
from tfx_gpt2.training.perplexity import perplexity

logger = get_logger("tfx_gpt2.evaluator")


@dataclasses.dataclass(frozen=True)
class ChampionScore:
    """The registry's champion scored on the candidate's eval blocks.

    Attributes:
        version: the version holding `champion` (0: none does).
        eval_perplexity: its perplexity on the blocks (None when there is no champion, or it
            cannot be scored on them).
        not_comparable: why it cannot be scored on these blocks ('' when it could).
    """

    version: int = 0
    eval_perplexity: Optional[float] = None
    not_comparable: str = ""


def score_champion(tracking_uri: str, name: str, candidate, candidate_encoder, eval_files,
                   batch_size: int) -> ChampionScore:
    """The champion of `name` scored on `eval_files`; see `ChampionScore`."""
    with tempfile.TemporaryDirectory() as tmp:
        champion = download_champion(tracking_uri, name, tmp)
        if champion is None:
            logger.info("no version of %s holds the champion alias: the threshold alone decides", name)
            return ChampionScore()
        model = load_model(champion.model_dir)
        same_vocab = BPETokenizer.from_dir(champion.model_dir).encoder == candidate_encoder
        n_ctx = candidate.config.n_ctx
        if model.config.n_vocab != candidate.config.n_vocab or not same_vocab:
            return ChampionScore(champion.version, not_comparable=(
                f"the champion (version {champion.version}) has another vocabulary ({model.config.n_vocab} "
                f"tokens, this model {candidate.config.n_vocab}): its perplexity is over other tokens and "
                "cannot be compared; to replace it anyway, run with compare_with_champion=False"))
        if model.config.n_ctx < n_ctx:
            return ChampionScore(champion.version, not_comparable=(
                f"the champion (version {champion.version}) has a context of {model.config.n_ctx} tokens, "
                f"shorter than the blocks of {n_ctx}; to replace it anyway, run with compare_with_champion=False"))
        loss, _ = evaluate(model, block_dataset(eval_files, n_ctx + 1, batch_size, drop_remainder=False))
    ppl = perplexity(loss)
    logger.info("champion: version %d, eval perplexity %.3f on the same blocks", champion.version, ppl)
    return ChampionScore(champion.version, ppl)


def decision_params(exec_properties) -> Dict[str, float]:
    """The blessing rule's settings, kept with the figures (the pusher decides again with them
    when the champion moved after this evaluation)."""
    return {"perplexity_threshold": float(exec_properties["perplexity_threshold"]),
            "min_improvement": float(exec_properties.get("min_improvement") or 0.0),
            "beat_baseline": int(exec_properties.get("beat_baseline", 1))}


def decide(metrics: Dict[str, float], champion: ChampionScore):
    """(blessed, reason) for the figures in `metrics` (from `score_splits` and `decision_params`)
    against `champion`."""
    baseline = metrics["eval_unigram_perplexity"] if int(metrics.get("beat_baseline", 1)) else None
    blessed, reason = blessing_decision(metrics["eval_perplexity"], float(metrics["perplexity_threshold"]),
                                        champion.eval_perplexity, float(metrics.get("min_improvement", 0.0)),
                                        baseline_perplexity=baseline)
    if champion.eval_perplexity is not None:
        reason += f" (champion: version {champion.version})"
    return blessed, reason


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


def decide_again(metrics: Dict[str, float], tracking_uri: str, name: str, model_dir: str, eval_files,
                 batch_size: int = 8):
    """(blessed, reason) for the model in `model_dir` against the current champion of `name`, with
    the evaluator's `metrics` and rule (`decision_params`), scored on the same `eval_files`."""
    candidate = load_model_with_base(model_dir, tracking_uri)
    champion = score_champion(tracking_uri, name, candidate, BPETokenizer.from_dir(model_dir).encoder, eval_files,
                              batch_size)
    if champion.not_comparable:
        return False, champion.not_comparable
    return decide(metrics, champion)
