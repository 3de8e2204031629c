"""The whole pipeline on the bundled corpus with the `tiny` preset (`make run`'s), run with Beam.

One shared sequence of runs into one output directory, used by every test here:
    first     the tiny pipeline (what `make run` does, in 80 steps instead of 160, evaluating every 40)
    second    the same again: every component reused from the cache
    killed    a short training (16 steps) in another process, killed with SIGKILL mid-training
    worse     the same short training: it resumes from the killed run's checkpoint, and is
              registered as the challenger only
    rescored  the champion moved by hand to the worse version, then the first settings again:
              the trained model comes from the cache, its evaluation does not (the champion
              changed), and the champion moves back to the better model
    down      the first settings with a tracking server that does not answer: it fails at the
              evaluator, and leaves the registry as it was
    lora      rank-4 LoRA adapters (16 steps) on the first run's model, registered as `e2e-tiny-lora`:
              the data components come from the cache; the version holds the adapters only, its
              base is registered beside it, and MLflow's pyfunc serves base plus adapters
    lora warm the same with a warm start: the champion of `e2e-tiny-lora` is that adapter version,
              whose adapters train on (8 steps, the warm schedule) on the same registered base,
              and the gate compares the new adapters with it on the same eval blocks

Checks ML Metadata (executions, the cache), MLflow (versions, metrics, aliases, samples, the
logged pyfunc generating text), TensorBoard (loss and text samples) and that the model beats a
unigram baseline.
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import CORPUS_DIR
from mlflow_helpers import free_port, refused_url, wait_http
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tfx_gpt2.config.model import train_preset
from tfx_gpt2.config.pipeline import OutputLayout, RegistryConfig, TrainingSetup
from tfx_gpt2.config.settings import from_env
from tfx_gpt2.orchestration.beam_local import run_and_report
from tfx_gpt2.orchestration.mlmd_runs import metadata_config
from tfx_gpt2.orchestration.run_report import ui_commands
from tfx_gpt2.registry.client import set_tracking_uri

NAME = "e2e-tiny"
COMPONENTS = {"TextExampleGen", "StatisticsGen", "TextSchemaGen", "ExampleValidator", "BpeEncoder", "Trainer",
              "PerplexityEvaluator", "MlflowPusher", "eval_tasks"}


@pytest.fixture(scope="module")
def all_runs(tmp_path_factory):
    """first, second, worse, rescored: see the module docstring."""
    from mlflow.tracking import MlflowClient

    out = str(tmp_path_factory.mktemp("e2e"))
    settings = from_env({}, pipeline_name=NAME, output_dir=out, data_root=CORPUS_DIR)
    first = run_and_report(settings, training=FIRST)
    second = run_and_report(settings, training=FIRST)
    kill_during_training(out)
    worse = run_and_report(settings, training=TrainingSetup(train=dataclasses.replace(train_preset("tiny"), **SHORT)))
    MlflowClient(tracking_uri=settings.tracking_uri).set_registered_model_alias(NAME, "champion", "2")
    rescored = run_and_report(settings, training=FIRST)
    with refused_url() as nobody:
        down = dataclasses.replace(settings, mlflow_tracking_uri=nobody)
        with pytest.raises(Exception) as down_error:
            run_and_report(down, training=FIRST)
    set_tracking_uri(settings.tracking_uri)  # the tests below read MLflow with the process's URI
    return out, first, second, worse, rescored, down_error.value


# The first run's training: the tiny preset in half its steps (it beats the unigram baseline by
# far), with two evaluations.
FIRST = TrainingSetup(train=dataclasses.replace(train_preset("tiny", 80), eval_every=40))
# The short training of `killed` and `worse`: a checkpoint every 4 steps.
SHORT = dict(max_steps=16, warmup_steps=2, eval_every=16, log_every=4, checkpoint_every=4, checkpoint_every_seconds=0)
KILLED_RUN = """
import dataclasses, json, sys
from tfx_gpt2.config.model import train_preset
from tfx_gpt2.orchestration.beam_local import run_and_report
from tfx_gpt2.config.pipeline import TrainingSetup
from tfx_gpt2.config.settings import from_env
settings = from_env({}, pipeline_name=sys.argv[1], output_dir=sys.argv[2], data_root=sys.argv[3])
short = dataclasses.replace(train_preset("tiny"), **json.loads(sys.argv[4]))
run_and_report(settings, training=TrainingSetup(train=short))
"""


def kill_during_training(out):
    """Runs the short training in another process and SIGKILLs it after its first checkpoint."""
    import glob
    import signal
    import time

    folders = os.path.join(out, "pipelines", NAME, "Trainer", "checkpoints", "*")

    def recorded():
        """The checkpoints the managers recorded as complete (a file alone may be half written)."""
        return {tf.train.latest_checkpoint(d) for d in glob.glob(folders)} - {None}

    before = recorded()  # the first run's
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, NAME, out, CORPUS_DIR, json.dumps(SHORT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and not recorded() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the short run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def runs(all_runs):
    return all_runs[:3]


def test_a_killed_run_is_superseded_and_its_training_resumed(all_runs):
    """SIGKILL mid-training: the next run marks the dead Trainer execution CANCELED and resumes
    from its checkpoint; the registry saw nothing of the killed run."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from mlflow.tracking import MlflowClient

    out, first, _, worse, _, _ = all_runs
    store = metadata_store.MetadataStore(metadata_config(layout(out).metadata_path))
    trainer = [e for e in store.get_executions() if e.type.endswith("Trainer")]
    cancelled = [e for e in trainer if e.last_known_state == metadata_store_pb2.Execution.CANCELED]
    assert len(cancelled) == 1 and cancelled[0].custom_properties["superseded_by"].string_value == worse["run_id"]
    assert not any(e.last_known_state == metadata_store_pb2.Execution.RUNNING for e in store.get_executions())
    model = [a for a in store.get_artifacts_by_type("Model")]
    metrics = json.load(open(os.path.join(max(model, key=lambda a: a.id).uri, "Format-Serving",
                                          "train_metrics.json")))
    assert metrics["resumed_from_step"] >= 4 and metrics["steps"] == SHORT["max_steps"]
    client = MlflowClient(tracking_uri=from_env({}, pipeline_name=NAME, output_dir=out).tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]  # first and worse; nothing else


