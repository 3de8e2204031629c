"""The blessing decision (no TFX): a candidate's eval perplexity against the threshold and the
unigram baseline, and its gate metrics (`GateMetric`: eval perplexity by default) against the
registry's champion scored on the same data: the same eval blocks, and the same `QualityData`
(next-word requests, task items, sample prompts) for the other metrics.

The evaluator decides with it; the pusher decides again with it when the champion moved after
the evaluation (`decide_again`)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from typing import Dict, Optional, Sequence, Tuple

from tfx_gpt2.config.pipeline import PERPLEXITY, GateMetric, check_min_improvement
from tfx_gpt2.model.checkpoints import load_model
from tfx_gpt2.progress import get_logger
from tfx_gpt2.registry.champion import download_champion, load_model_with_base
from tfx_gpt2.text.blocks import block_dataset
from tfx_gpt2.text.bpe import BPETokenizer
from tfx_gpt2.training.evaluation import evaluate
from tfx_gpt2.training.perplexity import perplexity
from tfx_gpt2.training.quality import QualityData, measure

logger = get_logger("tfx_gpt2.evaluator")


@dataclasses.dataclass(frozen=True)
class ChampionScore:
    """The registry's champion scored on the candidate's eval blocks.

    Attributes:
        version: the version holding `champion` (0: none does).
        eval_perplexity: its perplexity on the blocks (None when there is no champion, or it
            cannot be scored on them).
        not_comparable: why it cannot be scored on these blocks ('' when it could).
        metrics: its other metrics on the same `QualityData` (when a gate metric needs them).
    """

    version: int = 0
    eval_perplexity: Optional[float] = None
    not_comparable: str = ""
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)

    def value(self, metric: str) -> Optional[float]:
        return self.eval_perplexity if metric == PERPLEXITY else self.metrics.get(metric)


def score_champion(tracking_uri: str, name: str, candidate, candidate_encoder, eval_files,
                   batch_size: int, quality: Optional[QualityData] = None) -> ChampionScore:
    """The champion of `name` scored on `eval_files`, and on `quality` when given; see `ChampionScore`."""
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
        metrics = measure(model, BPETokenizer.from_dir(champion.model_dir), quality)[0] if quality else {}
    ppl = perplexity(loss)
    logger.info("champion: version %d, eval perplexity %.3f on the same blocks%s", champion.version, ppl,
                "".join(f", {k} {v:.4g}" for k, v in sorted(metrics.items())))
    return ChampionScore(champion.version, ppl, metrics=metrics)


def decision_params(exec_properties) -> Dict[str, object]:
    """The blessing rule's settings, kept with the figures (the pusher decides again with them
    when the champion moved after this evaluation); `gate` as JSON."""
    min_improvement = float(exec_properties.get("min_improvement") or 0.0)
    return {"perplexity_threshold": float(exec_properties["perplexity_threshold"]),
            "min_improvement": min_improvement,
            "beat_baseline": int(exec_properties.get("beat_baseline", 1)),
            "gate": exec_properties.get("gate") or gate_json((GateMetric(PERPLEXITY, "lower", min_improvement),))}


def gate_json(gate: Sequence[GateMetric]) -> str:
    return json.dumps([dataclasses.asdict(g) for g in gate])


def gate_of(metrics: Dict[str, object]) -> Tuple[GateMetric, ...]:
    """The gate kept in `metrics` (`decision_params`); an evaluation made before gates: perplexity."""
    if "gate" not in metrics:
        return (GateMetric(PERPLEXITY, "lower", float(metrics.get("min_improvement", 0.0))),)
    return tuple(GateMetric(**g) for g in json.loads(str(metrics["gate"])))


def needs_quality(gate: Sequence[GateMetric]) -> bool:
    """Whether the champion must be measured on `QualityData` for `gate`."""
    return any(g.metric != PERPLEXITY for g in gate)


def compare(gate: GateMetric, candidate: Optional[float], champion: Optional[float]) -> Tuple[bool, str]:
    """(passed, in words) of one gate metric against the champion's value on the same data."""
    for who, value in (("this model", candidate), ("the champion", champion)):
        if value is None:
            return False, (f"{gate.metric} was not measured for {who}, and the gate needs it: check the evaluator's "
                           "settings (task folder, next_word_documents, samples) and that its data has items")
    better = "below" if gate.direction == "lower" else "above"
    bound = champion * (1.0 - gate.margin if gate.direction == "lower" else 1.0 + gate.margin)
    strict = gate.margin >= 0.0
    if gate.direction == "lower":
        passed = candidate < bound if strict else candidate <= bound
    else:
        passed = candidate > bound if strict else candidate >= bound
    margin = (f" {'less' if gate.direction == 'lower' else 'plus'} {gate.margin:.1%}" if gate.margin > 0
              else f" with a tolerance of {-gate.margin:.1%}" if gate.margin < 0 else "")
    return passed, (f"{gate.metric} {candidate:.4g} {'is' if passed else 'is not'} {better} the champion's "
                    f"{champion:.4g}{margin} on the same data")


