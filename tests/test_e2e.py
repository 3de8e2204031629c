"""The whole pipeline on the bundled corpus with the `tiny` preset, run twice with Beam.

Checks ML Metadata (one execution per component, then a fully cached second run), MLflow (the
registered version, its metrics and aliases, the logged pyfunc generating text), TensorBoard
(training loss in the event files) and that the model beats a unigram baseline.
"""

import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest
import tensorflow as tf
from conftest import CORPUS_DIR
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tfx_gpt2.local import LocalPaths, metadata_config, run_and_report, ui_commands

NAME = "e2e-tiny"
COMPONENTS = {"TextExampleGen", "StatisticsGen", "TextSchemaGen", "ExampleValidator", "BpeEncoder", "Trainer",
              "PerplexityEvaluator", "MlflowPusher"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("e2e"))
    first = run_and_report(NAME, CORPUS_DIR, out)
    second = run_and_report(NAME, CORPUS_DIR, out)
    return out, first, second


def executions_by_component(store):
    from ml_metadata.proto import metadata_store_pb2

    result = {}
    for e in store.get_executions():
        node = [c.name for c in store.get_contexts_by_execution(e.id) if c.type == "node"][0].split(".", 1)[1]
        result.setdefault(node, []).append(metadata_store_pb2.Execution.State.Name(e.last_known_state))
    return result


def test_metadata_counts_and_cache(runs):
    from ml_metadata.metadata_store import metadata_store

    out, first, second = runs
    assert first["executions"] == {c: "COMPLETE" for c in COMPONENTS}
    assert second["executions"] == {c: "CACHED" for c in COMPONENTS}
    store = metadata_store.MetadataStore(metadata_config(LocalPaths(out, NAME).metadata_path))
    assert executions_by_component(store) == {c: ["COMPLETE", "CACHED"] for c in COMPONENTS}
    assert second["model_version"] == first["model_version"] == 1


def test_data_summary_of_the_bundled_corpus(runs):
    _, first, _ = runs
    data = first["data"]
    assert data["documents"] == 79 and data["empty_documents"] == 0 and data["rejected"] == {}
    assert data["anomalies"] == {"train": [], "eval": []}  # the bundled corpus is clean
    assert data["splits"]["train"]["tokens"] > 100_000 and data["vocab_size"] == 50257


def test_model_beats_unigram_baseline(runs):
    _, first, _ = runs
    print(f"eval perplexity {first['eval_perplexity']:.2f}, unigram {first['eval_unigram_perplexity']:.2f}")
    assert first["eval_perplexity"] < first["eval_unigram_perplexity"]
    assert first["eval_tokens"] > 10_000


def test_mlflow_version_metrics_and_model(runs):
    import mlflow
    from mlflow.tracking import MlflowClient

    out, first, _ = runs
    uri = LocalPaths(out, NAME).mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions(f"name='{NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "1"
    run = client.get_run(versions[0].run_id)
    assert run.data.metrics["eval_perplexity"] == pytest.approx(first["eval_perplexity"])
    assert run.data.params["model.n_ctx"] == "64"
    history = client.get_metric_history(run.info.run_id, "trainer.loss")
    assert [m.step for m in history] == list(range(20, 161, 20))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"tensorboard", "tokenizer", "samples.txt"} <= artifacts

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    texts = model.predict(["The for statement"], params={"max_new_tokens": 5, "temperature": 0.0})
    assert len(texts) == 1 and isinstance(texts[0], str) and texts[0]


def test_tensorboard_has_training_loss(runs):
    _, first, _ = runs
    acc = EventAccumulator(os.path.join(first["tensorboard_logdir"], "train"))
    acc.Reload()
    losses = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")]
    assert len(losses) == 8 and losses[-1] < losses[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json_when_up(url, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def test_printed_ui_commands_serve_the_results(runs):
    _, first, _ = runs
    mlflow_port, tb_port = free_port(), free_port()
    commands = ui_commands(first, mlflow_port=mlflow_port, tensorboard_port=tb_port)
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for argv in commands.values()]
    try:
        mlflow_proc, tb_proc = procs
        model = get_json_when_up(
            f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/registered-models/get?name={NAME}", mlflow_proc)
        assert model["registered_model"]["aliases"]
        tags = get_json_when_up(f"http://127.0.0.1:{tb_port}/data/plugin/scalars/tags", tb_proc)
        assert "loss" in tags["train"] and "perplexity" in tags["eval"]
    finally:
        for p in procs:
            os.killpg(p.pid, 15)
            p.wait(30)
