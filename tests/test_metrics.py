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
