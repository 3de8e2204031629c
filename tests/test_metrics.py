import math

import numpy as np
import pytest

from tfx_gpt2.metrics import perplexity, unigram_perplexity


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
