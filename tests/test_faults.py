"""Fault injection on the registry and the run records: pushes interrupted between registering a
version and moving its aliases, pushes killed with SIGTERM and SIGKILL, two pushes at once, a
champion that moves between a model's evaluation and its push, and runs whose process died. Each
test asserts the state left behind (versions, aliases, MLflow run states, ML Metadata execution
states), against a real `mlflow server` (sqlite store) and real processes killed with signals.

The pipeline-level faults (the tracking server down, SIGKILL during training and a re-run, MongoDB
connections dropping) are in test_e2e.py, test_trainer_features.py and test_mongo_wire.py."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow_helpers import tiny_model_dir
from test_registry import aliases, push

from tfx_gpt2.registry.client import CHALLENGER, CHAMPION

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault-models")
    return [tiny_model_dir(str(root / f"m{i}"), seed=i) for i in range(2)]


def test_a_push_interrupted_after_registering_is_finished_by_its_retry(mlflow_server, models, monkeypatch):
    name = "faults-interrupted"

    def lost(self, *args, **kwargs):
        raise MlflowException("injected: the connection dropped")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", lost)
    with pytest.raises(MlflowException, match="injected"):
        push(mlflow_server, models[0], "k0", blessed=True, ppl=100.0, name=name)
    monkeypatch.undo()
    client = MlflowClient(mlflow_server.uri)
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert aliases(mlflow_server, name) == {}  # registered, but no alias yet
    retry = push(mlflow_server, models[0], "k0", blessed=True, ppl=100.0, name=name)
    assert retry.already_pushed and retry.version == 1 and retry.aliases == [CHALLENGER, CHAMPION]
    assert aliases(mlflow_server, name) == {CHALLENGER: "1", CHAMPION: "1"}
    # A later version is not undone by another retry of the first push.
    push(mlflow_server, models[1], "k1", blessed=False, ppl=120.0, name=name)
    push(mlflow_server, models[0], "k0", blessed=True, ppl=100.0, name=name)
    assert aliases(mlflow_server, name) == {CHALLENGER: "2", CHAMPION: "1"}


def start_push(server, model_dir, key, name, stall_in="_log_files"):
    """A push in another process that stalls (prints STALLED, sleeps) in `registry.<stall_in>`."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {TESTS!r})
        import tfx_gpt2.registry.push as registry
        from test_registry import push

        def stall(*args, **kwargs):
            print("STALLED", flush=True)
            time.sleep(120)

        setattr(registry, {stall_in!r}, stall)

        class Server:
            uri = {server.uri!r}

        push(Server, {model_dir!r}, {key!r}, blessed=True, ppl=100.0, name={name!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("STALLED"):
            return proc
    raise AssertionError("the push never reached the stall:\n" + "".join(lines[-30:]))


def runs_of(server, name):
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name(name)
    return {r.info.run_id: r.info.status for r in client.search_runs([experiment.experiment_id])}


def test_killed_pushes_leave_no_run_running(mlflow_server, models):
    name = "faults-killed"
    # SIGTERM while logging: the run ends KILLED, nothing is registered.
    proc = start_push(mlflow_server, models[0], "k0", name)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) != 0
    assert list(runs_of(mlflow_server, name).values()) == ["KILLED"]
    # SIGKILL cannot be caught: the run stays RUNNING until the next push ends it.
    proc = start_push(mlflow_server, models[0], "k0", name)
    proc.kill()
    proc.wait(60)
    assert sorted(runs_of(mlflow_server, name).values()) == ["KILLED", "RUNNING"]
    result = push(mlflow_server, models[0], "k0", blessed=True, ppl=100.0, name=name)
    states = runs_of(mlflow_server, name)
    assert states.pop(result.run_id) == "FINISHED"
    assert sorted(states.values()) == ["KILLED", "KILLED"]
    assert result.version == 1 and aliases(mlflow_server, name) == {CHALLENGER: "1", CHAMPION: "1"}


LOCKED = textwrap.dedent("""
    import sys, time
    from tfx_gpt2.registry.locks import registry_lock
    with registry_lock(sys.argv[1], sys.argv[2]):
        start = time.time()
        time.sleep(1.5)
        print(start, time.time(), flush=True)
""")


@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_pushes_to_one_model_are_serialised(store, mlflow_server, tmp_path):
    uri = mlflow_server.uri if store == "server" else "sqlite:///" + str(tmp_path / "mlflow.db")
    procs = [subprocess.Popen([sys.executable, "-c", LOCKED, uri, f"faults-lock-{store}"], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    spans = sorted(tuple(map(float, p.communicate(timeout=120)[0].split())) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    (_, first_end), (second_start, _) = spans
    assert second_start >= first_end  # one after the other, never both inside


def test_a_champion_that_moved_after_the_evaluation_is_compared_at_push_time(mlflow_server, models, tmp_path):
    """Two runs at once: both evaluated against no champion; the first push takes it, so the second
    is decided again against it, on the same eval blocks, under the lock."""
    from test_training import write_blocks
    from tfx.types import standard_artifacts

    from tfx_gpt2.components.mlflow_pusher import current_blessing
    from tfx_gpt2.config.pipeline import GateMetric
    from tfx_gpt2.registry.blessing import gate_json
    from tfx_gpt2.registry.champion import NO_CHAMPION
    from tfx_gpt2.training.quality import QualityData
    from tfx_gpt2.training.tasks import TaskItem

    name = "faults-moved"
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = json.dumps(["train", "eval"])
    write_blocks(str(tmp_path / "examples" / "Split-eval" / "blocks.gz"), [[(7 * i + j) % 500 for j in range(17)]
                                                                          for i in range(4)])

    def evaluated(perplexity, **gated):
        evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
        evaluation.uri = str(tmp_path / f"evaluation-{perplexity}-{len(gated)}")
        os.makedirs(evaluation.uri, exist_ok=True)
        with open(os.path.join(evaluation.uri, "metrics.json"), "w") as f:
            json.dump({"eval_perplexity": perplexity, "eval_unigram_perplexity": 1e6, "perplexity_threshold": 1e9,
                       "min_improvement": 0.0, "beat_baseline": 1, **gated}, f)
        QualityData(tasks={"t": (TaskItem("Python is a", ("language", "banana"), 0),) * 3}).save(evaluation.uri)
        evaluation.set_string_custom_property("champion_key", NO_CHAMPION)
        blessing.set_int_custom_property("blessed", 1)
        blessing.set_string_custom_property("reason", "no champion to beat")
        return evaluation, blessing

    # Nothing moved: the evaluator's decision stands.
    assert current_blessing(mlflow_server.uri, name, "m1", models[1], *evaluated(1.0), [examples]) == (
        True, "no champion to beat", NO_CHAMPION)
    first = push(mlflow_server, models[0], "m0", blessed=True, ppl=50.0, name=name)
    moved_to = f"version 1 (run {first.run_id})"
    # A model far better than the champion on these blocks keeps its blessing; a far worse one loses it.
    blessed, reason, compared = current_blessing(mlflow_server.uri, name, "m1", models[1], *evaluated(1.0),
                                                 [examples])
    assert blessed and compared == moved_to and "decided again" in reason and "champion's" in reason
    blessed, reason, compared = current_blessing(mlflow_server.uri, name, "m1", models[1], *evaluated(1e7),
                                                 [examples])
    assert not blessed and "moved from none to version 1" in reason and "not below the champion's" in reason
    # A gate on a task's accuracy: the new champion is scored on the items kept with the evaluation.
    gate = gate_json((GateMetric("eval_perplexity"), GateMetric("task_t_acc", "higher")))
    blessed, reason, _ = current_blessing(mlflow_server.uri, name, "m1", models[1],
                                          *evaluated(1.0, gate=gate, task_t_acc=-1.0), [examples])
    assert not blessed and "decided again: task_t_acc -1 is not above the champion's" in reason
    blessed, reason, _ = current_blessing(mlflow_server.uri, name, "m1", models[1],
                                          *evaluated(1.0, gate=gate, task_t_acc=2.0), [examples])
    assert blessed and "task_t_acc 2 is above the champion's" in reason
    # Without the blocks to score it on, the model is not promoted, and the reason says what to do.
    blessed, reason, _ = current_blessing(mlflow_server.uri, name, "m1", models[1], *evaluated(1.0), None)
    assert not blessed and "run the pipeline again" in reason


def test_runs_whose_process_died_have_their_executions_cancelled(tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as pb

    from tfx_gpt2.orchestration.mlmd_runs import cancel_dead_executions, metadata_config, run_lock

    config = metadata_config(str(tmp_path / "metadata.db"))
    store = metadata_store.MetadataStore(config)
    pipeline_type = store.put_context_type(pb.ContextType(name="pipeline"))
    run_type = store.put_context_type(pb.ContextType(name="pipeline_run"))
    trainer_type = store.put_execution_type(pb.ExecutionType(name="Trainer"))
    pipeline = store.put_contexts([pb.Context(type_id=pipeline_type, name="p")])[0]
    executions = {}
    for run in ("killed-run", "live-run"):
        run_id = store.put_contexts([pb.Context(type_id=run_type, name=run)])[0]
        store.put_parent_contexts([pb.ParentContext(child_id=run_id, parent_id=pipeline)])
        execution = pb.Execution(type_id=trainer_type, last_known_state=pb.Execution.RUNNING)
        executions[run] = store.put_execution(execution, [], store.get_contexts_by_id([run_id]))[0]
    with run_lock(config, "live-run"):  # a run in progress holds its lock
        assert cancel_dead_executions(config, "p", "new-run") == [executions["killed-run"]]
    killed, live = store.get_executions_by_id([executions["killed-run"], executions["live-run"]])
    assert killed.last_known_state == pb.Execution.CANCELED
    assert killed.custom_properties["superseded_by"].string_value == "new-run"
    assert live.last_known_state == pb.Execution.RUNNING


def test_checkpoints_follow_the_clock_as_well_as_the_step_count(tmp_path, monkeypatch):
    """With no step-based checkpoint before the end, a run still saves one whenever
    `checkpoint_every_seconds` passed (here a fake clock that moves 10 s per step)."""
    import tensorflow as tf
    from test_training import CFG, write_blocks

    import tfx_gpt2.training.loop as training
    from tfx_gpt2.config.model import TrainConfig

    write_blocks(str(tmp_path / "train" / "b.gz"), [[(s + i) % 64 for i in range(9)] for s in range(64)])
    write_blocks(str(tmp_path / "eval" / "b.gz"), [[(s + i) % 64 for i in range(9)] for s in range(8)])
    clock = [0.0]
    real_step = training.TrainStep.__call__

    def step_and_tick(self, *args):
        clock[0] += 10.0
        return real_step(self, *args)

    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(training.TrainStep, "__call__", step_and_tick)
    cfg = TrainConfig(batch_size=8, max_steps=12, warmup_steps=2, eval_every=12, eval_batches=1, log_every=12,
                      shuffle_buffer=16, checkpoint_every=1000, checkpoint_every_seconds=25.0, keep_checkpoints=10,
                      samples_every=0, xla=False)
    training.train(CFG, cfg, [str(tmp_path / "train" / "*")], [str(tmp_path / "eval" / "*")],
                   log_dir=str(tmp_path / "tb"), checkpoint_dir=str(tmp_path / "ckpt"))
    steps = sorted(int(p.rsplit("-", 1)[1]) for p in tf.train.get_checkpoint_state(str(tmp_path / "ckpt"))
                   .all_model_checkpoint_paths)
    assert steps == [3, 6, 9, 12]  # every 30 s of the fake clock (>= 25 s), and the last step
