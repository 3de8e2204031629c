"""A LoRA pipeline run with Beam on the bundled corpus: the Trainer fine-tunes a tiny checkpoint with
rank-4 adapters, writes them in PEFT's format apart from the base, the evaluator scores base plus
adapters, and the pusher registers an adapter-only version (its base registered beside it) that
MLflow's pyfunc loads and serves."""

import dataclasses
import json
import os

import numpy as np
import pytest
from conftest import CORPUS_DIR
from mlflow.tracking import MlflowClient
from mlflow_helpers import tiny_model_dir

from tfx_gpt2.config.checkpoint_shape import PEFT_CONFIG, PEFT_WEIGHTS, WEIGHTS_FILE
from tfx_gpt2.config.model import ConfigError, train_preset, with_max_steps
from tfx_gpt2.config.pipeline import RegistryConfig, TrainingSetup
from tfx_gpt2.config.settings import from_env
from tfx_gpt2.orchestration.beam_local import run_and_report
from tfx_gpt2.registry.push import ADAPTER_TAG, BASE_MODEL_TAG

NAME = "lora-tiny"
LORA = dataclasses.replace(with_max_steps(train_preset("tiny"), 16), lora_rank=4, lora_alpha=8.0,
                           checkpoint_every_seconds=0.0)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-pipeline")
    base = tiny_model_dir(str(root / "base"), n_ctx=32, n_embd=32)
    settings = from_env({}, pipeline_name=NAME, output_dir=str(root / "out"), data_root=CORPUS_DIR)
    summary = run_and_report(settings, training=TrainingSetup(train=LORA, init_checkpoint=base),
                             registry=RegistryConfig(tracking_uri=settings.tracking_uri, beat_baseline=False))
    return settings, base, summary


def trainer_output(settings):
    trainer = os.path.join(settings.output_dir, "pipelines", NAME, "Trainer", "model")
    (execution,) = os.listdir(trainer)
    return os.path.join(trainer, execution, "Format-Serving")


def test_trainer_writes_the_adapters_apart_from_the_base(lora_run):
    settings, base, _ = lora_run
    out = trainer_output(settings)
    assert os.path.exists(os.path.join(out, PEFT_WEIGHTS)) and not os.path.exists(os.path.join(out, WEIGHTS_FILE))
    with open(os.path.join(out, PEFT_CONFIG)) as f:
        config = json.load(f)
    assert config["base_model_name_or_path"] == os.path.abspath(base) and config["r"] == 4
    with open(os.path.join(out, "train_metrics.json")) as f:
        assert 0 < json.load(f)["trainable_params"] < 20_000  # the adapters' only


def test_registers_an_adapter_version_that_serves(lora_run, monkeypatch):
    import mlflow.pyfunc

    settings, base, summary = lora_run
    client = MlflowClient(settings.tracking_uri)
    (version,) = client.search_model_versions(f"name = '{NAME}'")
    assert version.tags[ADAPTER_TAG] == "lora" and version.tags[BASE_MODEL_TAG] == f"models:/{NAME}-base/1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{version.version}")
    texts = served.predict(["The", "In Python,"], params={"max_new_tokens": 5, "temperature": 0.0})
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    run = client.get_run(version.run_id)
    assert run.data.params["train.lora_rank"] == "4" and np.isfinite(run.data.metrics["eval_perplexity"])


def test_lora_without_a_base_is_refused_when_the_pipeline_is_built():
    with pytest.raises(ConfigError, match="init_checkpoint"):
        TrainingSetup(train="lora")
