import pytest
from reference_models import write_hf_checkpoint, write_openai_checkpoint

from tfx_gpt2.cli import main


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    weights = write_hf_checkpoint(str(root / "hf"), n_ctx=64, n_embd=32, n_layer=2, n_head=4)
    write_openai_checkpoint(str(root / "openai"), weights, n_head=4)
    return root


def generate(capsys, model, *extra):
    assert main(["generate", "--model", model, "--prompt", "Hello world", "--greedy", "--max-new-tokens", "6",
                 *extra]) == 0
    return capsys.readouterr().out


def test_generate_from_openai_hf_and_converted_dirs_agree(dirs, capsys):
    from_hf = generate(capsys, str(dirs / "hf"))
    assert from_hf.startswith("Hello world") and len(from_hf) > len("Hello world\n")
    assert generate(capsys, str(dirs / "openai")) == from_hf
    assert main(["convert", "--from", str(dirs / "openai"), "--to", str(dirs / "converted"), "--format", "hf"]) == 0
    capsys.readouterr()
    assert generate(capsys, str(dirs / "converted")) == from_hf


def test_several_prompts_and_sequences(dirs, capsys):
    assert main(["generate", "--model", str(dirs / "hf"), "--prompt", "A", "--prompt", "B", "--seed", "0",
                 "--num-return-sequences", "2", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.count("=== prompt") == 4


def test_errors_say_what_was_expected(dirs, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--prompt", "x"]) == 2
    assert "Hugging Face directory (config.json + model.safetensors)" in capsys.readouterr().err
    assert main(["generate", "--model", str(dirs / "hf"), "--prompt", "x", "--temperature", "-1"]) == 2
    assert "temperature = -1.0 must be >= 0" in capsys.readouterr().err


# --- encode / decode / train-vocab: the pipeline's own text code ------------------------------


def test_encode_prints_tiktokens_ids_and_decode_reverses(tmp_path, capsys, corpus_text):
    from reference_tokenizers import tiktoken_gpt2

    text = corpus_text[:20_000] + "\nÜnïcödé 🙂   1234567 \t end"
    path = tmp_path / "doc.txt"
    path.write_text(text, encoding="utf-8")
    assert main(["encode", "--vocab", "gpt2", str(path)]) == 0
    printed = capsys.readouterr().out
    ids = [int(t) for t in printed.split()]
    assert ids == tiktoken_gpt2().encode_ordinary(text)
    (tmp_path / "ids.txt").write_text(printed)
    assert main(["decode", str(tmp_path / "ids.txt")]) == 0
    assert capsys.readouterr().out == text


def test_train_vocab_reads_every_file_and_encodes_with_it(tmp_path, capsys, corpus_text):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(corpus_text[:100_000] + "<|endoftext|>" + "zyxwvut " * 200, encoding="utf-8")
    b.write_text("qponmlk " * 200 + "<|endoftext|>" + "<|dialogue|> hi", encoding="utf-8")
    out = tmp_path / "vocab"
    assert main(["train-vocab", "--size", "1000", "--special-token", "<|dialogue|>", "--out", str(out),
                 str(a), str(b)]) == 0
    assert "1000 tokens learnt from 2 file(s)" in capsys.readouterr().out
    assert main(["encode", "--vocab", str(out), str(b)]) == 0
    ids = [int(t) for t in capsys.readouterr().out.split()]
    from tfx_gpt2.text.bpe import load_tokenizer

    tok = load_tokenizer(str(out))
    assert tok.vocab_size == 1000 and tok.special_tokens["<|dialogue|>"] in ids
    assert " zyxwvut" in {s.replace("\u0120", " ") for s in tok.encoder}  # from the first file
    assert " qponmlk" in {s.replace("\u0120", " ") for s in tok.encoder}  # and from the last


def test_text_commands_report_errors(tmp_path, capsys):
    assert main(["encode", str(tmp_path / "missing.txt")]) == 2
    assert "No such file" in capsys.readouterr().err
    (tmp_path / "ids.txt").write_text("1 2 x")
    assert main(["decode", str(tmp_path / "ids.txt")]) == 2
    assert "integer ids" in capsys.readouterr().err
    assert main(["encode", "--vocab", str(tmp_path), str(tmp_path / "ids.txt")]) == 2
    assert "has no encoder.json" in capsys.readouterr().err


def test_serve_refuses_credentials_in_the_tracking_uri_and_bad_engine_settings(capsys, monkeypatch):
    from tfx_gpt2.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["serve", "models:/m@champion", "--tracking-uri", "http://alice:s3cret@mlflow:5000"]) == 2
    err = capsys.readouterr().err
    assert "credentials" in err and "MLFLOW_TRACKING_PASSWORD" in err and "s3cret" not in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:hunter2@mlflow:5000")
    assert main(["serve", "models:/m@champion"]) == 2 and "credentials" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000/?access_token=t0ps3cret")
    assert main(["serve", "models:/m@champion"]) == 2
    err = capsys.readouterr().err
    assert "access_token=***" in err and "t0ps3cret" not in err
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert main(["serve", "models:/m@champion", "--max-batch-size", "0"]) == 2
    assert "max_batch_size = 0 must be >= 1" in capsys.readouterr().err
    assert main(["serve"]) == 2 and "give the model to serve" in capsys.readouterr().err


LIGHT_COMMANDS = """
import json, sys
from tfx_gpt2.cli import main
out = sys.argv[1]
codes = [main(["retrain", "--output-dir", out, "--min-new-documents", "5"]),
         main(["lineage", "cmpl-none", "--output-dir", out])]
print(json.dumps({"codes": codes, "heavy": sorted(m for m in ("tfx", "tensorflow", "apache_beam", "keras", "airflow")
                                                 if m in sys.modules)}))
"""


def test_retrain_and_lineage_start_without_tfx_or_beam(tmp_path):
    """`tfx-gpt2 retrain` with nothing to do and `tfx-gpt2 lineage` read the store and the registry
    only: neither imports TFX, TensorFlow, Beam or Airflow (seconds, not the tens TFX's import takes)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-c", LIGHT_COMMANDS, str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 1], "heavy": []}, result.stderr[-2000:]
    assert "nothing to do: 0 new training document(s)" in result.stdout
    assert "no completion 'cmpl-none'" in result.stderr
