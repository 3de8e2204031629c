import keras
import numpy as np
import pytest

from tfx_gpt2.config import GPT2Config
from tfx_gpt2.model.generate import GenerationError, generate_ids, generate_text, sample_next
from tfx_gpt2.model.gpt2 import GPT2


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    return GPT2(GPT2Config(n_vocab=50257, n_ctx=8, n_embd=16, n_layer=1, n_head=2))


def test_greedy_is_argmax_of_full_forward(model):
    prompt = [464, 3290]
    new = generate_ids(model, prompt, max_new_tokens=3, temperature=0)
    ids = list(prompt)
    for _ in range(3):
        ids.append(int(np.argmax(np.asarray(model(np.array([ids], "int32")))[0, -1])))
    assert new == ids[2:]


def test_context_is_cropped_to_n_ctx(model):
    new = generate_ids(model, list(range(20)), max_new_tokens=2, temperature=0)
    assert len(new) == 2


def test_seeded_sampling_is_reproducible(model, tokenizer):
    a = generate_text(model, tokenizer, ["The"], max_new_tokens=5, temperature=1.0, top_k=10, seed=3)
    b = generate_text(model, tokenizer, ["The"], max_new_tokens=5, temperature=1.0, top_k=10, seed=3)
    assert a == b


def test_top_k_restricts_choices():
    logits = np.array([0.0, 5.0, 4.0, -1.0])
    rng = np.random.default_rng(0)
    picks = {sample_next(logits, 1.0, 2, rng) for _ in range(200)}
    assert picks == {1, 2}


def test_stop_id_ends_generation(model):
    first = generate_ids(model, [1, 2], 1, temperature=0)[0]
    assert generate_ids(model, [1, 2], 5, temperature=0, stop_id=first) == []


@pytest.mark.parametrize("kwargs, field", [
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"temperature": -0.5}, "temperature"), ({"top_k": -3}, "top_k"),
])
def test_bad_settings_are_named(model, kwargs, field):
    args = {"max_new_tokens": 2, "temperature": 1.0, "top_k": 0, **kwargs}
    with pytest.raises(GenerationError, match=field):
        generate_ids(model, [1], **args)
