"""The serving engine on a tiny random model: batching, per-row settings, bounded programs, stop
strings, cancellation, a bounded queue, and text that never splits a UTF-8 character."""

import threading

import keras
import pytest

from tfx_gpt2.config import GPT2Config
from tfx_gpt2.model.generate import Generator, SamplingConfig
from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.serving.engine import Engine, EngineConfig, QueueFull, Request, Row, TextStream, programs_expected

GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0, stop_at_eot=False)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(2)
    return GPT2(GPT2Config(n_ctx=32, n_embd=32, n_layer=2, n_head=2))


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    batches = []
    e = Engine(model, tokenizer, EngineConfig(max_batch_size=4, max_wait_ms=50, prefill_tokens=8),
               on_batch=batches.append)
    e.warm_up()
    e.batches = batches
    e.start()
    yield e
    e.stop()


class Collect:
    """A request's events, and a way to wait for its end."""

    def __init__(self, prompts, configs, tokenizer):
        self.events, self.finished = [], threading.Event()
        rows = [Row(tokenizer.encode(p), c) for p, c in zip(prompts, configs)]
        self.request = Request(rows, self.emit)

    def emit(self, event):
        self.events.append(event)
        if sum(e[0] == "done" for e in self.events) == len(self.request.rows):
            self.finished.set()

    def wait(self, timeout=60):
        assert self.finished.wait(timeout), self.events
        return self.request.rows


def run(engine, tokenizer, prompts, configs):
    calls = [Collect([p], [c], tokenizer) for p, c in zip(prompts, configs)]
    for c in calls:
        engine.submit(c.request)
    return [c.wait()[0] for c in calls]


def test_concurrent_requests_share_a_batch_and_match_the_generator(engine, model, tokenizer):
    prompts = ["Hello there", "A", "The quick brown fox jumps"]
    engine.batches.clear()
    rows = run(engine, tokenizer, prompts, [GREEDY] * 3)
    assert engine.batches == [3]  # three requests, one batch
    reference = Generator(model, tokenizer)
    for prompt, row in zip(prompts, rows):
        assert row.ids == reference.generate_ids([tokenizer.encode(prompt)], GREEDY)[0]
        assert row.text == tokenizer.decode(row.ids) and row.finish_reason == "length"


def test_each_row_keeps_its_own_settings_and_limit(engine, tokenizer):
    sampled = SamplingConfig(max_new_tokens=5, temperature=1.0, top_k=10, top_p=0.9, seed=7, stop_at_eot=False)
    short = SamplingConfig(max_new_tokens=2, temperature=0.0, stop_at_eot=False)
    alone = run(engine, tokenizer, ["Hi"], [sampled])[0].ids
    mixed = run(engine, tokenizer, ["Hi", "Hi", "Other words"], [sampled, short, GREEDY])
    assert mixed[0].ids == alone  # a seed gives the same text whatever it is batched with
    assert len(mixed[1].ids) == 2 and mixed[1].finish_reason == "length"
    assert len(mixed[2].ids) == 6


def test_programs_are_compiled_at_warm_up_and_stay_bounded(engine, tokenizer):
    expected = programs_expected(engine.config, engine.n_ctx)
    compiled = set(engine.programs)
    assert len(compiled) == expected["prefill"] + expected["decode"]
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    for n in range(1, 5):  # every batch size, prompt length and step count ...
        run(engine, tokenizer, [" ".join(words[:k * 3 % 12 + 1]) for k in range(n)],
            [SamplingConfig(max_new_tokens=1 + (k * 5) % 9, temperature=0.0) for k in range(n)])
    assert engine.programs == compiled  # ... runs on the programs compiled at start-up


def test_stop_strings_end_a_row_and_are_not_returned(engine, tokenizer):
    free = run(engine, tokenizer, ["Hello"], [GREEDY])[0]
    stop = free.text[3:5]
    row = run(engine, tokenizer, ["Hello"], [SamplingConfig(max_new_tokens=6, temperature=0.0, stop=(stop,),
                                                            stop_at_eot=False)])[0]
    assert row.text == free.text[:free.text.index(stop)] and row.finish_reason == "stop"


def test_a_cancelled_request_leaves_the_batch(engine, tokenizer):
    long = SamplingConfig(max_new_tokens=24, temperature=0.0, stop_at_eot=False)
    call = Collect(["Hello"], [long], tokenizer)
    call.request.cancelled = True
    engine.submit(call.request)
    row = call.wait()[0]
    assert row.finish_reason == "cancelled" and len(row.ids) < 24


def test_a_full_queue_refuses_instead_of_growing(model, tokenizer):
    e = Engine(model, tokenizer, EngineConfig(max_batch_size=1, max_queue=2))  # not started: nothing drains
    e.submit(Request([Row([1], GREEDY), Row([2], GREEDY)], lambda ev: None))
    with pytest.raises(QueueFull, match="at most 2 prompts"):
        e.submit(Request([Row([3], GREEDY)], lambda ev: None))


def test_text_never_splits_a_utf8_character():
    stream = TextStream(())
    data = "é€😀".encode()
    sent = [stream.push(data[i:i + 1])[0] for i in range(len(data))]
    assert "".join(sent) == "é€😀" and "\ufffd" not in "".join(sent)
    assert sent[0] == "" and sent[1] == "é"  # the first byte of é is held back
    assert stream.push(b"ok\xe2\x82") == ("ok", False)  # ends inside a character: held back
    assert stream.flush() == ""  # and dropped at the end, not replaced by U+FFFD


def test_text_that_may_start_a_stop_string_is_held_back():
    stream = TextStream(["\n\n"])
    assert stream.push(b"Hello\n") == ("Hello", False)
    assert stream.push(b"\nrest") == ("", True)
    stream = TextStream(["END"])
    assert stream.push(b"abcE") == ("abc", False)
    assert stream.push(b"x") == ("Ex", False)
