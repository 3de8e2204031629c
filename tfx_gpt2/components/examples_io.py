"""What tfx-gpt2's ExampleGens share: documents as tf.Examples, the rejected report, the counts.

Features of every example:
    text       the document, UTF-8 bytes (may be empty: data validation flags it)
    doc_id     the stable id that the train/eval/test split hashes
    source     the file or `database.collection` it came from
    num_chars  the length of `text` in characters (validated against bounds before training)
    num_replacement_chars  how many U+FFFD the text holds (a sign of decoding errors upstream)
    <field>    each metadata field of the source (MongoDB), as a string

Next to `Split-*/`, the output artifact holds
    rejected/rejected-*.jsonl   one JSON line per record that is not a document (id, reason, detail)
    counts.json                 documents, empty_documents, chars
and gets custom properties `documents`, `empty_documents`, `rejected_<reason>` (see
`tfx_gpt2.sources.documents`). An export that yields no document fails with a clear error.
"""

import json
import os
from typing import Any, Dict, Optional

import apache_beam as beam
import tensorflow as tf
from tfx.proto import example_gen_pb2

from tfx_gpt2.progress import get_logger
from tfx_gpt2.sources.documents import Document, count_reasons

logger = get_logger("tfx_gpt2.example_gen")

TEXT_FEATURE = "text"
DOC_ID_FEATURE = "doc_id"
NUM_CHARS_FEATURE = "num_chars"
NUM_REPLACEMENT_CHARS_FEATURE = "num_replacement_chars"
OUTPUT_URI_KEY = "_tfx_gpt2_output_uri"  # the executor passes its output directory to the Beam graph
REJECTED_DIR = "rejected"
COUNTS_FILE = "counts.json"


class NoDocumentsError(ValueError):
    """The source yielded no document."""


