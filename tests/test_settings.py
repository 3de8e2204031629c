import json
import os

import pytest

from tfx_gpt2.config.settings import PipelineSettings, SettingsError, from_env
from tfx_gpt2.pipeline import pipeline_from_settings


def test_defaults_env_and_file(tmp_path):
    assert from_env({}) == PipelineSettings()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "124M", "max_steps": 50, "mongo_collections": ["a.b"]}))
    s = from_env({"TFX_GPT2_CONFIG": str(path), "TFX_GPT2_MAX_STEPS": "70", "MLFLOW_TRACKING_URI": "http://m:5000",
                  "TFX_GPT2_MONGO_COLLECTIONS": "db.one,db.two", "TFX_GPT2_SCHEDULE": "none"})
    assert (s.model, s.max_steps, s.mongo_collections) == ("124M", 70, ("db.one", "db.two"))
    assert s.tracking_uri == "http://m:5000" and s.schedule == ""
    assert from_env({"TFX_GPT2_OUTPUT_DIR": "/o"}).tracking_uri == "sqlite:////o/mlflow/mlflow.db"


def test_bad_values_name_the_variable(tmp_path):
    with pytest.raises(SettingsError, match=r"TFX_GPT2_MAX_STEPS = 'many' is not a valid max_steps"):
        from_env({"TFX_GPT2_MAX_STEPS": "many"})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"modle": "124M"}))
    with pytest.raises(SettingsError, match=r"unknown setting\(s\) \['modle'\]"):
        from_env({"TFX_GPT2_CONFIG": str(path)})


def _load_example(name):
    import importlib.util
    import os

    from conftest import REPO

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _by_id(pipeline):
    return {c.id: c for c in pipeline.components}


def test_beam_example_honours_mlflow_tracking_uri_and_its_flag(monkeypatch, tmp_path):
    example = _load_example("beam-local-example")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    settings = example.settings_from(example.parse_args(["--output-dir", str(tmp_path)]))
    assert settings.tracking_uri == "http://127.0.0.1:5999" and settings.pipeline_name == "tfx-gpt2-local"
    pusher = _by_id(pipeline_from_settings(settings))["MlflowPusher"]
    assert pusher.exec_properties["tracking_uri"] == "http://127.0.0.1:5999"
    settings = example.settings_from(example.parse_args(["--mlflow-tracking-uri", "http://mlflow:5000",
                                                         "--max-steps", "7", "--no-cache"]))
    assert (settings.tracking_uri, settings.max_steps, settings.enable_cache) == ("http://mlflow:5000", 7, False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    settings = example.settings_from(example.parse_args(["--output-dir", str(tmp_path)]))
    assert settings.tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"


def test_every_runner_builds_the_same_pipeline_from_the_same_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("TFX_GPT2_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("TFX_GPT2_MAX_STEPS", "9")
    example = _load_example("beam-local-example")
    from_example = example.settings_from(example.parse_args(["--pipeline-name", "tfx-gpt2"]))
    assert from_example == from_env()  # the DAG's and the Kubeflow runner's settings
    trainer = _by_id(pipeline_from_settings(from_example))["Trainer"]
    assert json.loads(json.loads(trainer.exec_properties["custom_config"])["train_config"])["max_steps"] == 9


@pytest.mark.parametrize("fmt", ["hf", "tfx-gpt2"])
def test_finetune_template_reads_the_shape_of_the_checkpoint(tmp_path, fmt):
    from mlflow_helpers import tiny_model_dir

    from tfx_gpt2.config.model import GPT2Config, from_json

    checkpoint = tiny_model_dir(str(tmp_path / "base"), n_ctx=24, n_embd=48, n_layer=3, n_head=4)
    if fmt == "hf":
        from tfx_gpt2.model.checkpoints import save_hf_checkpoint
        from tfx_gpt2.model.io import load_model_dir

        hf = str(tmp_path / "hf")
        save_hf_checkpoint(load_model_dir(checkpoint), hf, vocab_dir=checkpoint)
        checkpoint = hf
    template = _load_example("template_finetune_local_text")
    settings = template.settings_from(["--output-dir", str(tmp_path / "out"), "--init-checkpoint", checkpoint])
    by_id = _by_id(pipeline_from_settings(settings))
    assert by_id["BpeEncoder"].exec_properties["block_len"] == 25  # the checkpoint's n_ctx + 1, not tiny's 65
    custom = json.loads(by_id["Trainer"].exec_properties["custom_config"])
    assert from_json(GPT2Config, custom["model_config"]).n_layer == 3
    assert by_id["base_model"].exec_properties["artifact_uri"] == checkpoint


def test_a_model_that_contradicts_the_checkpoint_is_refused(tmp_path):
    from mlflow_helpers import tiny_model_dir

    from tfx_gpt2.config.model import ConfigError
    from tfx_gpt2.config.pipeline import TrainingSetup

    checkpoint = tiny_model_dir(str(tmp_path / "base"), n_ctx=24, n_embd=48, n_layer=3, n_head=4)
    with pytest.raises(ConfigError, match=r"does not match the checkpoint .* \(n_ctx 24, n_embd 48, n_layer 3\)"):
        _ = TrainingSetup(model="tiny", init_checkpoint=checkpoint).model_config
    with pytest.raises(ConfigError, match="is remote: its shape cannot be read"):
        _ = TrainingSetup(init_checkpoint="gs://bucket/gpt2").model_config
    assert TrainingSetup(init_checkpoint="openai:355M").model_config.n_embd == 1024


def test_connecting_to_mlflow_leaves_the_settings_of_the_next_run_alone(monkeypatch, tmp_path):
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; a second pipeline built in the same
    # process (a notebook, the templates' tests) would then log to the first one's store.
    from tfx_gpt2.registry.client import set_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    set_tracking_uri(f"sqlite:///{tmp_path}/first.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert from_env({**os.environ, "TFX_GPT2_OUTPUT_DIR": "/o"}).tracking_uri == "sqlite:////o/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mine:5000")
    set_tracking_uri(f"sqlite:///{tmp_path}/second.db")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mine:5000"


def test_evaluation_and_gate_settings():
    from tfx_gpt2.config.pipeline import GateMetric
    from tfx_gpt2.config.settings import BUNDLED_TASKS

    s = from_env({"TFX_GPT2_GATE": "eval_perplexity:lower:0.01,next_word_accuracy:higher:-0.02",
                  "TFX_GPT2_NEXT_WORD_DOCUMENTS": "50", "TFX_GPT2_EVAL_SAMPLES": "0"})
    assert s.registry_config().gate == (GateMetric("eval_perplexity", "lower", 0.01),
                                        GateMetric("next_word_accuracy", "higher", -0.02))
    assert s.eval_config().tasks_dir == BUNDLED_TASKS and s.eval_config().next_word_documents == 50
    assert s.eval_config().samples == 0
    assert from_env({"TFX_GPT2_EVAL_TASKS_DIR": "none"}).eval_config().tasks_dir == ""
    with pytest.raises(SettingsError, match="TFX_GPT2_GATE entry 'next_word_accuracy' is not metric:direction"):
        from_env({"TFX_GPT2_GATE": "next_word_accuracy"}).registry_config()
    with pytest.raises(SettingsError, match="'eval_perplexity:down'.*must be 'lower' or 'higher'"):
        from_env({"TFX_GPT2_GATE": "eval_perplexity:down"}).registry_config()
