"""Shared fixtures: the official tokenizer, a small corpus, and quiet TensorFlow logs."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_DIR = os.path.join(REPO, "data", "pydoc_topics")


@pytest.fixture(scope="session")
def tokenizer():
    from tfx_gpt2.text.bpe import load_tokenizer

    return load_tokenizer("gpt2")


@pytest.fixture(scope="session")
def corpus_text():
    parts = []
    for name in sorted(os.listdir(CORPUS_DIR)):
        with open(os.path.join(CORPUS_DIR, name), encoding="utf-8") as f:
            parts.append(f.read())
    return "".join(parts)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on localhost (sqlite store), shared by the tests of a session."""
    from mlflow_helpers import MlflowServer

    server = MlflowServer(str(tmp_path_factory.mktemp("mlflow-server")))
    yield server
    server.stop()
