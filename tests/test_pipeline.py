import json

import pytest

from tfx_gpt2.config import ConfigError, GPT2Config, TrainConfig, from_json
from tfx_gpt2.pipeline import create_pipeline


def build(**kwargs):
    args = dict(pipeline_name="p", pipeline_root="/tmp/root", data_root="/tmp/data",
                mlflow_tracking_uri="sqlite:////tmp/mlflow.db")
    return create_pipeline(**{**args, **kwargs})


def test_components_and_wiring():
    pipeline = build()
    ids = [c.id for c in pipeline.components]
    assert ids == ["TextExampleGen", "BpeEncoder", "Trainer", "PerplexityEvaluator", "MlflowPusher"]
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


def test_bad_split_ratio_is_named():
    with pytest.raises(ValueError, match=r"split_ratios\['eval'\] = 0"):
        build(split_ratios={"train": 9, "eval": 0})
