import keras
import numpy as np
import pytest
from reference_models import hf_reference_model, write_hf_checkpoint

from tfx_gpt2.config.model import GPT2Config
from tfx_gpt2.model.checkpoints import load_checkpoint
from tfx_gpt2.model.generate import GenerationError, Generator, SamplingConfig, cut_at_stop
from tfx_gpt2.model.gpt2 import GPT2

PROMPTS = [[5, 9, 2, 7, 1, 3], [4], [8, 8, 6]]
GREEDY = SamplingConfig(max_new_tokens=10, temperature=0.0, stop_at_eot=False)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    return GPT2(GPT2Config(n_vocab=64, n_ctx=32, n_embd=32, n_layer=2, n_head=4))


@pytest.fixture(scope="module")
def gen(model):
    return Generator(model)


def reference_greedy(model, prompt, n):
    """Greedy decoding by running the whole, unpadded sequence each step."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(np.asarray(model(np.array([ids], "int32")))[0, -1])))
    return ids[len(prompt):]


def test_cached_greedy_equals_uncached_and_reference(model, gen):
    cached = gen.generate_ids(PROMPTS, GREEDY, use_cache=True)
    uncached = gen.generate_ids(PROMPTS, GREEDY, use_cache=False)
    assert cached == uncached
    assert cached == [reference_greedy(model, p, 10) for p in PROMPTS]


def test_greedy_matches_hugging_face_generate(tmp_path):
    write_hf_checkpoint(str(tmp_path), n_ctx=64, n_embd=32, n_layer=2, n_head=4, seed=3)
    ours, tok = load_checkpoint(str(tmp_path))
    prompt = tok.encode("The quick brown fox")
    got = Generator(ours, tok).generate_ids([prompt], SamplingConfig(max_new_tokens=12, temperature=0,
                                                                      stop_at_eot=False))[0]
    hf = hf_reference_model(str(tmp_path))
    out = hf.generate(np.array([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=50256,
                      eos_token_id=None)
    assert got == out.numpy()[0, len(prompt):].tolist()


def test_seeded_sampling_is_reproducible(gen):
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, seed=3, stop_at_eot=False)
    a = gen.generate_ids(PROMPTS, cfg)
    assert a == gen.generate_ids(PROMPTS, cfg)
    assert a == gen.generate_ids(PROMPTS, cfg, use_cache=False)
    assert a != gen.generate_ids(PROMPTS, SamplingConfig(**{**cfg.__dict__, "seed": 4}))


def test_top_k_1_and_tiny_top_p_are_greedy(gen):
    greedy = gen.generate_ids(PROMPTS, GREEDY)
    for cfg in (SamplingConfig(max_new_tokens=10, top_k=1, seed=0, stop_at_eot=False),
                SamplingConfig(max_new_tokens=10, top_p=1e-6, seed=0, stop_at_eot=False)):
        assert gen.generate_ids(PROMPTS, cfg) == greedy


def test_repetition_penalty_avoids_seen_tokens(gen):
    cfg = SamplingConfig(max_new_tokens=20, temperature=0, repetition_penalty=1e9, stop_at_eot=False)
    for prompt, new in zip(PROMPTS, gen.generate_ids(PROMPTS, cfg)):
        seq = prompt + new
        assert len(set(new)) == len(new) and not set(new) & set(prompt), seq


def test_several_sequences_per_prompt(gen):
    out = gen.generate_ids(PROMPTS[:2], SamplingConfig(max_new_tokens=4, num_return_sequences=3, seed=1,
                                                        stop_at_eot=False))
    assert len(out) == 6 and all(len(o) == 4 for o in out)


def test_stops_at_end_of_text(model):
    first = reference_greedy(model, PROMPTS[0], 10)
    gen = Generator(model)
    gen.eot_id = first[-1]
    cut = first.index(first[-1])
    assert gen.generate_ids([PROMPTS[0]], SamplingConfig(max_new_tokens=10, temperature=0)) == [first[:cut]]


def test_text_generation_and_stop_strings(tokenizer):
    keras.utils.set_random_seed(0)
    gen = Generator(GPT2(GPT2Config(n_ctx=32, n_embd=16, n_layer=1, n_head=2)), tokenizer)
    texts = gen.generate(["Hello", "A much longer prompt than the first"], SamplingConfig(max_new_tokens=5, seed=0))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert cut_at_stop("abc\n\ndef", ["\n\n", "zz"]) == "abc"


def test_long_prompt_keeps_its_end(gen, model):
    long = list(range(1, 60))
    out = gen.generate_ids([long], GREEDY)
    assert out == [reference_greedy(model, long[-(32 - 10):], 10)]


@pytest.mark.parametrize("field, value", [
    ("max_new_tokens", 0), ("temperature", -0.5), ("top_k", -3), ("top_p", 0.0), ("top_p", 1.5),
    ("repetition_penalty", 0.0), ("num_return_sequences", 0),
])
def test_bad_settings_are_named(field, value):
    with pytest.raises(GenerationError, match=f"{field} = {value}"):
        SamplingConfig(**{field: value})


def test_max_new_tokens_must_leave_room(gen):
    with pytest.raises(GenerationError, match="at most 31"):
        gen.generate_ids([[1]], SamplingConfig(max_new_tokens=32))
