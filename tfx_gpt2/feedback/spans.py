"""Feedback -> training documents, as a new span of the pipeline's text source.

A text corpus used for continuous training is laid out as spans (TFX's `{SPAN}` patterns):

    <output_dir>/training-data/
        span-0 -> the corpus folder (a link: the corpus is not copied)
        span-1/feedback.txt          training documents from feedback, one span per retrain
        manifests/span-1.json        what made span 1: store, watermarks, counts, time range

The pipeline reads it as `TextFolder(root, "span-{SPAN}/<pattern>")`: each run exports the
latest span, validated like the corpus was, and the encoder reads every span (the newest export
of each). The feedback a span holds is the feedback after the watermark of the last span a
registered version was trained on, so a span that was written but never trained on (a failed
run) is written again, with what arrived since, instead of being followed by a second one.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import json
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from tfx_gpt2.feedback.records import FeedbackRule, key_of
from tfx_gpt2.text.bpe import ENDOFTEXT

FEEDBACK_FILE = "feedback.txt"
# The Examples custom property that holds a feedback span's manifest (set by the ExampleGens).
FEEDBACK_MANIFEST = "feedback_manifest"
MANIFESTS = "manifests"


class TrainingDataError(ValueError):
    """The training-data folder cannot be laid out (the message says why and what to do)."""


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The span layout of a text corpus plus feedback (see the module docstring).

    Attributes:
        root: the folder holding the spans (e.g. `<output_dir>/training-data`).
        corpus: the original corpus folder (span 0).
        file_pattern: the corpus files' glob, also used inside each span.
    """

    root: str
    corpus: str
    file_pattern: str = "*.txt"

    @property
    def span_pattern(self) -> str:
        return "span-{SPAN}/" + self.file_pattern

    def span_dir(self, span: int) -> str:
        return os.path.join(self.root, f"span-{span}")

    def manifest_path(self, span: int) -> str:
        return os.path.join(self.root, MANIFESTS, f"span-{span}.json")

    def setup(self) -> "TrainingData":
        """Creates the root and links span 0 to the corpus (checked if it exists)."""
        if not fnmatch.fnmatch(FEEDBACK_FILE, self.file_pattern):
            raise TrainingDataError(f"file_pattern = {self.file_pattern!r} does not match {FEEDBACK_FILE!r}, the file "
                                    "feedback spans are written to; use a pattern such as '*.txt'.")
        corpus = os.path.abspath(self.corpus)
        if not os.path.isdir(corpus):
            raise TrainingDataError(f"data_root = {self.corpus!r}: the corpus folder does not exist.")
        os.makedirs(os.path.join(self.root, MANIFESTS), exist_ok=True)
        span0 = self.span_dir(0)
        if os.path.islink(span0):
            if os.path.realpath(span0) != os.path.realpath(corpus):
                raise TrainingDataError(f"{span0} links to {os.readlink(span0)}, not to the corpus {corpus}; a "
                                        "training-data folder belongs to one corpus: use another output directory.")
        elif os.path.exists(span0):
            raise TrainingDataError(f"{span0} exists and is not a link to the corpus; remove it or use another "
                                    "output directory.")
        else:
            os.symlink(corpus, span0)
        return self

    def spans(self) -> List[int]:
        found = []
        for name in os.listdir(self.root) if os.path.isdir(self.root) else []:
            if name.startswith("span-") and name[5:].isdigit():
                found.append(int(name[5:]))
        return sorted(found)

    def remove_spans_after(self, span: int) -> None:
        """Removes the feedback spans after `span` (written, never exported)."""
        for k in self.spans():
            if k > span:
                shutil.rmtree(self.span_dir(k))
                if os.path.exists(self.manifest_path(k)):
                    os.remove(self.manifest_path(k))



def mlmd_span(artifact) -> int:
    """The span of an ML Metadata artifact (proto): ExampleGens record it as a custom property
    (an int, or a string), else it is the `span` property."""
    if "span" in artifact.custom_properties:
        value = artifact.custom_properties["span"]
        return value.int_value if value.HasField("int_value") else int(value.string_value or 0)
    return artifact.properties["span"].int_value if "span" in artifact.properties else 0


def describe_spans(spans) -> str:
    """The spans as text: `3` for one, `3-7` for a run, `1,4` otherwise."""
    spans = sorted(set(spans))
    if len(spans) == 1:
        return str(spans[0])
    if spans == list(range(spans[0], spans[-1] + 1)):
        return f"{spans[0]}-{spans[-1]}"
    return ",".join(map(str, spans))


def read_manifest(input_base: str, span: int) -> Optional[Dict[str, Any]]:
    """The manifest of `span` under a training-data folder (None for the corpus, or a plain folder)."""
    import tensorflow as tf

    path = os.path.join(input_base, MANIFESTS, f"span-{span}.json")
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())


def clean(text: str) -> str:
    """A document without the document separator in it (it would split the document in two)."""
    return text.replace(ENDOFTEXT, "")


