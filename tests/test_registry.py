"""The MLflow side of pushing, against a real `mlflow server` on localhost (sqlite store):
versions, aliases that move only on blessing, tags, metrics and artifacts, idempotent re-pushes,
the champion's download, secrets kept out, and clear errors for a server that is down or
refuses the credentials."""

import os
import socket
import threading

import pytest
from mlflow.tracking import MlflowClient
from mlflow_helpers import MlflowServer, refused_url, tiny_model_dir

from tfx_gpt2.registry.champion import download_champion
from tfx_gpt2.registry.client import CHALLENGER, CHAMPION, RegistryError
from tfx_gpt2.registry.push import push_model

NAME = "registry-test"
HISTORY = [{"step": 1, "loss": 9.0, "learning_rate": 1e-3}, {"step": 2, "loss": 8.0, "learning_rate": 5e-4}]


def push(server, model_dir, key, blessed, ppl, name=NAME, **kwargs):
    return push_model(
        tracking_uri=server.uri, experiment_name=name, registered_model_name=name, model_dir=model_dir,
        model_key=key, params={"model.n_layer": "1", "train.max_steps": "2"}, history=HISTORY,
        eval_metrics={"eval_perplexity": ppl, "eval_loss": 4.0}, blessed=blessed,
        tags={"pipeline_name": "p", "pipeline_run_id": f"run-{key}", "data_span": "0", "init_checkpoint": "scratch"},
        samples=["The sample"], input_example=["The"], **kwargs,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return [tiny_model_dir(str(root / f"m{i}"), seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def pushes(mlflow_server, models):
    first = push(mlflow_server, models[0], "a", blessed=True, ppl=100.0)
    worse = push(mlflow_server, models[1], "b", blessed=False, ppl=120.0)
    aliases_after_worse = aliases(mlflow_server)
    better = push(mlflow_server, models[2], "c", blessed=True, ppl=90.0)
    return first, worse, aliases_after_worse, better


def aliases(server, name=NAME):
    return {k: str(v) for k, v in MlflowClient(server.uri).get_registered_model(name).aliases.items()}


def test_aliases_move_only_on_blessing(mlflow_server, pushes):
    first, worse, after_worse, better = pushes
    assert (first.version, worse.version, better.version) == (1, 2, 3)
    assert first.aliases == [CHALLENGER, CHAMPION] and worse.aliases == [CHALLENGER]
    assert after_worse == {CHALLENGER: "2", CHAMPION: "1"}  # an unblessed model leaves champion alone
    assert aliases(mlflow_server) == {CHALLENGER: "3", CHAMPION: "3"}


def test_version_tags_metrics_and_artifacts(mlflow_server, pushes):
    client = MlflowClient(mlflow_server.uri)
    version = client.get_model_version(NAME, "2")
    assert {k: version.tags[k] for k in ("pipeline_name", "pipeline_run_id", "data_span", "init_checkpoint")} == {
        "pipeline_name": "p", "pipeline_run_id": "run-b", "data_span": "0", "init_checkpoint": "scratch"}
    run = client.get_run(version.run_id)
    # MLflow 3's UI opens a model-training experiment on its runs (not its GenAI view)
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.params["model.n_layer"] == "1"
    assert run.data.metrics["eval_perplexity"] == 120.0 and run.data.tags["blessed"] == "false"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "trainer.loss")] == [(1, 9.0), (2, 8.0)]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"tokenizer", "samples.txt"} <= top
    assert {os.path.basename(a.path) for a in client.list_artifacts(run.info.run_id, "tokenizer")} == {
        "encoder.json", "vocab.bpe"}
    # The pyfunc has its signature and an input example, and only the files it needs.
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{NAME}/2")
    assert "temperature" in [p.name for p in info.signature.params.params]
    assert info.saved_input_example_info is not None


def test_repush_of_the_same_model_registers_nothing(mlflow_server, pushes, models):
    again = push(mlflow_server, models[1], "b", blessed=False, ppl=120.0)
    assert again.already_pushed and again.version == 2
    versions = MlflowClient(mlflow_server.uri).search_model_versions(f"name = '{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    assert aliases(mlflow_server) == {CHALLENGER: "3", CHAMPION: "3"}  # nothing moved back


def test_champion_download(mlflow_server, pushes, models, tmp_path):
    from tfx_gpt2.model.io import load_model_dir

    champion = download_champion(mlflow_server.uri, NAME, str(tmp_path))
    assert champion.version == 3
    loaded = load_model_dir(champion.model_dir)
    original = load_model_dir(models[2])
    for a, b in zip(loaded.weights, original.weights):
        assert (a.numpy() == b.numpy()).all()
    assert sorted(os.listdir(champion.model_dir)) == ["encoder.json", "gpt2_config.json", "model.weights.npz",
                                                       "vocab.bpe"]
    assert download_champion(mlflow_server.uri, "no-such-model", str(tmp_path / "none")) is None


def test_credentials_never_reach_the_run(mlflow_server, models, monkeypatch):
    secret = "s3cr3t-token-value"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)
    result = push(mlflow_server, models[0], "secret-check", blessed=False, ppl=150.0, name="secret-check")
    run = MlflowClient(mlflow_server.uri).get_run(result.run_id)
    everything = repr(run.data.params) + repr(run.data.tags) + repr(
        MlflowClient(mlflow_server.uri).get_model_version("secret-check", str(result.version)).tags)
    assert secret not in everything
    with open(mlflow_server.db, "rb") as f:
        assert secret.encode() not in f.read()


