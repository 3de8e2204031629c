"""Scoring continuations: batched scores against one unpadded forward pass per request, the
harness's token split, next-word accuracy, and multiple-choice task files (acc, acc_norm)."""

import json
import math
import os

import keras
import numpy as np
import pytest

from tfx_gpt2.config.model import GPT2Config
from tfx_gpt2.model.gpt2 import GPT2
from tfx_gpt2.training.tasks import (Request, Score, TaskError, TaskItem, choice_metrics, encode_pair,
                                     last_word_split, next_word_metrics, next_word_requests, read_task_file,
                                     score_requests, score_tasks, task_files)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS_DIR = os.path.join(REPO, "data", "tasks")


@pytest.fixture(scope="module")
def model(tokenizer):
    keras.utils.set_random_seed(3)
    return GPT2(GPT2Config(n_vocab=tokenizer.vocab_size, n_ctx=64, n_embd=32, n_layer=2, n_head=2))


def reference(model, request: Request) -> Score:
    """One unpadded forward pass over the request alone, log-softmax in float64."""
    tokens = list(request.context + request.continuation)[-(model.config.n_ctx + 1):]
    logits = model(np.asarray([tokens[:-1]], np.int32)).numpy()[0].astype(np.float64)
    logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    n = len(request.continuation)
    targets = tokens[1:][-n:]
    rows = logprobs[-n:]
    return Score(float(sum(rows[i, t] for i, t in enumerate(targets))),
                 all(int(np.argmax(rows[i])) == t for i, t in enumerate(targets)))


def test_batched_scores_equal_one_pass_per_request(model):
    rng = np.random.default_rng(0)
    requests = [Request(tuple(rng.integers(0, 50257, c).tolist()), tuple(rng.integers(0, 50257, k).tolist()))
                for c, k in [(1, 1), (5, 3), (20, 1), (40, 8), (63, 1), (80, 5), (3, 30), (10, 2)]]
    # One whose continuation is what greedy decoding produces: its `greedy` must be True.
    context = list(requests[1].context)
    for _ in range(4):
        context.append(int(np.argmax(model(np.asarray([context], np.int32)).numpy()[0, -1])))
    requests.append(Request(tuple(context[:-4]), tuple(context[-4:])))
    expected = [reference(model, r) for r in requests]
    assert expected[-1].greedy and not all(e.greedy for e in expected)
    for budget in (32, 100, 8192):  # one row per batch, a few rows, everything in one or two batches
        got = score_requests(model, requests, token_budget=budget)
        assert [g.greedy for g in got] == [e.greedy for e in expected]
        np.testing.assert_allclose([g.logprob for g in got], [e.logprob for e in expected], rtol=1e-4, atol=1e-4)


def test_the_harness_token_split(tokenizer):
    r = encode_pair(tokenizer, "The cat sat on the ", "mat")  # the trailing space joins the continuation
    assert tokenizer.decode(r.continuation) == " mat" and tokenizer.decode(r.context) == "The cat sat on the"
    assert r.context + r.continuation == tuple(tokenizer.encode_ordinary("The cat sat on the mat"))
    assert encode_pair(tokenizer, "", "Hello").context == (tokenizer.eot_id,)
    with pytest.raises(TaskError, match="adds no token"):
        encode_pair(tokenizer, "abc", "")


def test_next_word_requests_and_metrics(tokenizer):
    assert last_word_split("He opened the door.\n") == ("He opened the", " door.")
    assert last_word_split("single") is None and last_word_split(" lead") is None
    requests = next_word_requests(tokenizer, ["one", "a b c", "x y", "p q"], limit=2)
    assert [tokenizer.decode(r.continuation) for r in requests] == [" c", " y"]
    metrics = next_word_metrics([Score(-1.0, True), Score(-3.0, False)])
    assert metrics == {"next_word_accuracy": 0.5, "next_word_perplexity": pytest.approx(math.exp(2.0)),
                       "next_word_documents": 2}
    with pytest.raises(TaskError, match="no document has a last word"):
        next_word_metrics([])


def test_acc_and_acc_norm_as_the_harness_defines_them():
    # Item 1: 'a' scores -2 (per byte -2), 'bbbbbbbb' -4 (per byte -0.5): acc picks 'a', acc_norm 'bbbbbbbb'.
    items = [TaskItem("c", ("a", "bbbbbbbb"), 1), TaskItem("c", ("x", "y", "z"), 2)]
    metrics = choice_metrics(items, [-2.0, -4.0, -3.0, -2.0, -1.0])
    assert metrics == {"acc": 0.5, "acc_norm": 1.0, "items": 2}
    # Length in UTF-8 bytes: 'é' is 2 bytes, so -3/2 beats 'e''s -2/1 only under acc_norm.
    assert choice_metrics([TaskItem("c", ("e", "é"), 1)], [-2.0, -3.0]) == {"acc": 0.0, "acc_norm": 1.0, "items": 1}


@pytest.mark.parametrize("line, message", [
    ("not json", "line 2: not JSON"),
    ('["a"]', "line 2: the line is a JSON list"),
    ('{"context": 1, "choices": ["a", "b"], "gold": 0}', "line 2: context = 1 is not a string"),
    ('{"context": "c", "choices": ["a"], "gold": 0}', "line 2: choices = \\['a'\\] must be a list of two or more"),
    ('{"context": "c", "choices": ["a", ""], "gold": 0}', "choices"),
    ('{"context": "c", "choices": ["a", "b"], "gold": 2}', "line 2: gold = 2 must be the index of the right choice, 0 to 1"),
    ('{"context": "c", "choices": ["a", "b"], "gold": true}', "gold = True"),
])
def test_a_bad_task_line_is_named(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text('{"context": "c", "choices": ["a", "b"], "gold": 0}\n' + line + "\n")
    with pytest.raises(TaskError, match=message):
        read_task_file(str(path))


def test_the_bundled_task_files_are_scored(model, tokenizer):
    names = task_files(TASKS_DIR)
    assert len(names) == 2
    for path in names.values():
        items = read_task_file(path)
        assert len(items) >= 50
        with open(path, encoding="utf-8") as f:
            assert all(json.loads(line)["context"] for line in f)
    results = score_tasks(model, tokenizer, TASKS_DIR)
    assert set(results) == set(names)
    for name, r in results.items():
        assert r["items"] == len(read_task_file(names[name])) and 0.0 <= r["acc"] <= 1.0 and 0.0 <= r["acc_norm"] <= 1.0
    with pytest.raises(TaskError, match="holds no \\*.jsonl file"):
        task_files(os.path.join(REPO, "docs"))
