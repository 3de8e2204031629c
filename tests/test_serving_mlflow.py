"""`mlflow models serve` serves the registered champion (an MLflow pyfunc) with MLflow's own
formats: the documented alternative to `tfx-gpt2 serve`, and the reason it exists (no Seldon body)."""

import os
import subprocess

import pytest
from mlflow_helpers import BIN, free_port, post_json, register_tiny, wait_http

NAME = "serving-mlflow-test"


@pytest.fixture(scope="module")
def champion(mlflow_server, tmp_path_factory):
    return register_tiny(mlflow_server.uri, str(tmp_path_factory.mktemp("serve") / "m"), NAME)


def start(argv, mlflow_server, tmp_path):
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri,
                                 # `mlflow models serve` starts `uvicorn` from PATH, as in an activated venv
                                 "PATH": BIN + os.pathsep + os.environ.get("PATH", "")})
    return proc, log


def stop(proc, log):
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    log.close()


BAD_SETTINGS = [
    ({"temperature": -1.0}, "temperature = -1.0 must be >= 0"),
    ({"top_p": 1.5}, "top_p = 1.5 must be in (0, 1]"),
    ({"top_p": 0.0}, "top_p = 0.0 must be in (0, 1]"),
    ({"max_new_tokens": 100}, "max_new_tokens = 100 leaves no room for the prompt"),
]


@pytest.fixture(scope="module")
def mlflow_serve(champion, mlflow_server, tmp_path_factory):
    port = free_port()
    proc, log = start([os.path.join(BIN, "mlflow"), "models", "serve", "-m", champion, "--env-manager", "local",
                       "--host", "127.0.0.1", "-p", str(port)], mlflow_server, tmp_path_factory.mktemp("mlserve"))
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc, log)


def test_mlflow_models_serve_answers_prompts(mlflow_serve):
    greedy = {"max_new_tokens": 5, "temperature": 0.0}
    status, body = post_json(mlflow_serve + "/invocations", {"inputs": ["Hello", "The"], "params": greedy})
    assert status == 200, body
    texts = body["predictions"]
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    status, again = post_json(mlflow_serve + "/invocations",
                              {"dataframe_records": [{"prompt": "Hello"}, {"prompt": "The"}], "params": greedy})
    assert status == 200 and again["predictions"] == texts


@pytest.mark.parametrize("settings,reason", BAD_SETTINGS)
def test_mlflow_models_serve_rejects_bad_settings(mlflow_serve, settings, reason):
    status, body = post_json(mlflow_serve + "/invocations", {"inputs": ["Hello"], "params": settings})
    assert status == 400 and reason in body["message"], body


def test_mlflow_models_serve_cannot_read_seldon_bodies(mlflow_serve):
    # Why `tfx-gpt2 serve` exists.
    status, _ = post_json(mlflow_serve + "/invocations", {"data": {"ndarray": ["Hello"]}})
    assert status == 400
