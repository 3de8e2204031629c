"""The README and docs/ say only true things about our commands: every link and anchor exists,
every script, `tfx-gpt2` subcommand and `make` target they show exists and takes every flag shown
(checked against its `--help`), Python snippets compile, and the README's Kubeflow compile runs."""

import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO

DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
BIN = os.path.dirname(sys.executable)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def code_blocks(text, language):
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def command_lines(block):
    """Logical lines of a shell block (continuations joined, comments and prompts dropped)."""
    joined = block.replace("\\\n", " ")
    for line in joined.splitlines():
        line = re.sub(r"\s#\s.*$", "", line).strip()
        if line and not line.startswith("#"):
            yield line


def commands():
    """(doc, kind, target, flags) for each command of ours in a shell block."""
    found = []
    for path in DOCS:
        for block in code_blocks(read(path), "bash"):
            for line in command_lines(block):
                words = shlex.split(line.replace("[", " ").replace("]", " "))
                if words[0] in (".venv/bin/python", "python") and words[1:2] and words[1].endswith(".py"):
                    kind, target, rest = "script", words[1], words[2:]
                elif os.path.basename(words[0]) == "tfx-gpt2":
                    kind, target, rest = "cli", words[1], words[2:]
                elif words[0] == "make":
                    kind, target, rest = "make", words[1], []
                else:
                    continue
                flags = sorted({w.split("=", 1)[0] for w in rest if w.startswith("--")})
                found.append((os.path.relpath(path, REPO), kind, target, tuple(flags)))
    return found


@functools.lru_cache(maxsize=None)
def help_text(kind, target):
    argv = ([sys.executable, os.path.join(REPO, target)] if kind == "script"
            else [os.path.join(BIN, "tfx-gpt2"), target]) + ["--help"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, f"{' '.join(argv)} failed: {result.stderr[-2000:]}"
    return result.stdout


def test_the_docs_show_commands_of_every_kind():
    kinds = {kind for _, kind, _, _ in commands()}
    assert kinds == {"script", "cli", "make"}
    assert len(commands()) >= 15


@pytest.mark.parametrize("doc,kind,target,flags", commands(), ids=lambda v: v if isinstance(v, str) else None)
def test_each_command_exists_and_takes_its_flags(doc, kind, target, flags):
    if kind == "make":
        assert re.search(rf"^{re.escape(target)}:", read(os.path.join(REPO, "Makefile")), flags=re.M), target
        return
    if kind == "script":
        assert os.path.isfile(os.path.join(REPO, target)), f"{doc} names {target}, which does not exist"
    text = help_text(kind, target)
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"{doc}: {target} has no {missing}"


def test_links_and_anchors_exist():
    def slug(heading):
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", read(path)):
            if target.startswith("http"):
                continue
            file_part, _, anchor = target.partition("#")
            linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            assert os.path.exists(linked), f"{path}: broken link {target}"
            if anchor:
                prose = re.sub(r"```.*?```", "", read(linked), flags=re.S)
                headings = {slug(h) for h in re.findall(r"^#+ (.+)$", prose, flags=re.M)}
                assert anchor in headings, f"{path}: no heading for #{anchor} in {linked}"


def test_python_snippets_compile():
    for path in DOCS:
        for block in code_blocks(read(path), "python"):
            compile(block, path, "exec")


def test_readme_is_short():
    assert len(read(DOCS[0]).splitlines()) <= 150


def test_readme_kubeflow_compile_runs(tmp_path, monkeypatch, capsys):
    (block,) = [b for b in code_blocks(read(DOCS[0]), "bash") if "kubeflow_runner.py" in b]
    (line,) = list(command_lines(block))
    argv = shlex.split(line)
    assert argv[:2] == [".venv/bin/python", "pipelines/kubeflow_runner.py"]
    argv[argv.index("--output") + 1] = str(tmp_path / "pipeline.json")
    # In this process (the session has imported TFX already), from the repository, no TFX_GPT2_*.
    for key in [k for k in os.environ if k.startswith("TFX_GPT2_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(REPO)
    sys.path.insert(0, os.path.join(REPO, "pipelines"))
    import kubeflow_runner

    assert kubeflow_runner.main(argv[2:]) == 0
    result = capsys.readouterr()
    assert "wrote" in result.out and (tmp_path / "pipeline.json").stat().st_size > 10_000