def decide(metrics: Dict[str, object], champion: ChampionScore):
    """(blessed, reason) for the figures in `metrics` (from the evaluator, with `decision_params`)
    against `champion`: the threshold and the baseline on perplexity, then each gate metric."""
    gate = gate_of(metrics)
    # Perplexity with a margin >= 0 goes by `blessing_decision`'s rule; any other gate metric after it.
    by_rule = next((g for g in gate if g.metric == PERPLEXITY and g.margin >= 0), None)
    baseline = metrics["eval_unigram_perplexity"] if int(metrics.get("beat_baseline", 1)) else None
    blessed, reason = blessing_decision(
        float(metrics[PERPLEXITY]), float(metrics["perplexity_threshold"]),
        champion.eval_perplexity if by_rule else None, by_rule.margin if by_rule else 0.0,
        baseline_perplexity=baseline, champion_elsewhere=champion.eval_perplexity is not None)
    if blessed and champion.eval_perplexity is not None:
        for g in (g for g in gate if g is not by_rule):
            passed, words = compare(g, _number(metrics.get(g.metric)), champion.value(g.metric))
            if not passed:
                blessed, reason = False, words
                break
            reason += f"; {words}"
    if champion.eval_perplexity is not None:
        reason += f" (champion: version {champion.version})"
    return blessed, reason


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def blessing_decision(
    perplexity: float,
    threshold: float,
    champion_perplexity: Optional[float] = None,
    min_improvement: float = 0.0,
    baseline_perplexity: Optional[float] = None,
    champion_elsewhere: bool = False,
) -> Tuple[bool, str]:
    """Whether a candidate model is blessed, and the reason in words.

    Blessed only if its perplexity is below `threshold`, below `baseline_perplexity` when given
    (the unigram baseline on the same tokens: a model that does not beat token frequencies learned
    nothing from context), and, when there is a champion (the model in production) scored on the
    same tokens, below `champion_perplexity * (1 - min_improvement)` (`min_improvement=0.01`: at
    least 1% lower). The first model is held to the threshold and the baseline.
    `champion_elsewhere`: there is a champion, compared on other metrics than perplexity.
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
        return True, passed if champion_elsewhere else f"{passed}; no champion to beat"
    return True, f"{passed} and < champion's {champion_perplexity:.3f}{margin} on the same tokens"


def decide_again(metrics: Dict[str, float], tracking_uri: str, name: str, model_dir: str, eval_files,
                 batch_size: int = 8, quality: Optional[QualityData] = None):
    """(blessed, reason) for the model in `model_dir` against the current champion of `name`, with
    the evaluator's `metrics` and rule (`decision_params`), scored on the same `eval_files` (and
    the same `quality` data, which the gate's other metrics need)."""
    candidate = load_model_with_base(model_dir, tracking_uri)
    champion = score_champion(tracking_uri, name, candidate, BPETokenizer.from_dir(model_dir).encoder, eval_files,
                              batch_size, quality if needs_quality(gate_of(metrics)) else None)
    if champion.not_comparable:
        return False, champion.not_comparable
    return decide(metrics, champion)