def test_a_tracking_server_that_is_down_fails_the_run_and_changes_nothing(all_runs):
    from ml_metadata.metadata_store import metadata_store
    from mlflow.tracking import MlflowClient

    from tfx_gpt2.orchestration.mlmd_runs import execution_states

    out, first, _, worse, rescored, error = all_runs
    assert "did not answer" in str(error) and "mlflow server" in str(error)
    client = MlflowClient(tracking_uri=from_env({}, pipeline_name=NAME, output_dir=out).tracking_uri)
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")) == [1, 2]
    assert {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {
        "champion": "1", "challenger": "2"}
    store = metadata_store.MetadataStore(metadata_config(layout(out).metadata_path))
    states = execution_states(store, NAME)  # the failed run is the latest
    assert states["Trainer"] == "CACHED" and "MlflowPusher" not in states
    assert states["PerplexityEvaluator"] == "FAILED"  # not left RUNNING


def layout(out):
    return OutputLayout(out, NAME)


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
    store = metadata_store.MetadataStore(metadata_config(layout(out).metadata_path))
    executions = executions_by_component(store)
    assert {c: executions[c][:2] for c in COMPONENTS} == {c: ["COMPLETE", "CACHED"] for c in COMPONENTS}
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
    uri = layout(out).mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri)
    version = client.get_model_version(NAME, "1")
    assert version.tags["pipeline_name"] == NAME and version.tags["init_checkpoint"] == "scratch"
    assert version.tags["data_span"] == "0" and version.tags["pipeline_run_id"]
    run = client.get_run(version.run_id)
    assert run.data.metrics["eval_perplexity"] == pytest.approx(first["eval_perplexity"])
    assert run.data.params["model.n_ctx"] == "64"
    history = client.get_metric_history(run.info.run_id, "trainer.loss")
    assert [m.step for m in history] == [20, 40, 60, 80]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"tensorboard", "tokenizer", "samples.txt", "training_samples.json"} <= artifacts
    # In-training evaluations are named for the subset they score (8 batches of 16 of 234 blocks).
    subset = client.get_metric_history(run.info.run_id, "trainer.eval_subset_perplexity")
    assert [m.step for m in subset] == [40, 80]
    assert "trainer.eval_perplexity" not in run.data.metrics and "trainer.eval_loss" not in run.data.metrics
    samples = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/training_samples.json"))["samples"]
    assert {s["step"] for s in samples} == {40, 80} and len(samples) == 6

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")  # version 1 again
    texts = model.predict(["The for statement"], params={"max_new_tokens": 5, "temperature": 0.0})
    assert len(texts) == 1 and isinstance(texts[0], str) and texts[0]


