"""MongoExampleGen: MongoDB collections -> tf.Examples split train/eval(/test) by a hash of the document id.

A query-based ExampleGen in the style of TFX's BigQueryExampleGen: a driver resolves what to
read (span, fingerprint, where to start) before the executor reads it with Beam, so TFX caching,
spans and lineage apply.

    gen = MongoExampleGen(MongoSource(collections=("news.articles",), text_field="body",
                                      filter='{"lang": "en"}', uri_env="MONGO_URI",
                                      incremental=True, watermark_field="_id"),
                          split_ratios={"train": 18, "eval": 1, "test": 1})

Driver (runs in the orchestrator, before the cache lookup): reads the count and the largest
watermark of each filtered collection as the input fingerprint, so an unchanged database is a
cache hit and a changed one runs again. With `incremental=True` it finds the previous export of
this component in ML Metadata and starts after its last watermark, as span `previous + 1`; the
first export, or a full one, is span 0. (Orchestrators that do not run TFX drivers -- Kubeflow V2
-- get a full export.)

Executor: one cursor per collection (see `tfx_gpt2.sources.mongo`: batches, resume after a
dropped connection), documents -> tf.Examples (`tfx_gpt2.components.examples_io`), rejected
records listed per reason. Output artifact properties: `span`, `input_fingerprint`,
`documents`, `rejected_<reason>`, `mongo_start_after` and `mongo_watermarks` (per collection,
extended JSON), `mongo_retries`.

Secrets: the component holds `MongoSource`, which names an environment variable or a secret file;
the connection string itself is read at run time by the driver and the executor, never stored.
"""

import json
import os
from typing import Any, Dict, Optional, Tuple

import apache_beam as beam
import tensorflow as tf
from google.protobuf import any_pb2, struct_pb2
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import QueryBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from tfx_gpt2.components.examples_io import (
    OUTPUT_URI_KEY,
    RecordsToExamples,
    finish_output,
    hash_split_config,
)
from tfx_gpt2.progress import get_logger
from tfx_gpt2.sources import mongo

logger = get_logger("tfx_gpt2.mongo_example_gen")

WATERMARKS_PROPERTY = "mongo_watermarks"
START_AFTER_PROPERTY = "mongo_start_after"
_WATERMARKS = "watermarks"


def _source(exec_properties: Dict[str, Any]) -> mongo.MongoSource:
    config = proto_utils.json_to_proto(
        exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY], example_gen_pb2.CustomConfig())
    struct = struct_pb2.Struct()
    config.custom_config.Unpack(struct)
    return mongo.MongoSource.from_json(struct["source"])


def _plan(exec_properties: Dict[str, Any]) -> Dict[str, Optional[str]]:
    """Collection -> the watermark (extended JSON) to start after, from the input pattern the
    driver resolved; without a driver, every collection from the start."""
    input_config = proto_utils.json_to_proto(
        exec_properties[standard_component_specs.INPUT_CONFIG_KEY], example_gen_pb2.Input())
    pattern = input_config.splits[0].pattern
    if pattern.startswith("{"):
        return json.loads(pattern)["start_after"]
    return {name: None for name in _source(exec_properties).collections}


