"""The serving engine on a tiny random model: continuous batching (rows join and leave at every
decode call), outputs that do not depend on the batch, per-row settings, bounded programs, stop
strings, cancellation mid-batch, a bounded queue, and text that never splits a UTF-8 character."""

import threading
import time

import keras
import pytest

from tfx_gpt2.config.model import GPT2Config
from tfx_gpt2.model.generate import Generator, SamplingConfig
from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.serving.detokenizer import TextStream
from tfx_gpt2.serving.engine import Engine, EngineConfig, QueueFull, Request, Row, programs_expected

GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0, stop_at_eot=False)
CONFIG = EngineConfig(max_batch_size=4, max_wait_ms=50, prefill_tokens=8, chunk_tokens=4, workers=1)


def long(n):
    return SamplingConfig(max_new_tokens=n, temperature=0.0, stop_at_eot=False)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(2)
    return GPT2(GPT2Config(n_ctx=32, n_embd=32, n_layer=2, n_head=2))


def started(model, tokenizer, config=CONFIG):
    batches = []
    e = Engine(model, tokenizer, config, on_batch=batches.append)
    e.warm_up()
    e.batches = batches
    return e.start()


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    e = started(model, tokenizer)
    yield e
    e.stop()


class Collect:
    """A request's events, a way to wait for its end, and an optional action at its first text."""

    def __init__(self, prompts, configs, tokenizer, on_first_text=None, name=None, order=None):
        self.events, self.finished = [], threading.Event()
        self.on_first_text, self.name, self.order = on_first_text, name, order
        rows = [Row(tokenizer.encode(p), c) for p, c in zip(prompts, configs)]
        self.request = Request(rows, self.emit, stream=True)

    def emit(self, event):  # called on the engine thread
        self.events.append(event)
        if event[0] == "text" and self.on_first_text:
            action, self.on_first_text = self.on_first_text, None
            action(self)
        if sum(e[0] == "done" for e in self.events) == len(self.request.rows):
            if self.order is not None:
                self.order.append(self.name)
            self.finished.set()

    def wait(self, timeout=60):
        assert self.finished.wait(timeout), self.events
        return self.request.rows


def run(engine, tokenizer, prompts, configs):
    calls = [Collect([p], [c], tokenizer) for p, c in zip(prompts, configs)]
    for c in calls:
        engine.submit(c.request)
    return [c.wait()[0] for c in calls]


def test_concurrent_requests_decode_together_and_match_the_generator(engine, model, tokenizer):
    prompts = ["Hello there", "A", "The quick brown fox jumps"]
    engine.batches.clear()
    rows = run(engine, tokenizer, prompts, [GREEDY] * 3)
    assert max(engine.batches) == 3  # three requests, decoded together
    reference = Generator(model, tokenizer)
    for prompt, row in zip(prompts, rows):
        assert row.ids == reference.generate_ids([tokenizer.encode(prompt)], GREEDY)[0]
        assert row.text == tokenizer.decode(row.ids) and row.finish_reason == "length"


def test_a_request_joins_a_running_batch_and_leaves_before_it(model, engine, tokenizer):
    """B arrives while A generates: it joins at the next decode call and ends long before A
    (with static batching it waits for A's end)."""
    order = []
    b = Collect(["Other words"], [long(4)], tokenizer, name="B", order=order)
    a = Collect(["Hi"], [long(28)], tokenizer, lambda _: engine.submit(b.request), "A", order)
    engine.submit(a.request)
    a_row, b_row = a.wait()[0], b.wait()[0]
    assert order == ["B", "A"] and len(a_row.ids) == 28 and len(b_row.ids) == 4
    alone = run(engine, tokenizer, ["Hi", "Other words"], [long(28), long(4)])
    assert [a_row.ids, b_row.ids] == [r.ids for r in alone]  # joining changes nothing in either


def test_static_batching_makes_the_newcomer_wait(model, tokenizer):
    engine = started(model, tokenizer, EngineConfig(**{**CONFIG.__dict__, "scheduling": "static"}))
    try:
        order = []
        b = Collect(["Other words"], [long(4)], tokenizer, name="B", order=order)
        a = Collect(["Hi"], [long(28)], tokenizer, lambda _: engine.submit(b.request), "A", order)
        engine.submit(a.request)
        a.wait(), b.wait()
        assert order == ["A", "B"]
    finally:
        engine.stop()


def test_greedy_text_does_not_depend_on_the_batch(engine, tokenizer):
    prompts = ["Hello there", "A", "The quick brown fox jumps", "1 2 3"]
    configs = [long(9), long(3), long(12), long(5)]
    alone = [run(engine, tokenizer, [p], [c])[0].ids for p, c in zip(prompts, configs)]
    together = [r.ids for r in run(engine, tokenizer, prompts, configs)]
    assert together == alone