def test_evaluation_beyond_perplexity_reaches_mlflow_tensorboard_and_lineage(runs, capsys):
    """Next-word accuracy, the bundled task files and sample quality: in the run's summary, the
    MLflow run and version, the evaluation's TensorBoard scalars, and `tfx-gpt2 lineage`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tfx_gpt2.cli import main as cli

    out, first, _ = runs
    figures = ["next_word_accuracy", "next_word_perplexity", "task_pydoc_last_word_acc",
               "task_pydoc_last_word_acc_norm", "task_pydoc_next_sentence_acc", "sample_distinct_1",
               "sample_distinct_2", "sample_repeated_4gram_share", "sample_mean_words"]
    assert 0 < first["next_word_documents"] <= 200 and first["task_pydoc_last_word_items"] == 100
    assert 0 <= first["next_word_accuracy"] <= 1 and first["next_word_perplexity"] > 1
    assert 0 < first["sample_distinct_1"] <= 1 and first["samples"] == 8 and first["sample_mean_words"] > 0
    client = MlflowClient(tracking_uri=layout(out).mlflow_tracking_uri)
    version = client.get_model_version(NAME, "1")
    run = client.get_run(version.run_id)
    for name in figures:
        assert run.data.metrics[name] == pytest.approx(first[name])
        assert float(version.tags[f"tfx_gpt2.eval.{name}"]) == pytest.approx(first[name], rel=1e-5)
    assert json.loads(version.tags["tfx_gpt2.eval.gate"]) == [
        {"metric": "eval_perplexity", "direction": "lower", "margin": 0.0}]
    samples = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/evaluation_samples.json"))
    assert len(samples) == 8 and all(s["prompt"] and "text" in s for s in samples)
    events = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/tensorboard/evaluation",
                                                 tracking_uri=layout(out).mlflow_tracking_uri)
    acc = EventAccumulator(events)
    acc.Reload()
    assert set(figures) <= set(acc.Tags()["tensors"])
    assert [e.step for e in acc.Tensors("next_word_accuracy")] == [80]  # the model's training steps
    from tfx_gpt2.orchestration.run_report import report

    printed = report(first)  # what the end of a run prints
    assert "Next word:        accuracy" in printed and "Task:             pydoc_next_sentence: acc" in printed
    assert "Samples:          distinct-1" in printed
    cli(["lineage", f"models:/{NAME}/1", "--output-dir", out])
    printed = capsys.readouterr().out
    assert "evaluation: " in printed and f"next_word_accuracy {version.tags['tfx_gpt2.eval.next_word_accuracy']}" \
        in printed and "gate: eval_perplexity lower (margin 0)" in printed


def test_tensorboard_has_training_loss(runs):
    _, first, _ = runs
    acc = EventAccumulator(os.path.join(first["tensorboard_logdir"], "train"))
    acc.Reload()
    losses = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")]
    assert len(losses) == 4 and losses[-1] < losses[0]  # steps 20, 40, 60, 80
    # Text samples by default: at each evaluation (80) and at the end (160), three prompts each.
    texts = [tf.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors("samples")]
    assert [e.step for e in acc.Tensors("samples")] == [40, 80] and all(t.count("**") == 6 for t in texts)


def get_json_when_up(url, proc):
    return json.loads(wait_http(url, proc))


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
        assert "loss" in tags["train"] and "subset_perplexity" in tags["eval"]
        text_tags = get_json_when_up(f"http://127.0.0.1:{tb_port}/data/plugin/text/tags", tb_proc)
        assert "samples" in text_tags["train"]  # TensorBoard's Text tab has the samples
    finally:
        for p in procs:
            os.killpg(p.pid, 15)
            p.wait(30)


def test_each_run_reads_back_its_own_results(all_runs):
    """Read after later runs registered other versions, a run's summary is still its own."""
    from tfx_gpt2.orchestration.run_report import summarize

    out, first, second, worse, rescored, _ = all_runs
    assert len({first["run_id"], second["run_id"], worse["run_id"], rescored["run_id"]}) == 4
    again = summarize(layout(out), first["run_id"])
    assert (again["model_version"], again["mlflow_run_id"]) == (first["model_version"], first["mlflow_run_id"])
    assert summarize(layout(out), worse["run_id"])["model_version"] == worse["model_version"] == 2
    assert set(again["executions"].values()) == {"COMPLETE"}


