"""Shared fixtures: the official tokenizer, a small corpus, and quiet TensorFlow logs."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The MLflow servers the tests start (`mlflow server`, `mlflow ui`) serve tracking and the registry;
# MLflow 3's job runner (for GenAI jobs) would start six more processes, each importing MLflow.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
sys.path.insert(0, os.path.dirname(__file__))

import time  # noqa: E402

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_DIR = os.path.join(REPO, "data", "pydoc_topics")


def wait_until(condition, what, timeout: float = 120.0, interval: float = 0.05):
    """Polls `condition()` until it returns something true, and returns that; after `timeout`
    seconds fails with `what` (a string, or a function giving one, called only then)."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(interval)


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


# The test files, longest first (seconds per file measured with `pytest --durations=0`, 2 workers).
# `make test` hands the files to the xdist workers in this order (`--no-loadscope-reorder`: without it
# xdist hands out the files with the most tests first, and a long file with few tests started last
# kept one worker busy minutes after the other had finished).
LONGEST_FIRST = ["test_e2e.py", "test_airflow.py", "test_continuous.py", "test_kubeflow.py", "test_trainer_features.py",
                 "test_benchmarks.py", "test_serving_deploy.py", "test_beam_scaling.py", "test_mongo_example_gen.py",
                 "test_serving_access.py", "test_export.py", "test_registry.py", "test_faults.py", "test_serving.py",
                 "test_serving_memory.py", "test_trainer_run_fn.py", "test_serving_isolation.py", "test_feedback.py",
                 "test_data_validation.py", "test_playground.py", "test_serving_mlflow.py", "test_lora_registry.py",
                 "test_pyfunc.py", "test_engine.py", "test_cli.py", "test_training.py", "test_sampling.py",
                 "test_generate.py", "test_docs.py"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))
