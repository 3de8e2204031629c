"""Data validation for text: TFX's StatisticsGen and ExampleValidator around a schema for documents.

    StatisticsGen(examples) -> TextSchemaGen(statistics) -> ExampleValidator(statistics, schema,
                                                              custom_validation_config=...)

`TextSchemaGen` infers the schema from the train split's statistics like TFX's SchemaGen, except
that no string feature gets a closed vocabulary (`text` and `doc_id` are free text: every new
document would otherwise be an "unexpected value"). `text_validation_config` adds checks on
the per-document features that the ExampleGens write (see `examples_io`):

    num_chars min >= min_chars        empty (or too short) documents
    num_chars max <= max_chars        length outliers (a whole dump in one record, ...)
    num_replacement_chars max == 0    U+FFFD in the text: it was decoded with errors upstream

Anomalies land in ExampleValidator's `anomalies` artifact (per split) and are printed by
`tfx_gpt2.orchestration.run_report.summarize`; the statistics (text length, value counts) show in TFDV's viewer.
"""

import json
import os

from google.protobuf import text_format
from tensorflow_data_validation.anomalies.proto import custom_validation_config_pb2
from tfx import v1 as tfx
from tfx.components.example_validator import executor as example_validator_executor
from tfx.components.example_validator.component import ExampleValidator
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from tfx_gpt2.components.examples_io import NUM_CHARS_FEATURE, NUM_REPLACEMENT_CHARS_FEATURE
from tfx_gpt2.progress import get_logger

logger = get_logger("tfx_gpt2.data_validation")

SCHEMA_FILE = "schema.pbtxt"


def text_validation_config(min_chars: int = 1, max_chars: int = 1_000_000):
    """Checks on document length and decoding problems (see the module docstring)."""
    if min_chars < 0 or max_chars < max(min_chars, 1):
        raise ValueError(
            f"min_chars = {min_chars}, max_chars = {max_chars}: need 0 <= min_chars <= max_chars and max_chars >= 1."
        )
    return text_format.Parse(f"""
feature_validations {{
  feature_path {{ step: "{NUM_CHARS_FEATURE}" }}
  validations {{
    sql_expression: "feature.num_stats.min >= {min_chars}"
    severity: ERROR
    description: "documents shorter than {min_chars} characters (empty documents): check the source's text field"
  }}
  validations {{
    sql_expression: "feature.num_stats.max <= {max_chars}"
    severity: ERROR
    description: "documents longer than {max_chars} characters: check how the source splits documents"
  }}
}}
feature_validations {{
  feature_path {{ step: "{NUM_REPLACEMENT_CHARS_FEATURE}" }}
  validations {{
    sql_expression: "feature.num_stats.max = 0"
    severity: ERROR
    description: "text holds U+FFFD replacement characters: it was decoded with errors before it reached the source"
  }}
}}
""", custom_validation_config_pb2.CustomValidationConfig())


@tfx.dsl.components.component
def TextSchemaGen(
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
    split: tfx.dsl.components.Parameter[str] = "train",
):
    """Infers a schema from the statistics of `split`, with no closed string domains."""
    import tensorflow_data_validation as tfdv

    splits = artifact_utils.decode_split_names(statistics.split_names)
    if split not in splits:
        raise ValueError(f"TextSchemaGen split = {split!r}; the statistics have splits {splits}.")
    stats = stats_artifact_utils.load_statistics(statistics, split).proto()
    inferred = tfdv.infer_schema(stats, infer_feature_shape=True, max_string_domain_size=0)
    io_utils.write_pbtxt_file(os.path.join(schema.uri, SCHEMA_FILE), inferred)
    logger.info("schema of %d features inferred from the %s statistics", len(inferred.feature), split)


class _ValidatorExecutor(example_validator_executor.Executor):
    """TFX's ExampleValidator executor, taking the custom validation config as JSON text too."""

    def Do(self, input_dict, output_dict, exec_properties):
        value = exec_properties.get(standard_component_specs.CUSTOM_VALIDATION_CONFIG_KEY)
        if isinstance(value, str) and value:
            exec_properties = {**exec_properties, standard_component_specs.CUSTOM_VALIDATION_CONFIG_KEY:
                               proto_utils.json_to_proto(value, custom_validation_config_pb2.CustomValidationConfig())}
        empty = empty_splits(artifact_utils.get_single_instance(input_dict[standard_component_specs.STATISTICS_KEY]))
        if empty:  # a small span (a few feedback documents) may put none in a split: nothing to validate there
            logger.warning("split(s) %s of these examples hold no document; they are not validated", empty)
            excluded = json.loads(exec_properties.get(standard_component_specs.EXCLUDE_SPLITS_KEY) or "[]")
            exec_properties = {**exec_properties,
                               standard_component_specs.EXCLUDE_SPLITS_KEY: json.dumps(sorted(set(excluded) | set(empty)))}
        return super().Do(input_dict, output_dict, exec_properties)


def empty_splits(statistics) -> list:
    """The splits whose statistics count no example."""
    empty = []
    for split in artifact_utils.decode_split_names(statistics.split_names):
        stats = stats_artifact_utils.load_statistics(statistics, split).proto()
        if not stats.datasets or stats.datasets[0].num_examples == 0:
            empty.append(split)
    return empty


class TextExampleValidator(ExampleValidator):
    """TFX's ExampleValidator with `text_validation_config` carried as a JSON string.

    TFX turns a proto execution parameter into a `make_proto` placeholder, which Kubeflow V2's
    compiler refuses ("Invalid placeholder for exec prop custom_validation_config"); as text it
    compiles for every orchestrator, and the executor turns it back into the proto.
    """

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(_ValidatorExecutor)

    def __init__(self, statistics, schema, custom_validation_config=None):
        super().__init__(statistics=statistics, schema=schema)
        if custom_validation_config is not None:
            self.exec_properties[standard_component_specs.CUSTOM_VALIDATION_CONFIG_KEY] = proto_utils.proto_to_json(
                custom_validation_config)