def test_champion_moves_only_to_a_better_model(all_runs):

    out, first, _, worse, _, _ = all_runs
    print(f"perplexities: first {first['eval_perplexity']:.2f}, worse {worse['eval_perplexity']:.2f}")
    assert (first["model_version"], worse["model_version"]) == (1, 2)
    assert first["aliases"] == "challenger,champion" and "champion_version" not in first
    # The worse model was compared with the champion (version 1) re-scored on the same eval blocks.
    assert worse["champion_version"] == 1
    assert worse["champion_eval_perplexity"] == pytest.approx(first["eval_perplexity"], rel=1e-4)
    assert not worse["blessed"] and worse["aliases"] == "challenger"
    assert "not below the champion's" in worse["reason"]
    assert worse["executions"]["TextExampleGen"] == "CACHED" and worse["executions"]["Trainer"] == "COMPLETE"


def test_a_moved_champion_is_seen_by_the_cache(all_runs):
    from mlflow.tracking import MlflowClient

    out, first, second, worse, rescored, _ = all_runs
    # The cached second run kept the blessing decided against no champion (the model is the
    # champion because of it); after the champion moved to version 2, the evaluation ran again.
    assert second["champion_key"] == first["champion_key"] == "none"
    assert rescored["executions"]["Trainer"] == "CACHED"
    assert rescored["executions"]["PerplexityEvaluator"] == "COMPLETE"
    assert rescored["champion_key"].startswith("version 2 (run ")
    assert rescored["champion_version"] == 2 and rescored["blessed"]
    assert rescored["champion_eval_perplexity"] == pytest.approx(worse["eval_perplexity"], rel=1e-4)
    # The same model is not registered twice; the champion moves back to it.
    assert rescored["model_version"] == 1 and rescored["already_pushed"] == 1
    client = MlflowClient(tracking_uri=layout(out).mlflow_tracking_uri)
    assert {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {"champion": "1", "challenger": "2"}
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{NAME}'")) == [1, 2]


LORA = dataclasses.replace(train_preset("tiny", 16), lora_rank=4, lora_alpha=8.0, checkpoint_every_seconds=0.0)


@pytest.fixture(scope="module")
def lora_run(all_runs):
    """The `lora` run (see the module docstring), after the others."""
    out, first = all_runs[0], all_runs[1]
    trainer_dir, execution = os.path.split(first["tensorboard_logdir"].rstrip("/"))
    base = os.path.join(os.path.dirname(trainer_dir), "model", execution, "Format-Serving")
    settings = from_env({}, pipeline_name=NAME, output_dir=out, data_root=CORPUS_DIR)
    summary = run_and_report(settings, training=TrainingSetup(train=LORA, init_checkpoint=base),
                             registry=RegistryConfig(tracking_uri=settings.tracking_uri,
                                                     registered_model_name=NAME + "-lora"))
    return settings, base, summary


def test_lora_run_registers_an_adapter_version_that_serves(lora_run, monkeypatch):
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from tfx_gpt2.config.checkpoint_shape import PEFT_CONFIG, PEFT_WEIGHTS, WEIGHTS_FILE
    from tfx_gpt2.registry.push import ADAPTER_TAG, BASE_MODEL_TAG

    settings, base, summary = lora_run
    assert {c: s for c, s in summary["executions"].items() if s == "CACHED"} == {
        c: "CACHED" for c in ("TextExampleGen", "StatisticsGen", "TextSchemaGen", "ExampleValidator", "BpeEncoder",
                              "eval_tasks")}
    name = NAME + "-lora"
    client = MlflowClient(settings.tracking_uri)
    (version,) = client.search_model_versions(f"name = '{name}'")
    assert version.tags[ADAPTER_TAG] == "lora" and version.tags[BASE_MODEL_TAG] == f"models:/{name}-base/1"
    assert client.get_model_version(f"{name}-base", "1").tags["tfx_gpt2.model_key"] == base
    files = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(version.run_id, "model/artifacts/model_dir")}
    assert {PEFT_CONFIG, PEFT_WEIGHTS} <= files and WEIGHTS_FILE not in files
    assert client.get_run(version.run_id).data.params["train.lora_rank"] == "4"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    texts = mlflow.pyfunc.load_model(f"models:/{name}/1").predict(["The", "In Python,"],
                                                                   params={"max_new_tokens": 5, "temperature": 0.0})
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