def test_each_row_keeps_its_own_settings_and_limit(engine, tokenizer):
    sampled = SamplingConfig(max_new_tokens=5, temperature=1.0, top_k=10, top_p=0.9, seed=7, stop_at_eot=False)
    short = SamplingConfig(max_new_tokens=2, temperature=0.0, stop_at_eot=False)
    alone = run(engine, tokenizer, ["Hi"], [sampled])[0].ids
    mixed = run(engine, tokenizer, ["Hi", "Hi", "Other words"], [sampled, short, GREEDY])
    assert mixed[0].ids == alone  # a seed gives the same text whatever it is batched with
    assert len(mixed[1].ids) == 2 and mixed[1].finish_reason == "length"
    assert len(mixed[2].ids) == 6


def test_repetition_penalty_sees_the_prompt_and_the_tokens_so_far(engine, model, tokenizer):
    """Greedy with a penalty, as the Generator computes it, twice: the second time in slots whose
    last rows saw the very tokens these rows choose (a slot's marks are cleared for its next row)."""
    config = SamplingConfig(max_new_tokens=10, temperature=0.0, repetition_penalty=5.0, stop_at_eot=False)
    prompts = ["Hi", "The quick brown fox jumps over", "A"]  # one-token prompts have no prefill
    reference = Generator(model, tokenizer)
    expected = [reference.generate_ids([tokenizer.encode(p)], config)[0] for p in prompts]
    for _ in range(2):
        assert [r.ids for r in run(engine, tokenizer, prompts, [config] * 3)] == expected


def test_programs_are_compiled_at_warm_up_and_stay_bounded(engine, tokenizer):
    expected = programs_expected(engine.config, engine.n_ctx)
    compiled = set(engine.programs)
    assert len(compiled) == sum(expected.values())
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    for n in range(1, 5):  # every batch size, prompt length and step count ...
        run(engine, tokenizer, [" ".join(words[:k * 3 % 12 + 1]) for k in range(n)],
            [SamplingConfig(max_new_tokens=1 + (k * 5) % 9, temperature=0.0) for k in range(n)])
    assert engine.programs == compiled  # ... runs on the programs compiled at start-up


def test_a_second_engine_of_the_same_shape_compiles_nothing(engine, model, tokenizer):
    before = set(engine.programs)
    other = Engine(model, tokenizer, EngineConfig(**{**CONFIG.__dict__, "workers": 2}))
    assert all(w.runner.programs is engine.workers[0].runner.programs for w in other.workers)
    other.warm_up()
    assert other.programs == before
    other.start()
    try:  # two workers: requests are spread over both, and their text is the same as alone
        prompts, configs = ["Hello there", "A", "The quick brown fox jumps"], [long(9), long(3), long(12)]
        alone = [run(engine, tokenizer, [p], [c])[0].ids for p, c in zip(prompts, configs)]
        assert [r.ids for r in run(other, tokenizer, prompts, configs)] == alone
        assert all(w.scheduler.step_seconds for w in other.workers)  # both decoded
    finally:
        other.stop()
    assert other.released  # weights and caches released


def test_stop_strings_end_a_row_and_are_not_returned(engine, tokenizer):
    free = run(engine, tokenizer, ["Hello"], [GREEDY])[0]
    stop = free.text[3:5]
    row = run(engine, tokenizer, ["Hello"], [SamplingConfig(max_new_tokens=6, temperature=0.0, stop=(stop,),
                                                            stop_at_eot=False)])[0]
    assert row.text == free.text[:free.text.index(stop)] and row.finish_reason == "stop"


def test_a_request_cancelled_mid_batch_leaves_it_and_frees_its_slot(engine, tokenizer):
    """A is cancelled at its first text while B runs beside it: A ends with the tokens it had,
    B goes on alone to its limit, and A's slot is free again."""
    def cancel(call):
        call.request.cancelled = True

    b = Collect(["Other words"], [long(24)], tokenizer)
    a = Collect(["Hello"], [long(24)], tokenizer, on_first_text=cancel)
    engine.batches.clear()
    engine.submit(b.request)
    engine.submit(a.request)
    a_row, b_row = a.wait()[0], b.wait()[0]
    assert a_row.finish_reason == "cancelled" and 0 < len(a_row.ids) < 24
    assert b_row.finish_reason == "length" and len(b_row.ids) == 24
    assert engine.batches[0] == 2 and engine.batches[-1] == 1  # after the cancel, B decodes alone
    deadline = time.monotonic() + 10
    while engine.live and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.live


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
