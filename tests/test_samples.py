"""Sample quality: the figures on hand-made texts, the prompts taken from packed documents, and
seeded samples that are the same every time."""

import keras
import pytest

from tfx_gpt2.config.model import GPT2Config
from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.training.samples import OPENING_TOKENS, document_openings, generate_samples, sample_quality


def test_sample_quality_figures():
    figures = sample_quality(["a b c d a b c d", "e f"])
    # words a b c d a b c d e f: 6 distinct of 10; pairs: 7 in the first (4 distinct), 1 in the second.
    assert figures["sample_distinct_1"] == pytest.approx(6 / 10)
    assert figures["sample_distinct_2"] == pytest.approx(5 / 8)
    # 4-grams of the first: abcd bcda cdab dabc abcd -> one repeat of five; the second has none.
    assert figures["sample_repeated_4gram_share"] == pytest.approx(1 / 5)
    assert figures["sample_mean_words"] == 5.0 and figures["samples"] == 2
    assert sample_quality(["one two three four five"])["sample_repeated_4gram_share"] == 0.0
    assert sample_quality([""])["sample_distinct_1"] == 0.0


def test_openings_of_packed_documents():
    eot = 99
    n = OPENING_TOKENS
    doc1, doc2, doc3 = list(range(1, n + 3)), list(range(20, 20 + n - 2)), list(range(40, 40 + n + 1))
    stream = doc1 + [eot] + doc2 + [eot] + doc3
    blocks = [stream[i:i + 6] for i in range(0, len(stream) - 5, 5)]  # consecutive blocks share a token
    assert document_openings(blocks, eot, 5) == [doc1[:n], doc3[:n]]  # doc2 is shorter than an opening
    assert document_openings(blocks, eot, 1) == [doc1[:n]]


def test_seeded_samples_repeat(tokenizer):
    keras.utils.set_random_seed(0)
    model = GPT2(GPT2Config(n_vocab=tokenizer.vocab_size, n_ctx=64, n_embd=32, n_layer=1, n_head=2))
    prompts = [tokenizer.encode("The value of"), tokenizer.encode("A function")]
    first = generate_samples(model, tokenizer, prompts, max_new_tokens=12)
    assert first == generate_samples(model, tokenizer, prompts, max_new_tokens=12)
    assert [s["prompt"] for s in first] == ["The value of", "A function"] and all(s["text"] for s in first)
    assert first != generate_samples(model, tokenizer, prompts, max_new_tokens=12, seed=1)