class MongoDriver(example_gen_driver.QueryBasedDriver):
    """Resolves span, fingerprint and the start watermarks (see the module docstring)."""

    _node: Optional[Tuple[str, str]] = None

    def run(self, execution_info):
        # The IR orchestrators pass the real names here only.
        self._node = (execution_info.pipeline_info.id, execution_info.pipeline_node.node_info.id)
        return super().run(execution_info)

    def _previous_export(self, pipeline_name: str, node_id: str):
        """The newest LIVE Examples artifact of this node that carries watermarks, or None."""
        connection = self._mlmd_connection
        try:
            return self._find_previous(connection.store, pipeline_name, node_id)
        except RuntimeError:  # the launcher has not opened the connection for the driver
            with connection as m:
                return self._find_previous(m.store, pipeline_name, node_id)

    @staticmethod
    def _find_previous(store, pipeline_name: str, node_id: str):
        for context_type in ("node", "component"):
            try:
                context = store.get_context_by_type_and_name(context_type, f"{pipeline_name}.{node_id}")
            except Exception:  # noqa: BLE001 -- a context type that does not exist yet
                context = None
            if context is None:
                continue
            best = None
            for artifact in store.get_artifacts_by_context(context.id):
                if artifact.state != artifact.LIVE or WATERMARKS_PROPERTY not in artifact.custom_properties:
                    continue
                key = (artifact.custom_properties["span"].int_value, artifact.id)
                if best is None or key > best[0]:
                    best = (key, artifact)
            if best is not None:
                return best[1]
        return None

    def resolve_exec_properties(self, exec_properties, pipeline_info, component_info):
        spec = _source(exec_properties)
        names = self._node or (pipeline_info.pipeline_name, component_info.component_id)
        with mongo.connect(spec) as client:
            try:
                snapshots = {name: mongo.snapshot(client, spec, name) for name in spec.collections}
            except Exception as e:  # noqa: BLE001
                if isinstance(e, mongo.MongoSourceError):
                    raise
                raise mongo.describe_error(e, spec) from None
        fingerprint = json.dumps(
            {n: {"count": s["count"], "max_watermark": mongo.dump_watermark(s["max_watermark"])}
             for n, s in snapshots.items()}, sort_keys=True)
        previous = self._previous_export(*names) if spec.incremental and names[0] else None
        span, start_after = 0, {name: None for name in spec.collections}
        if previous is not None:
            props = previous.custom_properties
            prev_span = props["span"].int_value
            if props[example_gen_utils.FINGERPRINT_PROPERTY_NAME].string_value == fingerprint:
                # Nothing changed since the previous export: resolve to the same inputs (a cache hit).
                span, start_after = prev_span, json.loads(props[START_AFTER_PROPERTY].string_value)
            else:
                span, start_after = prev_span + 1, json.loads(props[WATERMARKS_PROPERTY].string_value)
                start_after = {name: start_after.get(name) for name in spec.collections}
        logger.info("MongoDB %s: %s; span %d, %s", ", ".join(spec.collections),
                    ", ".join(f"{n}: {s['count']:,} documents match" for n, s in snapshots.items()), span,
                    "incremental, after " + json.dumps(start_after) if spec.incremental else "full export")
        input_config = proto_utils.json_to_proto(
            exec_properties[standard_component_specs.INPUT_CONFIG_KEY], example_gen_pb2.Input())
        input_config.splits[0].pattern = json.dumps({"start_after": start_after}, sort_keys=True)
        exec_properties[standard_component_specs.INPUT_CONFIG_KEY] = proto_utils.proto_to_json(input_config)
        exec_properties[example_gen_utils.SPAN_PROPERTY_NAME] = span
        exec_properties[example_gen_utils.VERSION_PROPERTY_NAME] = None
        exec_properties[example_gen_utils.FINGERPRINT_PROPERTY_NAME] = fingerprint
        return exec_properties


class _ReadCollection(beam.DoFn):
    """(collection, start-after watermark JSON) -> Documents / Rejected; the last watermark read
    goes to the `watermarks` output."""

    def __init__(self, spec: mongo.MongoSource):
        self.spec = spec
        self.retries = beam.metrics.Metrics.counter("mongo_example_gen", "retries")

    def setup(self):
        self._connection = mongo.connect(self.spec)
        self.client = self._connection.__enter__()

    def teardown(self):
        self._connection.__exit__(None, None, None)

    def process(self, element):
        name, start_after = element
        progress: Dict[str, Any] = {}
        lower = mongo.load_watermark(start_after)
        if self.spec.incremental:
            yield from mongo.missing_watermark(self.client, self.spec, name)
        yield from mongo.read_collection(self.client, self.spec, name, lower=lower, progress=progress)
        self.retries.inc(progress["retries"])
        last = progress.get("last_watermark")
        yield beam.pvalue.TaggedOutput(_WATERMARKS, json.dumps({
            "collection": name, "retries": progress["retries"],
            "watermark": start_after if last is None else mongo.dump_watermark(last),
        }))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
