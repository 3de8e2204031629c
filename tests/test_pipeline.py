import json
import os

import pytest

from tfx_gpt2.config.model import ConfigError, GPT2Config, TrainConfig, from_json
from tfx_gpt2.pipeline import DataConfig, RegistryConfig, TextFolder, TrainingSetup, create_pipeline

DATA_FIELDS = {"vocab", "vocab_size", "special_tokens", "control_feature", "split_ratios", "max_spans", "min_chars",
               "max_chars", "validate"}
TRAINING_FIELDS = {"model", "train", "init_checkpoint"}


def build(source=None, **kwargs):
    """create_pipeline with each keyword routed to its config."""
    data = DataConfig(source or TextFolder("/tmp/data"), **{k: v for k, v in kwargs.items() if k in DATA_FIELDS})
    training = TrainingSetup(**{k: v for k, v in kwargs.items() if k in TRAINING_FIELDS})
    registry = RegistryConfig(kwargs.pop("mlflow_tracking_uri", "sqlite:////tmp/mlflow.db"))
    assert set(kwargs) <= DATA_FIELDS | TRAINING_FIELDS, kwargs
    return create_pipeline("p", "/tmp/root", data, training, registry)


def test_components_and_wiring():
    pipeline = build()
    ids = [c.id for c in pipeline.components]
    assert sorted(ids) == sorted(["TextExampleGen", "StatisticsGen", "TextSchemaGen", "ExampleValidator", "BpeEncoder",
                                  "Trainer", "PerplexityEvaluator", "MlflowPusher"])
    by_id = {c.id: c for c in pipeline.components}
    assert by_id["BpeEncoder"].exec_properties["block_len"] == 65  # tiny: n_ctx 64 + 1
    custom = by_id["Trainer"].exec_properties["custom_config"]
    custom = json.loads(custom) if isinstance(custom, str) else custom
    assert from_json(GPT2Config, custom["model_config"]).n_ctx == 64
    assert from_json(TrainConfig, custom["train_config"]).max_steps == 160
    assert by_id["MlflowPusher"].exec_properties["registered_model_name"] == "p"
    assert pipeline.enable_cache


def test_presets_and_configs_are_accepted():
    pipeline = build(model=GPT2Config(n_ctx=32, n_embd=32, n_layer=1, n_head=1), train="finetune")
    by_id = {c.id: c for c in pipeline.components}
    assert by_id["BpeEncoder"].exec_properties["block_len"] == 33


def test_credentials_in_tracking_uri_are_refused():
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD"):
        build(mlflow_tracking_uri="https://alice:s3cret@mlflow.example.com")
    for uri in ("http://mlflow:5000/?token=t0ps3cret", "https://mlflow.example.com/api?x=1&Access_Token=t0ps3cret",
                "http://mlflow:5000/?sig=t0ps3cret"):
        with pytest.raises(ConfigError, match="query string .*=\\*\\*\\*.*MLFLOW_TRACKING_TOKEN") as info:
            build(mlflow_tracking_uri=uri)
        assert "t0ps3cret" not in str(info.value)
    build(mlflow_tracking_uri="http://mlflow:5000/?x=1")  # a harmless query string is kept


def test_redacted_uris_drop_user_password_and_query():
    from tfx_gpt2.registry.client import redact_uri

    assert redact_uri("https://alice:pw@mlflow:5000/a?token=t") == "https://mlflow:5000/a"
    assert redact_uri("sqlite:///x/mlflow.db") == "sqlite:///x/mlflow.db"


def test_bad_split_ratio_is_named():
    with pytest.raises(ValueError, match=r"split_ratios\['eval'\] = 0"):
        build(split_ratios={"train": 9, "eval": 0})


def test_trained_vocabulary_feeds_the_encoder():
    pipeline = build(vocab="train", vocab_size=8000, special_tokens=["<|dialogue|>"])
    by_id = {c.id: c for c in pipeline.components}
    assert by_id["VocabTrainer"].exec_properties["vocab_size"] == 8000
    assert json.loads(by_id["VocabTrainer"].exec_properties["special_tokens"]) == ["<|dialogue|>"]
    assert by_id["BpeEncoder"].inputs["vocabulary"].producer_component_id == "VocabTrainer"
    with pytest.raises(ConfigError, match="give vocab='train' together with vocab_size"):
        build(vocab="train")
    with pytest.raises(ConfigError, match="give vocab='train' together with vocab_size"):
        build(vocab_size=8000)


def test_incremental_mongodb_source_reads_spans_through_a_resolver():
    from tfx_gpt2.sources.mongo import MongoSource

    source = MongoSource(collections=("news.articles",), text_field="body", incremental=True)
    pipeline = build(source, max_spans=7, split_ratios={"train": 18, "eval": 1, "test": 1})
    by_id = {c.id: c for c in pipeline.components}
    assert "MongoExampleGen" in by_id and "TextExampleGen" not in by_id
    assert by_id["BpeEncoder"].inputs["examples"].producer_component_id == "latest_spans"
    assert by_id["StatisticsGen"].inputs["examples"].producer_component_id == "MongoExampleGen"
    # The component holds the name of the variable, never a connection string.
    assert "MONGO_URI" in json.dumps(by_id["MongoExampleGen"].exec_properties, default=str)


