"""Scoring continuations as lm-evaluation-harness does (plain TensorFlow, no TFX): next-word
accuracy on documents (LAMBADA's method) and multiple-choice task files.

A request is a context and a continuation, both token ids. Its score is the sum of the
continuation's token log-probabilities given the context, and whether greedy decoding of the
context produces exactly the continuation. Teacher forcing gives the second too: greedy decoding
yields the continuation exactly when each of its tokens is the argmax given the ones before it.
The context is cut from the left to fit `n_ctx`, as the harness does.

`score_requests` runs them in batches. It sorts the requests by length, pads each batch on the
right up to a multiple of `LENGTH_STEP` (a causal model's earlier positions do not see the padding),
and fills a batch up to a token budget. Every sequence is then one row of one forward pass, and
the output projection (most of a small model's work) runs at the continuation's positions only.

Next-word accuracy (`next_word_requests`). A document's last word is what follows its last space.
The context is the text before that space, and the continuation is the space and the word, as in
the harness's LAMBADA. The metrics are the share of documents whose word greedy decoding produces,
and the word perplexity `exp(-mean log p(word))`.

Task files (`read_task_file`) hold JSON lines `{"context": str, "choices": [str, ...], "gold": int}`.
Each choice continues the context after one space (the harness's `target_delimiter`). `acc` is the
share of items whose highest-scoring choice is the gold one. `acc_norm` is the same with each
score divided by the choice's length in UTF-8 bytes. The tokens are split the harness's way: the
continuation's tokens are those of `context + continuation` after the context's own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import weakref
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfx_gpt2.model.gpt2 import GPT2

LENGTH_STEP = 32  # batches are padded to a multiple of this many positions (few traced shapes)
TASK_NAME = re.compile(r"[A-Za-z0-9_-]+")
DELIMITER = " "  # between a task item's context and each choice (lm-evaluation-harness's default)


class TaskError(ValueError):
    """A task file or a request that cannot be scored; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class Request:
    """A context and its continuation, as token ids (the continuation is never empty)."""

    context: Tuple[int, ...]
    continuation: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Score:
    """`logprob`: the continuation's summed token log-probability (nats); `greedy`: whether each
    of its tokens is the most likely one given the tokens before it."""

    logprob: float
    greedy: bool


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """The harness's tokens of a pair: trailing spaces of the context move to the continuation,
    whose tokens are what `context + continuation` adds to the context's; an empty context is
    `<|endoftext|>`."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode_ordinary(context + continuation)
    n = len(tokenizer.encode_ordinary(context))
    if n >= len(whole):
        raise TaskError(f"the continuation {continuation!r:.60} adds no token to the context {context!r:.60}")
    return Request(tuple(whole[:n]) or (tokenizer.eot_id,), tuple(whole[n:]))


def _row(request: Request, n_ctx: int) -> Tuple[List[int], int]:
    """The model's input for `request` (cut from the left to `n_ctx`) and how many of its last
    targets are the continuation's."""
    if len(request.continuation) > n_ctx:
        raise TaskError(f"a continuation of {len(request.continuation)} tokens does not fit the context of "
                        f"{n_ctx}; shorten the choice or use a model with a longer context")
    tokens = (request.context + request.continuation)[-(n_ctx + 1):]
    return list(tokens), len(request.continuation)


# One traced scorer per model, kept weakly (as training.evaluation keeps its loss function).
_SCORERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _scorer(model: GPT2):
    fn = _SCORERS.get(model)
    if fn is None:
        ref = weakref.ref(model)

        matrix = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[matrix] * 3, autograph=False)  # one trace for every batch shape
        def fn(x, at, y):  # inputs (B, L), positions (B, K), their targets (B, K) -> log-probabilities,
            logits = ref().forward(x, positions=at)[0]  # whether each target is the argmax (B, K)
            picked = tf.gather(logits, y, batch_dims=2)
            logprob = picked - tf.reduce_logsumexp(logits, axis=-1)
            return logprob, tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y)

        _SCORERS[model] = fn
    return fn


def _batches(lengths: Sequence[int], token_budget: int, n_ctx: int) -> Iterable[Tuple[List[int], int]]:
    """(indices, padded width) batches of inputs of `lengths`: longest first, each batch within
    `token_budget` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    start = 0
    while start < len(order):
        width = min(-(-lengths[order[start]] // LENGTH_STEP) * LENGTH_STEP, n_ctx)
        size = max(1, token_budget // width)
        yield order[start:start + size], width
        start += size


def score_requests(model: GPT2, requests: Sequence[Request], token_budget: int = 8192) -> List[Score]:
    """Each request's `Score`, in order; forward passes of at most `token_budget` padded tokens."""
    n_ctx = model.config.n_ctx
    rows = [_row(r, n_ctx) for r in requests]
    scores: List[Score] = [Score(0.0, False)] * len(rows)
    scorer = _scorer(model)
    for batch, width in _batches([len(tokens) - 1 for tokens, _ in rows], token_budget, n_ctx):
        x, at, y = _arrays([rows[i] for i in batch], width)
        logprob, greedy = (t.numpy() for t in scorer(tf.constant(x), tf.constant(at), tf.constant(y)))
        for j, i in enumerate(batch):
            n = rows[i][1]
            scores[i] = Score(float(logprob[j, :n].sum()), bool(greedy[j, :n].all()))
    return scores


