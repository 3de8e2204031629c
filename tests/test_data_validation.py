"""The data half of the pipeline on text files, run with TFX: rejected records, data anomalies
(empty documents, length outliers, U+FFFD) from StatisticsGen/TextSchemaGen/ExampleValidator,
and a vocabulary trained by VocabTrainer that the encoder then uses."""

import os

import pytest
from ml_metadata.metadata_store import metadata_store

from tfx_gpt2.config.settings import DEFAULT_BEAM_ARGS
from tfx_gpt2.orchestration import beam_local, mlmd_runs, run_report
from tfx_gpt2.pipeline import DataConfig, TextFolder, create_data_pipeline
from tfx_gpt2.text.blocks import read_blocks


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_text):
    root = tmp_path_factory.mktemp("dv")
    data = root / "data"
    data.mkdir()
    docs = [d.strip() for d in corpus_text.split("<|endoftext|>") if d.strip()][:40]
    docs += ["", "x" * 5000, "Text decoded with errors upstream: caf\ufffd, na\ufffdve."] * 2
    (data / "a.txt").write_text("<|endoftext|>".join(docs), encoding="utf-8")
    (data / "b.txt").write_bytes("good document<|endoftext|>".encode() + b"bad \xff bytes")
    config = DataConfig(TextFolder(str(data)), vocab="train", vocab_size=600, special_tokens=("<|dialogue|>",),
                        max_chars=4000)
    pipeline = create_data_pipeline(
        "dv", str(root / "pipeline"), config, block_len=65,
        metadata_connection_config=mlmd_runs.metadata_config(str(root / "mlmd.sqlite")),
        beam_pipeline_args=list(DEFAULT_BEAM_ARGS),
    )
    beam_local.run_local(pipeline)
    store = metadata_store.MetadataStore(mlmd_runs.metadata_config(str(root / "mlmd.sqlite")))
    return store, store.get_context_by_type_and_name("pipeline", "dv").id


def test_rejected_and_counted(run):
    store, ctx = run
    summary = run_report.data_summary(store, ctx)
    assert summary["documents"] == 40 + 6 + 1 and summary["empty_documents"] == 2
    assert summary["rejected"] == {"invalid_utf8": 1}


def test_anomalies_name_empty_long_and_badly_decoded_documents(run):
    store, ctx = run
    anomalies = run_report.data_summary(store, ctx)["anomalies"]
    found = " | ".join(line for lines in anomalies.values() for line in lines)
    assert "documents shorter than 1 characters" in found
    assert "documents longer than 4000 characters" in found
    assert "U+FFFD replacement characters" in found
    lines = run_report._data_lines(run_report.data_summary(store, ctx))
    assert any(line.startswith("Data anomalies:") and "found" in line for line in lines)


def test_the_encoder_uses_the_trained_vocabulary(run):
    store, ctx = run
    vocab = [a for a in store.get_artifacts_by_context(ctx) if a.type == "tfx_gpt2.Vocabulary"]
    assert len(vocab) == 1 and mlmd_runs.artifact_props(vocab[0])["vocab_size"] == 600
    assert sorted(os.listdir(vocab[0].uri)) == ["encoder.json", "special_tokens.json", "vocab.bpe"]
    encoded = run_report.data_summary(store, ctx)
    assert encoded["vocab_size"] == 600
    enc = max((a for a in store.get_artifacts_by_context(ctx) if "block_len" in a.custom_properties), key=lambda a: a.id)
    blocks = list(read_blocks([os.path.join(enc.uri, "Split-train", "*")]))
    assert blocks and max(max(b) for b in blocks) < 600
