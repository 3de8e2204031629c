"""The pipeline templates in examples/, each run on the bundled corpus with the `tiny` preset
(marked slow: three full pipeline runs; `make test-slow`)."""

import importlib.util
import os

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient
from mlflow_helpers import tiny_model_dir

pytestmark = pytest.mark.slow


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def registered(out, name):
    client = MlflowClient(tracking_uri="sqlite:///" + os.path.join(out, "mlflow", "mlflow.db"))
    return client.search_model_versions(f"name = '{name}'")


def test_finetune_local_text(tmp_path):
    # Not the tiny preset's shape: the template reads it from the checkpoint (n_ctx 32: blocks of 33).
    checkpoint = tiny_model_dir(str(tmp_path / "base"), n_ctx=32, n_embd=32, n_layer=2)
    summary = load("template_finetune_local_text").main(
        ["--output-dir", str(tmp_path / "out"), "--init-checkpoint", checkpoint, "--train", "tiny", "--max-steps", "10"])
    assert summary["model_version"] == 1
    (version,) = registered(str(tmp_path / "out"), "tfx-gpt2-finetune")
    assert version.tags["init_checkpoint"] == checkpoint


def test_new_language_from_scratch(tmp_path):
    summary = load("template_new_language").main(
        ["--output-dir", str(tmp_path / "out"), "--vocab-size", "1024", "--max-steps", "10"])
    assert summary["model_version"] == 1 and summary["data"]["vocab_size"] == 1024
    (version,) = registered(str(tmp_path / "out"), "tfx-gpt2-new-language")
    assert version.tags["init_checkpoint"] == "scratch"


def test_finetune_mongodb_with_the_bundled_corpus(tmp_path, monkeypatch):
    from mongo_helpers import SharedClient

    from tfx_gpt2.sources import mongo

    client = SharedClient()
    monkeypatch.setattr(mongo, "client_factory", lambda uri: client)
    monkeypatch.setenv("MONGO_URI", "mongodb://mongomock.invalid/")
    checkpoint = tiny_model_dir(str(tmp_path / "base"), n_ctx=64)
    template = load("template_finetune_mongodb")
    summary = template.main(["--output-dir", str(tmp_path / "out"), "--collection", "corpus.docs", "--load-bundled",
                             "--init-checkpoint", checkpoint, "--train", "tiny", "--max-steps", "10"])
    assert client["corpus"]["docs"].count_documents({}) == 79
    assert summary["model_version"] == 1 and summary["data"]["documents"] == 79