def test_server_down_is_a_clear_error_after_bounded_retries(models, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    with refused_url() as nobody, pytest.raises(RegistryError, match=r"did not answer after 2 retries.*Start it"):
        push(type("S", (), {"uri": nobody})(), models[0], "down", blessed=True, ppl=1.0)
    # A server that hangs up on every request: the first try and 2 retries, then the same error.
    hangups = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)

        def hang_up():
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:  # closed: the test is over
                    return
                hangups.append(conn.recv(65536)[:60])
                conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        with pytest.raises(RegistryError, match=r"did not answer after 2 retries.*Start it"):
            push(type("S", (), {"uri": f"http://127.0.0.1:{server.getsockname()[1]}"})(), models[0], "down",
                 blessed=True, ppl=1.0)
    assert len(hangups) == 3 and len(set(hangups)) == 1, hangups


@pytest.mark.parametrize("port", [40381, 40123, 401, 1403])
def test_a_port_with_the_digits_of_an_http_status_is_no_refused_login(port):
    """A server that is down at a port like 40381 is down, not a refused login (HTTP 403)."""
    from tfx_gpt2.registry.client import describe_error

    down = ConnectionError(f"HTTPConnectionPool(host='127.0.0.1', port={port}): Max retries exceeded with url: "
                           f"/api/2.0/mlflow/experiments/search (Caused by ProtocolError('Connection aborted.'))")
    assert "did not answer" in str(describe_error(down, f"http://127.0.0.1:{port}"))
    refused = Exception(f"API request to http://127.0.0.1:{port}/api/2.0/mlflow/runs/create failed with error "
                        "code 403 != 200. Response body: 'Permission denied'")
    assert "refused the credentials" in str(describe_error(refused, f"http://127.0.0.1:{port}"))


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth`: MLflow's own authentication (admin / admin-pw-for-tests-7f3a)."""
    root = str(tmp_path_factory.mktemp("mlflow-auth"))
    with open(os.path.join(root, "auth.ini"), "w") as f:
        f.write("[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///" + os.path.join(root, "auth.db")
                + "\nadmin_username = admin\nadmin_password = admin-pw-for-tests-7f3a\nauthorization_function = "
                "mlflow.server.auth:authenticate_request_basic_auth\n")
    server = MlflowServer(root, extra_args=["--app-name", "basic-auth"],
                          env={"MLFLOW_AUTH_CONFIG_PATH": os.path.join(root, "auth.ini"),
                               "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key"})
    yield server
    server.stop()


def test_refused_credentials_are_a_clear_error(auth_server, models, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password-xyz")
    with pytest.raises(RegistryError, match="refused the credentials") as info:
        push(auth_server, models[0], "auth", blessed=True, ppl=1.0)
    assert "wrong-password-xyz" not in str(info.value)
    # With the right password the same push registers version 1.
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "admin-pw-for-tests-7f3a")
    assert push(auth_server, models[0], "auth", blessed=True, ppl=1.0).version == 1



def test_champion_key_follows_the_alias_and_a_champion_keeps_its_own_key(mlflow_server, models):
    from tfx_gpt2.registry.champion import COMPARED_WITH_TAG, NO_CHAMPION, champion_key

    name = "champion-key-test"
    assert champion_key(mlflow_server.uri, name, "m0") == NO_CHAMPION
    first = push(mlflow_server, models[0], "m0", blessed=True, ppl=100.0, name=name)
    first_key = f"version 1 (run {first.run_id})"
    # Another model's blessing depends on version 1; version 1's own on what it was compared with.
    assert champion_key(mlflow_server.uri, name, "m1") == first_key
    client = MlflowClient(mlflow_server.uri)
    client.set_model_version_tag(name, "1", COMPARED_WITH_TAG, NO_CHAMPION)
    assert champion_key(mlflow_server.uri, name, "m0") == NO_CHAMPION
    second = push(mlflow_server, models[1], "m1", blessed=True, ppl=90.0, name=name)
    assert champion_key(mlflow_server.uri, name, "m0") == f"version 2 (run {second.run_id})" != first_key
    # Version 1 blessed again, against version 2: it is not registered twice, and takes champion back.
    again = push(mlflow_server, models[0], "m0", blessed=True, ppl=80.0, name=name)
    assert again.already_pushed and again.version == 1 and CHAMPION in again.aliases
    assert aliases(mlflow_server, name) == {CHAMPION: "1", CHALLENGER: "2"}