def _MongoToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str):
    del split_pattern  # the plan comes from the resolved input config
    spec = _source(exec_properties)
    plan = _plan(exec_properties)
    read = (
        pipeline
        | "Collections" >> beam.Create(sorted(plan.items()))
        | "Reshuffle" >> beam.Reshuffle()  # one collection per worker
        | "Read" >> beam.ParDo(_ReadCollection(spec)).with_outputs(_WATERMARKS, main="records")
    )
    _ = read[_WATERMARKS] | "WriteWatermarks" >> beam.io.WriteToText(
        os.path.join(exec_properties[OUTPUT_URI_KEY], _WATERMARKS), file_name_suffix=".jsonl")
    return read.records | "Examples" >> RecordsToExamples(exec_properties, "mongo_example_gen")


class Executor(BaseExampleGenExecutor):
    """Reads MongoDB into tf.Examples; splitting and writing are BaseExampleGenExecutor's."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _MongoToExample

    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        spec = _source(exec_properties)
        plan = _plan(exec_properties)
        try:
            super().Do(input_dict, output_dict, {**exec_properties, OUTPUT_URI_KEY: examples.uri})
        except mongo.MongoSourceError:
            raise
        except Exception as e:  # noqa: BLE001 -- pymongo errors surface wrapped by Beam
            cause = e
            while cause is not None and not isinstance(cause, mongo.MongoSourceError):
                cause = cause.__cause__ or cause.__context__
            raise (cause or e) from None
        watermarks, retries = {}, 0
        for path in tf.io.gfile.glob(os.path.join(examples.uri, _WATERMARKS + "*.jsonl")):
            with tf.io.gfile.GFile(path) as f:
                for line in f:
                    record = json.loads(line)
                    watermarks[record["collection"]] = record["watermark"]
                    retries += record["retries"]
        examples.set_string_custom_property(WATERMARKS_PROPERTY, json.dumps(watermarks, sort_keys=True))
        examples.set_string_custom_property(START_AFTER_PROPERTY, json.dumps(plan, sort_keys=True))
        examples.set_int_custom_property("mongo_retries", retries)
        if spec.feedback_collection in plan:
            _record_feedback(examples, spec, plan, watermarks, exec_properties)
        what = f"MongoDB {', '.join(spec.collections)} (filter {spec.filter}"
        what += f", after {json.dumps(plan)})" if any(plan.values()) else ")"
        finish_output(examples, what)


def _record_feedback(examples, spec: mongo.MongoSource, plan, watermarks, exec_properties) -> None:
    """The manifest of the feedback documents this export read (what `TextExampleGen` records
    for a feedback span), for the version's lineage."""
    from tfx_gpt2.feedback.spans import FEEDBACK_MANIFEST, mongo_manifest

    name = spec.feedback_collection
    span = int(exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME) or 0)
    with mongo.connect(spec) as client:
        manifest = mongo_manifest(mongo._collection(client, name), span, mongo.load_watermark(plan.get(name)),
                                  mongo.load_watermark(watermarks.get(name)))
    if manifest is not None:
        examples.set_string_custom_property(FEEDBACK_MANIFEST, json.dumps(manifest, sort_keys=True))


class MongoExampleGen(QueryBasedExampleGen):
    """Documents from MongoDB collections, split into train/eval (/test) by document id.

    Args:
        source: a `tfx_gpt2.sources.mongo.MongoSource` (collections, filter, text field,
            metadata fields, where the connection string is, incremental export).
        split_ratios: split name -> hash buckets, e.g. `{"train": 18, "eval": 1, "test": 1}`.
    """

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    DRIVER_CLASS = MongoDriver

    def __init__(self, source: mongo.MongoSource, split_ratios: Optional[Dict[str, int]] = None):
        struct = struct_pb2.Struct()
        struct.update({"source": source.to_json()})
        packed = any_pb2.Any()
        packed.Pack(struct)
        super().__init__(
            input_config=example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name="all", pattern="resolved by MongoDriver")]),
            output_config=example_gen_pb2.Output(split_config=hash_split_config(split_ratios, "MongoExampleGen")),
            custom_config=example_gen_pb2.CustomConfig(custom_config=packed),
        )