def _bytes(value: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def document_to_example(doc: Document) -> tf.train.Example:
    feature = {
        TEXT_FEATURE: _bytes(doc.text),
        DOC_ID_FEATURE: _bytes(doc.doc_id),
        "source": _bytes(doc.source),
        NUM_CHARS_FEATURE: _int(len(doc.text)),
        NUM_REPLACEMENT_CHARS_FEATURE: _int(doc.text.count("\ufffd")),
    }
    for name, value in doc.metadata:
        feature[name] = _bytes(value)
    return tf.train.Example(features=tf.train.Features(feature=feature))


class _Route(beam.DoFn):
    def __init__(self, what: str):
        self.documents = beam.metrics.Metrics.counter(what, "documents")
        self.rejected = beam.metrics.Metrics.counter(what, "rejected")

    def process(self, record):
        if isinstance(record, Document):
            self.documents.inc()
            yield record
        else:
            self.rejected.inc()
            logger.warning("rejected %s (%s): %s", record.doc_id, record.reason, record.detail)
            yield beam.pvalue.TaggedOutput(REJECTED_DIR, record.to_json())


def _sum3(triples):
    totals = [0, 0, 0]
    for t in triples:
        for i in range(3):
            totals[i] += t[i]
    return tuple(totals)


@beam.ptransform_fn
def RecordsToExamples(records, exec_properties: Dict[str, Any], what: str):
    """PCollection[Document | Rejected] -> PCollection[tf.Example]; writes the rejected report and
    the counts into the output directory named by `exec_properties[OUTPUT_URI_KEY]`."""
    out = exec_properties[OUTPUT_URI_KEY]
    routed = records | "Route" >> beam.ParDo(_Route(what)).with_outputs(REJECTED_DIR, main="documents")
    _ = routed[REJECTED_DIR] | "WriteRejected" >> beam.io.WriteToText(
        os.path.join(out, REJECTED_DIR, "rejected"), file_name_suffix=".jsonl")
    _ = (
        routed.documents
        | "Triples" >> beam.Map(lambda d: (1, int(not d.text), len(d.text)))
        | "Sum" >> beam.CombineGlobally(_sum3)
        | "CountsJson" >> beam.Map(lambda t: json.dumps(
            {"documents": t[0], "empty_documents": t[1], "chars": t[2]}))
        | "WriteCounts" >> beam.io.WriteToText(os.path.join(out, "counts"), file_name_suffix=".json",
                                               shard_name_template="")
    )
    return routed.documents | "ToExample" >> beam.Map(document_to_example)


def keep_rejected(uri: str, shown: int = 3) -> str:
    """Copies the rejected report of a failed output (TFX removes the output folder of a failed
    execution) to `<component folder>/rejected-of-failed-runs/<execution>/`; says where it is,
    with the first `shown` rejections."""
    folder = os.path.join(os.path.dirname(os.path.dirname(uri.rstrip("/"))), "rejected-of-failed-runs",
                          os.path.basename(uri.rstrip("/")))
    tf.io.gfile.makedirs(folder)
    first = []
    for path in sorted(tf.io.gfile.glob(os.path.join(uri, REJECTED_DIR, "*.jsonl"))):
        tf.io.gfile.copy(path, os.path.join(folder, os.path.basename(path)), overwrite=True)
        with tf.io.gfile.GFile(path) as f:
            first += [line.strip() for _, line in zip(range(shown - len(first)), f)]
    return f"the list is kept in {folder}; the first: {'; '.join(first)}"


def finish_output(examples_artifact, source_description: str) -> Dict[str, int]:
    """Sets the counts as custom properties of the output artifact, logs them, and fails when no
    document was exported."""
    uri = examples_artifact.uri
    with tf.io.gfile.GFile(os.path.join(uri, COUNTS_FILE)) as f:
        counts = json.loads(f.read())
    rejected: Dict[str, int] = {}
    for path in tf.io.gfile.glob(os.path.join(uri, REJECTED_DIR, "*.jsonl")):
        with tf.io.gfile.GFile(path) as f:
            for reason, n in count_reasons(f).items():
                rejected[reason] = rejected.get(reason, 0) + n
    for key in ("documents", "empty_documents", "chars"):
        examples_artifact.set_int_custom_property(key, int(counts[key]))
    for reason, n in sorted(rejected.items()):
        examples_artifact.set_int_custom_property(f"rejected_{reason}", n)
    bad = {r: n for r, n in rejected.items() if n}
    logger.info(
        "%s: %s documents (%s empty), %s characters; rejected: %s", source_description,
        f"{counts['documents']:,}", f"{counts['empty_documents']:,}", f"{counts['chars']:,}",
        ", ".join(f"{n:,} {r}" for r, n in sorted(bad.items())) or "none",
    )
    if bad:
        logger.warning("rejected records are listed with their ids in %s", os.path.join(uri, REJECTED_DIR))
    if counts["documents"] == 0:
        raise NoDocumentsError(
            f"{source_description} yielded no document"
            + (f" ({sum(bad.values())} records rejected: {bad}; {keep_rejected(uri)})" if bad else "")
            + "; check the source, its filter and the text field."
        )
    return {**counts, **{f"rejected_{r}": n for r, n in rejected.items()}}


def hash_split_config(split_ratios: Optional[Dict[str, int]], who: str) -> example_gen_pb2.SplitConfig:
    """Splits by a hash of `doc_id`: split name -> hash buckets (default train 9 : eval 1)."""
    split_ratios = split_ratios or {"train": 9, "eval": 1}
    for name, buckets in split_ratios.items():
        if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets <= 0:
            raise ValueError(
                f"{who} split_ratios[{name!r}] = {buckets!r}; each split needs a positive whole number "
                "of hash buckets, e.g. {'train': 18, 'eval': 1, 'test': 1} for 90/5/5."
            )
    if "train" not in split_ratios or "eval" not in split_ratios:
        raise ValueError(
            f"{who} split_ratios = {split_ratios!r} needs a 'train' and an 'eval' split (and may add 'test')."
        )
    return example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name=n, hash_buckets=b) for n, b in split_ratios.items()],
        partition_feature_name=DOC_ID_FEATURE,
    )
