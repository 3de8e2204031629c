"""Errors that point at the cause, and come early: a data folder that does not exist, a missing
vocabulary folder (refused when the pipeline is built), one long document that cannot be split,
every record rejected (the list survives the failed run), and `generate` asking for more tokens
than the context (refused before the model loads)."""

import json
import os
import shutil

import pytest
from mlflow_helpers import tiny_model_dir
from test_pipeline import build

from tfx_gpt2.config.model import ConfigError


def test_a_data_folder_that_does_not_exist_is_named(tmp_path):
    import apache_beam as beam
    from tfx.types import standard_component_specs

    from tfx_gpt2.components.text_example_gen import _TextToExample
    from tfx_gpt2.sources.text_files import TextSourceError

    missing = str(tmp_path / "no-such-folder")
    props = {standard_component_specs.INPUT_BASE_KEY: missing}
    with pytest.raises(TextSourceError, match=f"the data folder input_base='{missing}' does not exist"):
        with beam.Pipeline() as p:
            _ = p | _TextToExample(props, "*.txt")
    os.makedirs(missing)  # an empty folder: the pattern is what to fix
    with pytest.raises(TextSourceError, match="no file matches .*change file_pattern"):
        with beam.Pipeline() as p:
            _ = p | _TextToExample(props, "*.txt")


def test_a_missing_vocabulary_folder_is_refused_when_the_pipeline_is_built(tmp_path):
    with pytest.raises(ConfigError, match="vocab = '.*no-vocab': the folder does not exist"):
        build(vocab=str(tmp_path / "no-vocab"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "encoder.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no vocab.bpe; a GPT-2 vocabulary is the pair"):
        build(vocab=str(tmp_path / "half"))


def test_one_long_document_is_said_to_be_unsplittable():
    from tfx_gpt2.components.bpe_encoder import empty_split_message

    one = {"train": {"documents": 1, "tokens": 90000, "blocks": 1400}, "eval": {"documents": 0, "tokens": 0,
                                                                                "blocks": 0}}
    message = empty_split_message("eval", one, 65)
    assert "only 1 document(s)" in message and "cannot be split" in message and "one document per file" in message
    many = {"train": {"documents": 90, "tokens": 9000, "blocks": 130}, "eval": {"documents": 2, "tokens": 40,
                                                                                "blocks": 0}}
    assert "fewer than one block of 65" in empty_split_message("eval", many, 65)


def test_the_rejected_list_survives_a_failed_run(tmp_path):
    from tfx.types import standard_artifacts

    from tfx_gpt2.components.examples_io import NoDocumentsError, finish_output

    artifact = standard_artifacts.Examples()
    artifact.uri = str(tmp_path / "TextExampleGen" / "examples" / "7")
    os.makedirs(os.path.join(artifact.uri, "rejected"))
    with open(os.path.join(artifact.uri, "counts.json"), "w") as f:
        json.dump({"documents": 0, "empty_documents": 0, "chars": 0}, f)
    with open(os.path.join(artifact.uri, "rejected", "rejected-00000-of-00001.jsonl"), "w") as f:
        for i in range(5):
            f.write(json.dumps({"id": f"a.txt:{i}", "reason": "invalid_utf8", "detail": f"byte {i}"}) + "\n")
    with pytest.raises(NoDocumentsError) as info:
        finish_output(artifact, "text files")
    shutil.rmtree(artifact.uri)  # what TFX does with the output of a failed execution
    kept = str(tmp_path / "TextExampleGen" / "rejected-of-failed-runs" / "7")
    assert f"the list is kept in {kept}" in str(info.value) and "a.txt:0" in str(info.value)
    with open(os.path.join(kept, "rejected-00000-of-00001.jsonl")) as f:
        assert len(f.readlines()) == 5


def test_generate_checks_max_new_tokens_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import tfx_gpt2.model.checkpoints as checkpoints
    from tfx_gpt2.cli import main

    model_dir = tiny_model_dir(str(tmp_path / "m"), n_ctx=16)

    def no_load(path):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(checkpoints, "load_checkpoint", no_load)
    assert main(["generate", "--model", model_dir, "--max-new-tokens", "100000", "--prompt", "Hello"]) == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens = 100000" in err and "context of 16 tokens" in err and "at most 15" in err
