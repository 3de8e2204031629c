"""The continuous-training loop end to end: `examples/continuous-training-example.py` with the
`tiny` model (train v1, serve it, simulated users' completions and feedback, the retrain condition,
the gate, the server switching), then `tfx-gpt2 retrain` below its conditions and failing."""

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys

import pytest
from mlflow_helpers import free_port

from tfx_gpt2.feedback.store import SqliteStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
NAME = "tfx-gpt2-loop"
USERS = 8


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """The example's `main()`, in this process: the test below retrains in-process too, and a
    process of its own would import TensorFlow and TFX a second time (~20 s)."""
    out = str(tmp_path_factory.mktemp("loop"))
    example = runpy.run_path(os.path.join(REPO, "examples", "continuous-training-example.py"))
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("TFX_GPT2_BEAT_BASELINE", "0")
        patch.setenv("TFX_GPT2_LOOP_PORT", str(free_port()))
        code = example["main"](["--output-dir", out, "--max-steps", "20", "--users", str(USERS)])
    assert code == 0, printed.getvalue()[-3000:]
    return out, printed.getvalue()


def retrain_in_process(out, capsys, *args):
    """`tfx-gpt2 retrain ARGS` in this process: (exit status, what it printed on stdout and stderr)."""
    from tfx_gpt2.cli import main

    code = main(["retrain", "--output-dir", out, "--pipeline-name", NAME, *args])
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def client(out):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow/mlflow.db")


def test_feedback_trains_a_second_version_and_the_server_follows_the_gate(loop):
    out, printed = loop
    versions = {str(v.version): v for v in client(out).search_model_versions(f"name = '{NAME}'")}
    assert sorted(versions, key=int) == ["1", "2"]
    tags = versions["2"].tags
    assert (tags["tfx_gpt2.data.spans"], tags["tfx_gpt2.feedback.span"]) == ("0-1", "1")
    assert tags["tfx_gpt2.feedback.records"] == str(USERS) and tags["tfx_gpt2.feedback.documents"] == str(USERS)
    assert tags["tfx_gpt2.feedback.watermark"] == str(USERS)  # the embedded store's row numbers
    assert "tfx_gpt2.feedback.span" not in versions["1"].tags and versions["1"].tags["tfx_gpt2.data.spans"] == "0"
    # Version 2 fine-tunes version 1 (a warm start) on spans 0 and 1: the gate blesses it and the
    # server switches.
    assert tags["tfx_gpt2.fine_tuned_from"] == "1" and tags["init_checkpoint"] == f"models:/{NAME}/1"
    assert "tfx_gpt2.fine_tuned_from" not in versions["1"].tags
    assert tags["blessed"] == "true", tags["blessing_reason"]
    assert str(client(out).get_model_version_by_alias(NAME, "champion").version) == "2"
    assert "the server answers with version 2 (switched to version 2)" in printed
    assert "on the same eval blocks:" in printed
    store = SqliteStore(os.path.join(out, "feedback", "feedback.db"))
    assert store.counts()["feedback"] == USERS and store.counts()["completions"] >= USERS + 1
    # span 1 holds the rule's documents: thumbs up -> prompt + completion, down -> prompt + correction
    with open(os.path.join(out, "training-data", NAME, "span-1", "feedback.txt")) as f:
        documents = f.read().split("<|endoftext|>")
    records = [r for _, r in store.feedback_after(None)]
    assert documents == [r["prompt"] + (r["corrected_text"] or r["completion"]) for r in records]


def test_lineage_links_data_versions_and_completions(loop):
    out, printed = loop
    assert "in feedback span 1, which trained models:/tfx-gpt2-loop/2" in printed
    assert "kept as a training document" in printed
    proc = subprocess.run([os.path.join(BIN, "tfx-gpt2"), "lineage", f"models:/{NAME}/2", "--output-dir", out],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "trained on spans 0-1" in proc.stdout and f"span 1: {USERS} documents from {USERS} feedback" in proc.stdout
    assert "fine-tuned from version 1 (warm start)" in proc.stdout
    per_key = ", ".join(f"user{i} 1" for i in range(USERS))  # one document per simulated user's key
    assert f"documents per key: {per_key}" in proc.stdout and "records dropped: none" in proc.stdout
    # ML Metadata: the pusher that registered version 2 read the blocks of spans 0 and 1
    from ml_metadata.metadata_store import metadata_store

    from tfx_gpt2.orchestration.mlmd_runs import metadata_config

    mlmd = metadata_store.MetadataStore(metadata_config(os.path.join(out, "metadata", f"{NAME}.db")))
    pushed = [a for a in mlmd.get_artifacts_by_type("PushedModel")
              if a.custom_properties["model_version"].int_value == 2]
    (event,) = [e for e in mlmd.get_events_by_artifact_ids([pushed[0].id]) if e.type == e.OUTPUT]
    inputs = mlmd.get_events_by_execution_ids([event.execution_id])
    examples = [a for a in mlmd.get_artifacts_by_id([e.artifact_id for e in inputs if e.type == e.INPUT])
                if "lineage" in a.custom_properties]
    lineage = json.loads(examples[0].custom_properties["lineage"].string_value)
    assert [s["span"] for s in lineage] == [0, 1] and lineage[1]["feedback"]["feedback_records"] == USERS


def test_retrain_below_its_conditions_does_nothing_and_a_failed_one_changes_nothing(loop, capsys, monkeypatch):
    out, _ = loop
    store = SqliteStore(os.path.join(out, "feedback", "feedback.db"))
    (_, last), = store.feedback_after(str(USERS - 1))
    store.put_feedback({**last, "completion_id": "cmpl-extra", "created": last["created"] + 1})
    # one feedback, from one user's key: the default cap (20% per key) keeps none of it
    code, printed = retrain_in_process(out, capsys, "--min-new-documents", "1")
    assert code == 0 and printed.startswith("nothing to do: 0 new training document(s) from 1 feedback record(s)")
    code, printed = retrain_in_process(out, capsys, "--min-new-documents", "5", "--max-key-share", "1")
    assert code == 0 and printed.startswith("nothing to do: 1 new training document(s) from 1 feedback record(s)")
    before = client(out).get_model_version_by_alias(NAME, "champion").version
    monkeypatch.setenv("TFX_GPT2_BEAM_ARGS", "--direct_running_mode=nope")  # the pipeline fails at its first component
    code, failed = retrain_in_process(out, capsys, "--min-new-documents", "1", "--max-key-share", "1")
    assert code == 1 and "retrain FAILED" in failed and "the champion and the servers following it are unchanged" in failed
    monkeypatch.delenv("TFX_GPT2_BEAM_ARGS")
    assert client(out).get_model_version_by_alias(NAME, "champion").version == before
    assert len(client(out).search_model_versions(f"name = '{NAME}'")) == 2
    # the span that failed is written again by the next retrain, with what arrived since
    code, printed = retrain_in_process(out, capsys, "--min-new-documents", "5", "--max-key-share", "1")
    assert code == 0 and printed.startswith("nothing to do: 1 new training document(s)")
