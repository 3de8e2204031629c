import math

import numpy as np
import pytest

from tfx_gpt2.training.perplexity import perplexity, unigram_perplexity


def test_unigram_perplexity_exact():
    train = np.array([3, 1, 0])  # p = (4, 2, 1) / 7 with add-one smoothing
    eval_ = np.array([1, 1, 0])
    expected = math.exp(-(math.log(4 / 7) + math.log(2 / 7)) / 2)
    assert unigram_perplexity(train, eval_) == pytest.approx(expected)


def test_uniform_model_perplexity_is_vocab_size():
    assert unigram_perplexity(np.zeros(10), np.ones(10)) == pytest.approx(10)


def test_empty_eval_is_an_error():
    with pytest.raises(ValueError, match="no tokens"):
        unigram_perplexity(np.ones(3), np.zeros(3))


def test_perplexity_overflow():
    assert perplexity(1e6) == float("inf")
    assert perplexity(0.0) == 1.0


def test_blessing_decision():
    from tfx_gpt2.registry.blessing import blessing_decision

    assert blessing_decision(50.0, 100.0)[0]  # the first model: the threshold alone
    blessed, reason = blessing_decision(150.0, 100.0, champion_perplexity=200.0)
    assert not blessed and "threshold" in reason
    assert blessing_decision(49.0, 100.0, champion_perplexity=50.0)[0]
    blessed, reason = blessing_decision(50.0, 100.0, champion_perplexity=50.0)
    assert not blessed and "not below the champion's 50.000" in reason
    # min_improvement: 2% lower than 50 is 49.
    assert not blessing_decision(49.5, 100.0, champion_perplexity=50.0, min_improvement=0.02)[0]
    assert blessing_decision(48.9, 100.0, champion_perplexity=50.0, min_improvement=0.02)[0]
    with pytest.raises(ValueError, match="min_improvement = 1.5"):
        blessing_decision(1.0, 2.0, 1.0, min_improvement=1.5)
    # The unigram baseline on the same tokens: the model (554.73 against 533.29) is refused.
    blessed, reason = blessing_decision(554.73, 1e9, baseline_perplexity=533.29)
    assert not blessed and "not below the unigram baseline's 533.290" in reason and "beat_baseline=False" in reason
    blessed, reason = blessing_decision(500.0, 1e9, baseline_perplexity=533.29)
    assert blessed and "< unigram baseline 533.290" in reason
    assert not blessing_decision(500.0, 1e9, champion_perplexity=400.0, baseline_perplexity=533.29)[0]


def _figures(gate, **values):
    from tfx_gpt2.registry.blessing import gate_json

    return {"eval_perplexity": 40.0, "eval_unigram_perplexity": 500.0, "perplexity_threshold": 1e9,
            "beat_baseline": 1, "gate": gate_json(gate), **values}


def test_the_gate_compares_every_metric_with_the_champion_on_the_same_data():
    from tfx_gpt2.config.pipeline import GateMetric
    from tfx_gpt2.registry.blessing import ChampionScore, decide

    champion = ChampionScore(3, 50.0, metrics={"next_word_accuracy": 0.30, "task_t_acc": 0.5})
    gate = (GateMetric("eval_perplexity"), GateMetric("next_word_accuracy", "higher"))
    blessed, reason = decide(_figures(gate, next_word_accuracy=0.31), champion)
    assert blessed and "next_word_accuracy 0.31 is above the champion's 0.3 on the same data" in reason
    assert reason.endswith("(champion: version 3)")
    # Lower perplexity, lower accuracy: refused, and the reason names the metric.
    blessed, reason = decide(_figures(gate, next_word_accuracy=0.29), champion)
    assert not blessed and reason.startswith("next_word_accuracy 0.29 is not above the champion's 0.3")
    # A tolerance: accuracy may be up to 5% worse (0.285), not more.
    tolerant = (GateMetric("eval_perplexity"), GateMetric("next_word_accuracy", "higher", -0.05))
    assert decide(_figures(tolerant, next_word_accuracy=0.29), champion)[0]
    assert not decide(_figures(tolerant, next_word_accuracy=0.28), champion)[0]
    # A margin: 10% better than 0.5 is above 0.55.
    margin = (GateMetric("task_t_acc", "higher", 0.1),)
    assert not decide(_figures(margin, eval_perplexity=60.0, task_t_acc=0.55), champion)[0]
    blessed, reason = decide(_figures(margin, eval_perplexity=60.0, task_t_acc=0.56), champion)
    assert blessed and "no champion to beat" not in reason  # perplexity is not gated: 60 > 50 is allowed
    # Perplexity with a tolerance goes through the same comparison.
    assert decide(_figures((GateMetric("eval_perplexity", "lower", -0.1),), eval_perplexity=54.0), champion)[0]
    assert not decide(_figures((GateMetric("eval_perplexity", "lower", -0.1),), eval_perplexity=56.0), champion)[0]
    # The threshold and the baseline still hold first.
    assert "threshold" in decide(_figures(gate, eval_perplexity=60.0, perplexity_threshold=50.0), champion)[1]
    # A metric that was not measured is a refusal that says so, not a pass.
    blessed, reason = decide(_figures(gate), champion)
    assert not blessed and "next_word_accuracy was not measured for this model" in reason
    blessed, reason = decide(_figures((GateMetric("sample_distinct_2", "higher"),), sample_distinct_2=0.5), champion)
    assert not blessed and "not measured for the champion" in reason
    # No champion: the threshold and the baseline alone.
    blessed, reason = decide(_figures(gate, next_word_accuracy=0.0), ChampionScore())
    assert blessed and "no champion to beat" in reason


def test_an_evaluation_from_before_gates_decides_on_perplexity():
    from tfx_gpt2.registry.blessing import ChampionScore, decide, gate_of

    old = {"eval_perplexity": 49.5, "eval_unigram_perplexity": 500.0, "perplexity_threshold": 1e9,
           "beat_baseline": 1, "min_improvement": 0.02}
    assert [(g.metric, g.margin) for g in gate_of(old)] == [("eval_perplexity", 0.02)]
    assert not decide(old, ChampionScore(1, 50.0))[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(metric=""), "must be a metric's name"),
    (dict(metric="x", direction="up"), "must be 'lower' or 'higher'"),
    (dict(metric="x", margin=1.5), "must be in \\(-1, 1\\)"),
])
def test_a_bad_gate_metric_is_named(kwargs, message):
    from tfx_gpt2.config.model import ConfigError
    from tfx_gpt2.config.pipeline import GateMetric

    with pytest.raises(ConfigError, match=message):
        GateMetric(**kwargs)