def write_span(data: TrainingData, span: int, records: List[Tuple[str, Dict[str, Any]]], rule: FeedbackRule,
               after: Optional[str], store: str) -> Dict[str, Any]:
    """Writes span `span` from feedback `records` (watermark, record) after watermark `after`;
    replaces a span of that number that was never trained on. Returns its manifest."""
    selection = rule.select(records)
    documents = [clean(d) for d in selection.documents]
    times = [r["created"] for _, r in records]
    manifest = {
        "span": span, "store": store, "rule": dataclasses.asdict(rule),
        "feedback_after": after, "feedback_until": records[-1][0] if records else after,
        "feedback_records": len(records), "documents": len(documents),
        "by_key": selection.by_key, "dropped": selection.dropped,
        "feedback_from": min(times) if times else None, "feedback_to": max(times) if times else None,
        "versions_rated": sorted({str(r["version"]) for _, r in records}), "written": time.time(),
    }
    staging = tempfile.mkdtemp(prefix=f".span-{span}-", dir=data.root)
    with open(os.path.join(staging, FEEDBACK_FILE), "w", encoding="utf-8") as f:
        f.write(ENDOFTEXT.join(documents))
    target = data.span_dir(span)
    if os.path.exists(target):
        shutil.rmtree(target)
    os.rename(staging, target)
    tmp = data.manifest_path(span) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, data.manifest_path(span))
    return manifest


FEEDBACK_COLLECTION = "tfx_gpt2.training_feedback"


@dataclasses.dataclass(frozen=True)
class MongoTrainingData:
    """Feedback documents in a MongoDB collection, read with the corpus by an incremental MongoSource.

    Each training document is inserted once (keyed by `feedback_id`, the completion id and prompt
    index) with an ObjectId `_id`, so MongoExampleGen's next export (past its watermark) holds the
    new ones as a new span; its executor records what made them (`feedback_manifest`).

    Attributes:
        source: the corpus's MongoSource (`incremental=True`).
        collection: `database.collection` of the feedback documents (default `tfx_gpt2.training_feedback`).
    """

    source: Any
    collection: str = FEEDBACK_COLLECTION

    def setup(self) -> "MongoTrainingData":
        if not self.source.incremental:
            raise TrainingDataError("the feedback loop on a MongoDB corpus needs incremental exports: set "
                                    "mongo_incremental (--incremental), so that each retrain is a new span")
        if self.source.query():
            raise TrainingDataError(
                f"mongo_filter = {self.source.filter!r} applies to every collection, the feedback documents in "
                f"{self.collection} too, which carry only the text: leave the filter empty (filter the corpus with "
                "a MongoDB view instead)")
        return self

    def write(self, client, records: List[Tuple[str, Dict[str, Any]]], rule: FeedbackRule, store: str) -> int:
        """Inserts the training documents of `records` not inserted yet; returns how many are new."""
        db, _, name = self.collection.partition(".")
        coll = client[db][name]
        coll.create_index("feedback_id", unique=True)
        new = 0
        for watermark, record, document in rule.select(records).kept:
            result = coll.update_one({"feedback_id": f"{record['completion_id']}:{record['index']}"}, {"$setOnInsert": {
                self.source.text_field: clean(document), "feedback_watermark": sortable(watermark),
                "completion_id": record["completion_id"], "index": record["index"], "version": record["version"],
                "key_id": key_of(record),
                "score": record["score"], "feedback_created": record["created"], "store": store,
                "rule": dataclasses.asdict(rule)}}, upsert=True)
            new += int(result.upserted_id is not None)
        return new


def sortable(watermark: str):
    """A store watermark as MongoDB sorts it: row numbers as numbers, ObjectIds as their hex."""
    return int(watermark) if watermark.isdigit() else watermark


def mongo_manifest(coll, span: int, start_after, until) -> Optional[Dict[str, Any]]:
    """The manifest of the feedback documents in `coll` with `_id` in (start_after, until]."""
    bounds = {"$lte": until} if until is not None else {}
    if start_after is not None:
        bounds["$gt"] = start_after
    documents = list(coll.find({"_id": bounds} if bounds else {},
                               {"feedback_watermark": 1, "feedback_created": 1, "store": 1, "rule": 1, "key_id": 1}))
    if not documents:
        return None
    marks = sorted(d["feedback_watermark"] for d in documents)
    times = [d["feedback_created"] for d in documents]
    previous = coll.find_one({"_id": {"$lte": start_after}}, sort=[("feedback_watermark", -1)]) if start_after else None
    return {"span": span, "store": documents[-1].get("store"), "rule": documents[-1].get("rule"),
            "feedback_after": str(previous["feedback_watermark"]) if previous else None,
            "feedback_until": str(marks[-1]), "feedback_records": len(documents), "documents": len(documents),
            "feedback_from": min(times), "feedback_to": max(times), "collection": coll.name,
            "by_key": dict(collections.Counter(key_of(d) for d in documents))}
