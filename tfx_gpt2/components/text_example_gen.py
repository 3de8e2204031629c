"""TextExampleGen: a folder of text files -> tf.Examples split train/eval(/test) by a hash of the document id.

A `FileBasedExampleGen` (like TFX's CsvExampleGen), so TFX's file fingerprints, spans and
caching apply: a second run over unchanged files reuses the previous output.

Output artifact `examples` (Examples): one tf.Example per document (features in
`tfx_gpt2.components.examples_io`; `doc_id` is `<file name>:<index in file>`, `source` the
file's path). Files are read in chunks (bounded memory). A document that is not valid UTF-8 is
rejected and listed, with its file and byte offset, in `rejected/`; the other documents of the
file are kept. Empty documents are kept (num_chars = 0) for data validation to report.
"""

import json
import os
from typing import Any, Dict, Iterable, Optional

import apache_beam as beam
from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from tfx_gpt2.components.examples_io import (
    OUTPUT_URI_KEY,
    RecordsToExamples,
    finish_output,
    hash_split_config,
)
from tfx_gpt2.feedback.spans import FEEDBACK_MANIFEST, read_manifest
from tfx_gpt2.progress import get_logger
from tfx_gpt2.sources.text_files import DEFAULT_SEPARATOR, TextSourceError, read_documents

logger = get_logger("tfx_gpt2.text_example_gen")


class _ReadFile(beam.DoFn):
    def __init__(self, separator: Optional[str]):
        self.separator = separator

    def process(self, path: str) -> Iterable:
        with fileio.open(path, "rb") as f:
            yield from read_documents(f, path, self.separator)


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
def _TextToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str):
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    pattern = os.path.join(input_base, split_pattern)
    files = sorted(fileio.glob(pattern))
    if not files and not fileio.isdir(input_base):
        raise TextSourceError(
            f"TextExampleGen: the data folder input_base={input_base!r} does not exist; give an existing folder "
            "of .txt files (--data-root / data_root)."
        )
    if not files:
        raise TextSourceError(
            f"TextExampleGen: no file matches {pattern!r}; put .txt files in input_base={input_base!r} "
            "or change file_pattern."
        )
    separator = _options(exec_properties).get("separator", DEFAULT_SEPARATOR)
    logger.info("reading %d file(s) matching %s (document separator %r)", len(files), pattern, separator)
    return (
        pipeline
        | "Files" >> beam.Create(files)
        | "Reshuffle" >> beam.Reshuffle()  # one file per worker
        | "Documents" >> beam.ParDo(_ReadFile(separator))
        | "Examples" >> RecordsToExamples(exec_properties, "text_example_gen")
    )


class Executor(BaseExampleGenExecutor):
    """Reads text files into tf.Examples; splitting and writing are BaseExampleGenExecutor's."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _TextToExample

    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        super().Do(input_dict, output_dict, {**exec_properties, OUTPUT_URI_KEY: examples.uri})
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        finish_output(examples, f"text files in {input_base}")
        span = exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME)
        manifest = read_manifest(input_base, int(span)) if span is not None else None
        if manifest is not None:  # a span of feedback documents: what made it (tfx_gpt2.feedback.spans)
            examples.set_string_custom_property(FEEDBACK_MANIFEST, json.dumps(manifest, sort_keys=True))


class TextExampleGen(FileBasedExampleGen):
    """Documents from a folder of text files, split into train/eval (/test) by document id.

    Args:
        input_base: the folder holding the text files.
        file_pattern: glob of the files below `input_base` (default `*.txt`).
        separator: the string between documents inside a file (default `<|endoftext|>`);
            `None` makes each file one document.
        split_ratios: split name -> hash buckets, e.g. `{"train": 18, "eval": 1, "test": 1}`
            (90/5/5); default `{"train": 9, "eval": 1}`.
    """

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(
        self,
        input_base: str,
        file_pattern: str = "*.txt",
        separator: Optional[str] = DEFAULT_SEPARATOR,
        split_ratios: Optional[Dict[str, int]] = None,
    ):
        split_config = hash_split_config(split_ratios, "TextExampleGen")
        struct = struct_pb2.Struct()
        struct.update({"separator": separator})
        packed = any_pb2.Any()
        packed.Pack(struct)
        super().__init__(
            input_base=input_base,
            input_config=example_gen_pb2.Input(
                splits=[example_gen_pb2.Input.Split(name="all", pattern=file_pattern)]
            ),
            output_config=example_gen_pb2.Output(split_config=split_config),
            custom_config=example_gen_pb2.CustomConfig(custom_config=packed),
        )
