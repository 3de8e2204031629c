"""The registered champion answering over HTTP: `mlflow models serve` with MLflow's formats, and
`tfx-gpt2 serve` with Seldon's body too; bad sampling settings get 400 with the reason."""

import os
import subprocess

import pytest
from mlflow_helpers import BIN, free_port, post_json, tiny_model_dir, wait_http

from tfx_gpt2.registry import push_model

NAME = "serving-test"


@pytest.fixture(scope="module")
def champion(mlflow_server, tmp_path_factory):
    model_dir = tiny_model_dir(str(tmp_path_factory.mktemp("serve") / "m"))
    push_model(tracking_uri=mlflow_server.uri, experiment_name=NAME, registered_model_name=NAME,
               model_dir=model_dir, model_key="serve-1", params={}, history=[], eval_metrics={}, blessed=True)
    return f"models:/{NAME}@champion"


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


@pytest.fixture(scope="module")
def our_serve(champion, mlflow_server, tmp_path_factory):
    port = free_port()
    proc, log = start([os.path.join(BIN, "tfx-gpt2"), "serve", "-m", champion, "--port", str(port)], mlflow_server,
                      tmp_path_factory.mktemp("ourserve"))
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


def test_our_server_takes_seldon_and_mlflow_bodies(our_serve, mlflow_serve):
    greedy = {"max_new_tokens": 5, "temperature": 0.0}
    _, reference = post_json(mlflow_serve + "/invocations", {"inputs": ["Hello"], "params": greedy})
    status, body = post_json(our_serve + "/api/v1.0/predictions",
                             {"data": {"ndarray": ["Hello"]}, "parameters": greedy})
    assert status == 200 and body["data"]["ndarray"] == reference["predictions"], body
    status, body = post_json(our_serve + "/invocations", {"data": {"ndarray": [["Hello"]]}, "parameters": greedy})
    assert status == 200 and body["predictions"] == reference["predictions"]
    status, body = post_json(our_serve + "/invocations", {"inputs": ["Hello"], "params": greedy})
    assert status == 200 and body["predictions"] == reference["predictions"]


@pytest.mark.parametrize("settings,reason", BAD_SETTINGS + [({"temprature": 1.0, "max_new_tokens": 2}, "unknown sampling setting")])
def test_our_server_rejects_bad_settings(our_serve, settings, reason):
    status, body = post_json(our_serve + "/api/v1.0/predictions", {"data": {"ndarray": ["Hi"]}, "parameters": settings})
    assert status == 400 and reason in body["status"]["info"], body


def test_our_server_explains_a_wrong_body(our_serve):
    status, body = post_json(our_serve + "/api/v1.0/predictions", {"prompts": ["Hi"]})
    assert status == 400 and 'send {"data": {"ndarray"' in body["status"]["info"]
