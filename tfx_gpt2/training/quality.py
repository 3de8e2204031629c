"""What the evaluator measures beyond perplexity, on data fixed once per evaluation (no TFX).

`QualityData` holds what is scored: the next-word requests of the eval documents, the task
files' items and the sample prompts. The evaluator builds it from its inputs, scores the
candidate and the champion on it, and keeps it in the evaluation artifact
(`QualityData.save`). The pusher's second decision (when the champion moved) scores the new
champion on the same data, read back with `QualityData.load`.

`measure` returns the metrics, with these names (MLflow metrics, ML Metadata properties, gate
metric names):

    next_word_accuracy, next_word_perplexity, next_word_documents     (training.tasks)
    task_<name>_acc, task_<name>_acc_norm, task_<name>_items          (training.tasks)
    sample_distinct_1, sample_distinct_2, sample_repeated_4gram_share,
    sample_mean_words, samples                                        (training.samples)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from tfx_gpt2.training.samples import generate_samples, sample_quality
from tfx_gpt2.training.tasks import (Request, TaskItem, choice_metrics, choice_requests, next_word_metrics,
                                     score_requests)

QUALITY_DATA_FILE = "quality_data.json"


@dataclasses.dataclass(frozen=True)
class QualityData:
    """next_word: requests for the eval documents' last words; tasks: {name: items}; prompts:
    token ids of the sample prompts. Any of them may be empty (that measure is off)."""

    next_word: Tuple[Request, ...] = ()
    tasks: Dict[str, Tuple[TaskItem, ...]] = dataclasses.field(default_factory=dict)
    prompts: Tuple[Tuple[int, ...], ...] = ()

    def save(self, folder: str) -> str:
        path = os.path.join(folder, QUALITY_DATA_FILE)
        with tf.io.gfile.GFile(path, "w") as f:
            json.dump({"next_word": [[list(r.context), list(r.continuation)] for r in self.next_word],
                       "tasks": {name: [dataclasses.asdict(i) for i in items] for name, items in self.tasks.items()},
                       "prompts": [list(p) for p in self.prompts]}, f)
        return path

    @classmethod
    def load(cls, folder: str) -> Optional["QualityData"]:
        """The data saved in `folder`, or None when there is none (an evaluation made before it)."""
        path = os.path.join(folder, QUALITY_DATA_FILE)
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path) as f:
            raw = json.load(f)
        return cls(tuple(Request(tuple(c), tuple(k)) for c, k in raw["next_word"]),
                   {name: tuple(TaskItem(i["context"], tuple(i["choices"]), i["gold"]) for i in items)
                    for name, items in raw["tasks"].items()},
                   tuple(tuple(p) for p in raw["prompts"]))


def measure(model, tokenizer, data: QualityData, token_budget: int = 8192) -> Tuple[Dict[str, float], List[dict]]:
    """(metrics, samples) of `model` on `data`; every request of the next-word and task measures
    goes through one batched `score_requests` call."""
    choices = {name: choice_requests(tokenizer, items) for name, items in data.tasks.items()}
    requests: List[Request] = list(data.next_word) + [r for rs in choices.values() for r in rs]
    scores = score_requests(model, requests, token_budget) if requests else []
    metrics: Dict[str, float] = {}
    if data.next_word:
        metrics.update(next_word_metrics(scores[:len(data.next_word)]))
    k = len(data.next_word)
    for name, items in data.tasks.items():
        n = len(choices[name])
        task = choice_metrics(items, [s.logprob for s in scores[k:k + n]])
        metrics.update({f"task_{name}_{key}": value for key, value in task.items()})
        k += n
    samples: List[dict] = []
    if data.prompts:
        samples = generate_samples(model, tokenizer, data.prompts)
        metrics.update(sample_quality([s["text"] for s in samples]))
    return metrics, samples