@pytest.fixture(scope="module")
def lora_warm_run(lora_run):
    """The `lora warm` run (see the module docstring), after the `lora` run."""
    from tfx_gpt2.config.model import warm_schedule

    settings, base, first_lora = lora_run
    setup = TrainingSetup(train=LORA, init_checkpoint=base, warm_start=True, warm_train=warm_schedule(LORA, max_steps=8))
    summary = run_and_report(settings, training=setup, registry=RegistryConfig(
        tracking_uri=settings.tracking_uri, registered_model_name=NAME + "-lora"))
    return settings, first_lora, summary


def test_a_warm_start_from_an_adapter_champion_trains_its_adapters_on(lora_warm_run, tmp_path):
    from mlflow.tracking import MlflowClient

    from tfx_gpt2.model.lora import read_peft_adapter
    from tfx_gpt2.registry.champion import download_model_dir
    from tfx_gpt2.registry.push import ADAPTER_TAG, BASE_MODEL_TAG

    settings, first_lora, summary = lora_warm_run
    name = NAME + "-lora"
    client = MlflowClient(settings.tracking_uri)
    assert first_lora["model_version"] == 1 and summary["model_version"] == 2
    version = client.get_model_version(name, "2")
    # the same base: no second version of it
    assert version.tags[ADAPTER_TAG] == "lora" and version.tags[BASE_MODEL_TAG] == f"models:/{name}-base/1"
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}-base'")] == ["1"]
    assert version.tags["tfx_gpt2.fine_tuned_from"] == "1" and version.tags["init_checkpoint"] == f"models:/{name}/1"
    # the gate re-scored the adapter champion on the same eval blocks as its own run did
    assert summary["champion_version"] == 1
    assert summary["champion_eval_perplexity"] == pytest.approx(first_lora["eval_perplexity"], rel=1e-4)
    # the adapters went on from version 1's: 8 steps at a third of the learning rate moved them a
    # little (adapters started again would start with lora_b at zero: a change as large as lora_b)
    adapters = {}
    for v in ("1", "2"):
        spec, adapters[v], base = read_peft_adapter(download_model_dir(f"models:/{name}/{v}", str(tmp_path / v),
                                                                       settings.tracking_uri))
        assert (spec.rank, base) == (LORA.lora_rank, f"models:/{name}-base/1")
    for key in (k for k in adapters["1"] if k.endswith("lora_b")):
        change = np.linalg.norm(adapters["2"][key] - adapters["1"][key]) / np.linalg.norm(adapters["1"][key])
        assert 0 < change < 0.5, (key, change)