def _arrays(rows: Sequence[Tuple[List[int], int]], width: int):
    """The inputs `(B, width)`, right-padded, and the continuation's positions and targets
    `(B, K)` (K: the longest continuation; the rest repeat position 0 and are not read)."""
    k = max(n for _, n in rows)
    x = np.zeros((len(rows), width), np.int32)
    at = np.zeros((len(rows), k), np.int32)
    y = np.zeros((len(rows), k), np.int32)
    for j, (tokens, n) in enumerate(rows):
        end = len(tokens) - 1
        x[j, :end] = tokens[:-1]
        at[j, :n] = np.arange(end - n, end)
        y[j, :n] = tokens[end - n + 1:]
    return x, at, y


# ---------------------------------------------------------------------------------------------
# Next-word accuracy


def last_word_split(text: str):
    """(context, ' ' + last word) of a document, or None when it has no space-separated last word."""
    text = text.rstrip()
    cut = text.rfind(" ")
    if cut <= 0 or not text[:cut].strip():
        return None
    return text[:cut], text[cut:]


def next_word_requests(tokenizer, documents: Iterable[str], limit: int) -> List[Request]:
    """Requests for the last word of each document (the first `limit` that have one)."""
    requests = []
    for text in documents:
        split = last_word_split(text)
        if split is not None:
            requests.append(encode_pair(tokenizer, *split))
            if len(requests) == limit:
                break
    return requests


def next_word_metrics(scores: Sequence[Score]) -> Dict[str, float]:
    """`next_word_accuracy`, `next_word_perplexity` (per word) and `next_word_documents`."""
    if not scores:
        raise TaskError("no document has a last word to predict (a document needs a space before its last word)")
    return {"next_word_accuracy": float(np.mean([s.greedy for s in scores])),
            "next_word_perplexity": math.exp(-float(np.mean([s.logprob for s in scores]))),
            "next_word_documents": len(scores)}


# ---------------------------------------------------------------------------------------------
# Multiple-choice task files


@dataclasses.dataclass(frozen=True)
class TaskItem:
    context: str
    choices: Tuple[str, ...]
    gold: int


def _item(line: str, where: str) -> TaskItem:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(f"{where}: not JSON ({e.msg}); each line is one item, "
                        '{"context": "...", "choices": ["...", "..."], "gold": 0}') from None
    if not isinstance(row, dict):
        raise TaskError(f"{where}: the line is a JSON {type(row).__name__}, not an object with context, choices, gold")
    context, choices, gold = row.get("context"), row.get("choices"), row.get("gold")
    if not isinstance(context, str):
        raise TaskError(f"{where}: context = {context!r:.60} is not a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise TaskError(f"{where}: choices = {choices!r:.80} must be a list of two or more non-empty strings")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise TaskError(f"{where}: gold = {gold!r:.20} must be the index of the right choice, 0 to {len(choices) - 1}")
    return TaskItem(context, tuple(choices), gold)


def read_task_file(path: str) -> List[TaskItem]:
    """The items of a JSONL task file; TaskError names the line and field of a bad one."""
    with tf.io.gfile.GFile(path) as f:
        lines = f.read().splitlines()
    items = [_item(line, f"{path} line {n}") for n, line in enumerate(lines, 1) if line.strip()]
    if not items:
        raise TaskError(f"{path} holds no item; write one JSON object per line with context, choices and gold")
    return items


def task_files(folder: str) -> Dict[str, str]:
    """{task name: path} of the `*.jsonl` files in `folder` (the name is the file's, without .jsonl)."""
    paths = sorted(tf.io.gfile.glob(os.path.join(folder, "*.jsonl")))
    if not paths:
        raise TaskError(f"the task folder {folder} holds no *.jsonl file; put one task per file there")
    names = {os.path.basename(p)[:-len(".jsonl")]: p for p in paths}
    for name, path in names.items():
        if not TASK_NAME.fullmatch(name):
            raise TaskError(f"the task file {path}: its name {name!r} becomes the metrics' names (task_<name>_acc); "
                            "rename it to letters, digits, '_' and '-' only")
    return names


def choice_requests(tokenizer, items: Sequence[TaskItem]) -> List[Request]:
    """One request per choice of each item, in order."""
    return [encode_pair(tokenizer, item.context, DELIMITER + choice) for item in items for choice in item.choices]


def choice_metrics(items: Sequence[TaskItem], logprobs: Sequence[float]) -> Dict[str, float]:
    """`acc` and `acc_norm` of the items from their choices' summed log-probabilities (in order)."""
    correct, correct_norm, k = 0, 0, 0
    for item in items:
        scores = np.asarray(logprobs[k:k + len(item.choices)])
        k += len(item.choices)
        lengths = np.asarray([len(c.encode("utf-8")) for c in item.choices], np.float64)
        correct += int(np.argmax(scores) == item.gold)
        correct_norm += int(np.argmax(scores / lengths) == item.gold)
    return {"acc": correct / len(items), "acc_norm": correct_norm / len(items), "items": len(items)}


def score_tasks(model: GPT2, tokenizer, folder: str, token_budget: int = 8192) -> Dict[str, Dict[str, float]]:
    """{task: {acc, acc_norm, items}} of every task file in `folder`, all choices scored in one batched pass."""
    tasks = {name: read_task_file(path) for name, path in task_files(folder).items()}
    requests = [r for items in tasks.values() for r in choice_requests(tokenizer, items)]
    logprobs = [s.logprob for s in score_requests(model, requests, token_budget)]
    results, k = {}, 0
    for name, items in tasks.items():
        n = sum(len(item.choices) for item in items)
        results[name] = choice_metrics(items, logprobs[k:k + n])
        k += n
    return results
