"""The text-in/text-out SavedModel, loaded in a fresh process that imports no tfx-gpt2 code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf
from reference_models import write_hf_checkpoint

from tfx_gpt2.cli import main
from tfx_gpt2.model.checkpoints import load_checkpoint
from tfx_gpt2.model.generate import Generator, SamplingConfig
from tfx_gpt2.serving.export import export_savedmodel, load_savedmodel

PROMPTS = ["Hello world", "", "The quick brown fox jumps over the lazy dog.\n\n  And then"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_hf_checkpoint(str(root / "hf"), n_ctx=64, n_embd=32, n_layer=2, n_head=4, seed=2)
    model, tokenizer = load_checkpoint(str(root / "hf"))
    export_savedmodel(model, tokenizer, str(root / "sm"))
    return root, model, tokenizer


def call(serve, **settings):
    args = {"max_new_tokens": 12, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "seed": 0}
    args.update(settings)
    dtypes = {"temperature": tf.float32, "top_p": tf.float32, "repetition_penalty": tf.float32}
    out = serve(prompts=tf.constant(PROMPTS), **{k: tf.constant(v, dtypes.get(k, tf.int32)) for k, v in args.items()})
    return [t.decode("utf-8") for t in out["generated_text"].numpy()]


def test_fresh_process_generates_like_the_python_generator(exported):
    root, model, tokenizer = exported
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        import tensorflow_text  # the BPE's regex op
        assert not any(m.startswith("tfx_gpt2") for m in sys.modules)
        serve = tf.saved_model.load({str(root / "sm")!r}).signatures["serving_default"]
        out = serve(prompts=tf.constant({PROMPTS!r}), max_new_tokens=tf.constant(12), temperature=tf.constant(0.0),
                    top_k=tf.constant(0), top_p=tf.constant(1.0), repetition_penalty=tf.constant(1.0),
                    seed=tf.constant(0))
        print(json.dumps([t.decode("utf-8") for t in out["generated_text"].numpy()]))
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            cwd=str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    expected = Generator(model, tokenizer).generate(PROMPTS, SamplingConfig(max_new_tokens=12, temperature=0.0))
    assert got == expected and any(got)


def test_seeded_sampling_matches_generator(exported):
    root, model, tokenizer = exported
    serve = load_savedmodel(str(root / "sm")).signatures["serving_default"]
    got = call(serve, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.3, seed=11)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.3, seed=11)
    assert got == Generator(model, tokenizer).generate(PROMPTS, cfg)


def test_bad_settings_fail_with_the_reason(exported):
    root, _, _ = exported
    serve = load_savedmodel(str(root / "sm")).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature must be >= 0"):
        call(serve, temperature=-1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="top_p must be in"):
        call(serve, top_p=1.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_new_tokens must be below"):
        call(serve, max_new_tokens=64)


def test_cli_converts_and_generates_from_savedmodel(exported, tmp_path, capsys):
    root, _, _ = exported
    assert main(["convert", "--from", str(root / "hf"), "--to", str(tmp_path / "sm"), "--format", "savedmodel"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "sm"), "--prompt", "Hello world", "--greedy",
                 "--max-new-tokens", "6"]) == 0
    from_savedmodel = capsys.readouterr().out
    assert main(["generate", "--model", str(root / "hf"), "--prompt", "Hello world", "--greedy",
                 "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == from_savedmodel
