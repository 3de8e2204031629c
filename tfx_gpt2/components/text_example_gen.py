"""TextExampleGen: a folder of text files -> tf.Examples split train/eval by a hash of the document id.

A `FileBasedExampleGen` (like TFX's CsvExampleGen), so TFX's file fingerprints, spans and
caching apply: a second run over unchanged files reuses the previous output.

Output artifact `examples` (Examples): one tf.Example per non-empty document, with features
    text     the document, UTF-8 bytes
    doc_id   `<file name>:<index in file>`, the key of the hash split
    source   the file's path

Empty documents are counted (Beam counter `text_example_gen/empty_documents`) and logged, never
written; a file that is not valid UTF-8 fails the component with the file and byte offset.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, Optional

import apache_beam as beam
import tensorflow as tf
from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from tfx_gpt2.progress import get_logger
from tfx_gpt2.sources.text_files import DEFAULT_SEPARATOR, TextSourceError, split_documents

logger = get_logger("tfx_gpt2.text_example_gen")

TEXT_FEATURE = "text"
DOC_ID_FEATURE = "doc_id"


def _bytes_feature(value: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))


class _FileToExamples(beam.DoFn):
    def __init__(self, separator: Optional[str]):
        self.separator = separator
        self.documents = beam.metrics.Metrics.counter("text_example_gen", "documents")
        self.empty = beam.metrics.Metrics.counter("text_example_gen", "empty_documents")

    def process(self, path: str) -> Iterable[tf.train.Example]:
        with fileio.open(path, "rb") as f:
            data = f.read()
        empty = written = 0
        for doc in split_documents(data, path, self.separator):
            if not doc.text:
                empty += 1
                continue
            written += 1
            yield tf.train.Example(features=tf.train.Features(feature={
                TEXT_FEATURE: _bytes_feature(doc.text),
                DOC_ID_FEATURE: _bytes_feature(doc.doc_id),
                "source": _bytes_feature(doc.source),
            }))
        self.documents.inc(written)
        self.empty.inc(empty)
        logger.info("%s: %d documents%s", path, written, f", {empty} empty (skipped)" if empty else "")


def _options(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    raw = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    if not raw:
        return {}
    config = proto_utils.json_to_proto(raw, example_gen_pb2.CustomConfig())
    struct = struct_pb2.Struct()
    config.custom_config.Unpack(struct)
    return json.loads(json.dumps(dict(struct)))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _TextToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str):
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    pattern = os.path.join(input_base, split_pattern)
    files = sorted(fileio.glob(pattern))
    if not files:
        raise TextSourceError(
            f"TextExampleGen: no file matches {pattern!r}; put .txt files in input_base={input_base!r} "
            "or change file_pattern."
        )
    separator = _options(exec_properties).get("separator", DEFAULT_SEPARATOR)
    logger.info("reading %d file(s) matching %s (document separator %r)", len(files), pattern, separator)
    return pipeline | "Files" >> beam.Create(files) | "Documents" >> beam.ParDo(_FileToExamples(separator))


class Executor(BaseExampleGenExecutor):
    """Reads text files into tf.Examples; splitting and writing are BaseExampleGenExecutor's."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _TextToExample


class TextExampleGen(FileBasedExampleGen):
    """Documents from a folder of text files, split into train/eval (/test) by document id.

    Args:
        input_base: the folder holding the text files.
        file_pattern: glob of the files below `input_base` (default `*.txt`).
        separator: the string between documents inside a file (default `<|endoftext|>`);
            `None` makes each file one document.
        split_ratios: split name -> hash buckets, e.g. `{"train": 9, "eval": 1}` (90/10).
    """

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(
        self,
        input_base: str,
        file_pattern: str = "*.txt",
        separator: Optional[str] = DEFAULT_SEPARATOR,
        split_ratios: Optional[Dict[str, int]] = None,
    ):
        split_ratios = split_ratios or {"train": 9, "eval": 1}
        for name, buckets in split_ratios.items():
            if not isinstance(buckets, int) or buckets <= 0:
                raise ValueError(
                    f"TextExampleGen split_ratios[{name!r}] = {buckets!r}; each split needs a positive "
                    "whole number of hash buckets, e.g. {'train': 9, 'eval': 1}."
                )
        struct = struct_pb2.Struct()
        struct.update({"separator": separator})
        packed = any_pb2.Any()
        packed.Pack(struct)
        super().__init__(
            input_base=input_base,
            input_config=example_gen_pb2.Input(
                splits=[example_gen_pb2.Input.Split(name="all", pattern=file_pattern)]
            ),
            output_config=example_gen_pb2.Output(
                split_config=example_gen_pb2.SplitConfig(
                    splits=[
                        example_gen_pb2.SplitConfig.Split(name=n, hash_buckets=b)
                        for n, b in split_ratios.items()
                    ],
                    partition_feature_name=DOC_ID_FEATURE,
                )
            ),
            custom_config=example_gen_pb2.CustomConfig(custom_config=packed),
        )
