"""Training a new byte-level BPE vocabulary: GPT-2's file formats, exact size, special tokens,
the same ids from our Python BPE, tiktoken's engine and Hugging Face `tokenizers`."""

import json
import os

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from tfx_gpt2.text import bpe
from tfx_gpt2.text.vocab import train_vocab

MIXED = "Добрый день! Это тест 123 4567 —  пробелы\n\tи табы. Straße, ünïcödé, 🙂 ok."


@pytest.fixture(scope="module")
def corpus_docs(corpus_text):
    return [d for d in corpus_text.split(bpe.ENDOFTEXT) if d.strip()]


@pytest.fixture(scope="module")
def trained(corpus_docs, tmp_path_factory):
    tok = train_vocab(corpus_docs + [MIXED] * 3, 1500, special_tokens=["<|dialogue|>"])
    path = str(tmp_path_factory.mktemp("vocab"))
    tok.save(path)
    return tok, path


def test_files_layout_and_size(trained):
    tok, path = trained
    assert sorted(os.listdir(path)) == ["encoder.json", "special_tokens.json", "vocab.bpe"]
    with open(os.path.join(path, "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    assert len(encoder) == 1500 == tok.vocab_size
    # GPT-2's layout: 256 byte symbols first in GPT-2's order, then merges, then the specials.
    assert list(encoder)[:256] == list(bpe.bytes_to_unicode().values())
    assert encoder["<|endoftext|>"] == 1498 and encoder["<|dialogue|>"] == 1499
    with open(os.path.join(path, "vocab.bpe"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("#version") and len(lines) - 1 == 1500 - 256 - 2
    a, b = lines[1].split(" ")
    assert encoder[a + b] == 256  # merge i is id 256 + i


def test_three_encoders_agree_and_round_trip(trained, corpus_text):
    tok, path = trained
    loaded = bpe.BPETokenizer.from_dir(path)
    hf = Tokenizer(models.BPE.from_file(*bpe.vocab_files(path)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    fast = bpe.FastEncoder(loaded)
    for text in (corpus_text[:50_000], MIXED, "  \n\n 0000 "):
        ids = loaded.encode_ordinary(text)
        assert fast.encode_ordinary(text) == ids
        assert hf.encode(text).ids == ids
        assert loaded.decode(ids) == text
    # A trained vocabulary compresses its own corpus better than bytes.
    assert len(loaded.encode_ordinary(corpus_text)) < 0.5 * len(corpus_text.encode())


def test_special_tokens_are_whole_and_never_learnt(trained):
    tok, _ = trained
    ids = tok.encode_document("<|dialogue|>Привет")
    assert ids[0] == tok.special_tokens["<|dialogue|>"]
    assert all("dialogue" not in s for s in tok.encoder if s not in tok.special_tokens)


def test_every_document_counts_not_only_the_last(tmp_path):
    first = ["zebra quartz " * 50] * 5
    last = ["lorem ipsum " * 50] * 5
    tok = train_vocab(iter(first + last), 300)
    spelled = {s.replace("\u0120", " ") for s in tok.encoder}
    assert " zebra" in spelled and " ipsum" in spelled


def test_errors_name_the_fix():
    with pytest.raises(bpe.VocabularyError, match="vocab_size = 258 leaves no room"):
        train_vocab(["abc"], 258, special_tokens=["<|x|>"])
    with pytest.raises(bpe.VocabularyError, match="too small to learn any merge"):
        train_vocab(["ab"], 1000)