def test_split_ratios_need_train_and_eval():
    with pytest.raises(ValueError, match="needs a 'train' and an 'eval' split"):
        build(split_ratios={"train": 9, "test": 1})


def test_fine_tuning_is_an_explicit_base_model_input(tmp_path):
    from mlflow_helpers import tiny_model_dir

    by_id = {c.id: c for c in build().components}
    assert by_id["Trainer"].inputs.get("base_model") is None  # from scratch by default
    checkpoint = tiny_model_dir(str(tmp_path / "gpt2"))
    imported = {c.id: c for c in build(init_checkpoint=checkpoint).components}
    assert imported["base_model"].exec_properties["artifact_uri"] == checkpoint
    assert imported["BpeEncoder"].exec_properties["block_len"] == 17  # the checkpoint's n_ctx + 1
    assert imported["Trainer"].inputs["base_model"].producer_component_id == "base_model"
    downloaded = {c.id: c for c in build(init_checkpoint="openai:355M").components}
    assert downloaded["base_model"].exec_properties["size"] == "355M"
    assert json.loads(downloaded["MlflowPusher"].exec_properties["params_json"])["train.init"] == "openai:355M"


def test_the_evaluation_settings_and_the_gate_reach_the_evaluator(tmp_path):
    from conftest import REPO

    from tfx_gpt2.config.pipeline import EvalConfig, GateMetric

    tasks = os.path.join(REPO, "data", "tasks")
    gate = (GateMetric("eval_perplexity", "lower", 0.01), GateMetric("task_pydoc_last_word_acc", "higher", -0.05))
    registry = RegistryConfig("sqlite:////tmp/mlflow.db", gate=gate)
    pipeline = create_pipeline("p", "/tmp/root", DataConfig(TextFolder("/tmp/data")), TrainingSetup(), registry,
                               evaluation=EvalConfig(tasks_dir=tasks, next_word_documents=50, samples=4))
    by_id = {c.id: c for c in pipeline.components}
    evaluator = by_id["PerplexityEvaluator"]
    assert by_id["eval_tasks"].exec_properties["artifact_uri"] == tasks
    assert set(evaluator.inputs) == {"model", "examples", "documents", "tasks"}
    assert evaluator.inputs["documents"] is by_id["BpeEncoder"].inputs["examples"]  # the documents as text
    assert (evaluator.exec_properties["next_word_documents"], evaluator.exec_properties["samples"]) == (50, 4)
    assert json.loads(evaluator.exec_properties["gate"]) == [
        {"metric": "eval_perplexity", "direction": "lower", "margin": 0.01},
        {"metric": "task_pydoc_last_word_acc", "direction": "higher", "margin": -0.05}]
    # Off: no importer, no documents input; the default gate is perplexity with min_improvement.
    off = create_pipeline("p", "/tmp/root", DataConfig(TextFolder("/tmp/data")), TrainingSetup(),
                          RegistryConfig("sqlite:////tmp/mlflow.db", min_improvement=0.02),
                          evaluation=EvalConfig(next_word_documents=0, samples=0))
    by_id = {c.id: c for c in off.components}
    assert "eval_tasks" not in by_id and set(by_id["PerplexityEvaluator"].inputs) == {"model", "examples"}
    assert json.loads(by_id["PerplexityEvaluator"].exec_properties["gate"]) == [
        {"metric": "eval_perplexity", "direction": "lower", "margin": 0.02}]


@pytest.mark.parametrize("gate, evaluation, message", [
    (("next_word_accuracy", "higher"), dict(next_word_documents=0), "does not measure"),
    (("task_nope_acc", "higher"), dict(tasks_dir="TASKS"), "has the tasks \\['pydoc_last_word', 'pydoc_next_sentence'\\]"),
    (("task_pydoc_last_word_acc", "higher"), dict(), "does not measure"),
    (("sample_distinct_2", "higher"), dict(samples=0), "does not measure"),
])
def test_a_gate_metric_that_is_not_measured_is_refused_when_the_pipeline_is_built(gate, evaluation, message):
    from conftest import REPO

    from tfx_gpt2.config.pipeline import EvalConfig, GateMetric

    evaluation = {k: os.path.join(REPO, "data", "tasks") if v == "TASKS" else v for k, v in evaluation.items()}
    with pytest.raises(ConfigError, match=message):
        create_pipeline("p", "/tmp/root", DataConfig(TextFolder("/tmp/data")), TrainingSetup(),
                        RegistryConfig("sqlite:////tmp/mlflow.db", gate=(GateMetric(*gate),)),
                        evaluation=EvalConfig(**evaluation))


def test_bad_evaluation_settings_are_named():
    from tfx_gpt2.config.pipeline import EvalConfig, GateMetric

    with pytest.raises(ConfigError, match="EvalConfig.samples = -1 must be a whole number"):
        EvalConfig(samples=-1)
    with pytest.raises(ConfigError, match="EvalConfig.tasks_dir = '/nowhere' is not a folder"):
        EvalConfig(tasks_dir="/nowhere")
    with pytest.raises(ConfigError, match="min_improvement applies to the default gate only"):
        RegistryConfig("sqlite:////tmp/m.db", min_improvement=0.01, gate=(GateMetric("eval_perplexity"),))
    with pytest.raises(ConfigError, match="names a metric twice"):
        RegistryConfig("sqlite:////tmp/m.db", gate=(GateMetric("eval_perplexity"), GateMetric("eval_perplexity")))

