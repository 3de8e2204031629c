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
