import hashlib
import os

import pytest
from reference_tokenizers import tiktoken_gpt2

from tfx_gpt2.text import bpe

HARD_TEXT = (
    "Hello world! It's  3.14159 and 1,000,000 items;\n\n\n   indented\tTabs\r\n"
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🙂👍🏽, Ελληνικά, русский.\n"
    "they'll we've I'm you'd she's DON'T   trailing spaces   \n" + " " * 7 + "\u00a0nbsp\u2003em space"
)


def test_official_files_are_openais():
    path = bpe.official_vocab_dir()
    for name, sha in bpe.OFFICIAL_SHA256.items():
        with open(os.path.join(path, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha


def test_known_ids(tokenizer):
    assert tokenizer.vocab_size == 50257
    assert tokenizer.eot_id == 50256
    assert tokenizer.encode("Hello world") == [15496, 995]


@pytest.mark.parametrize("text", [HARD_TEXT, "", " ", "a", "\n\n", "1234567890" * 3])
def test_matches_tiktoken(tokenizer, text):
    assert tokenizer.encode(text) == tiktoken_gpt2().encode(text, allowed_special="all")


def test_matches_tiktoken_on_corpus(tokenizer, corpus_text):
    ids = tokenizer.encode(corpus_text)
    assert ids == tiktoken_gpt2().encode(corpus_text, allowed_special="all")
    assert tokenizer.decode(ids) == corpus_text


def test_round_trip(tokenizer):
    assert tokenizer.decode(tokenizer.encode(HARD_TEXT)) == HARD_TEXT


def test_special_token_is_one_id(tokenizer):
    ids = tokenizer.encode("a<|endoftext|>b")
    assert ids == [64, 50256, 65]
    assert tokenizer.encode_ordinary("<|endoftext|>") != [50256]


def test_user_special_tokens_are_single_ids():
    tok = bpe.load_tokenizer("gpt2", special_tokens=["<|dialogue|>", "<|action|>"])
    assert tok.vocab_size == 50259
    ids = tok.encode("<|dialogue|>Hi<|action|>")
    assert ids == [50257, 17250, 50258]
    assert tok.decode(ids) == "<|dialogue|>Hi<|action|>"


def test_decode_rejects_unknown_id(tokenizer):
    with pytest.raises(ValueError, match="token id 99999 is outside this vocabulary"):
        tokenizer.decode([99999])


def test_missing_vocab_file_is_named(tmp_path):
    (tmp_path / "encoder.json").write_text("{}")
    with pytest.raises(bpe.VocabularyError, match="no vocab.bpe"):
        bpe.load_tokenizer(str(tmp_path))


def test_toy_vocabulary_merges_in_rank_order(tmp_path):
    # A toy vocabulary: bytes 'a', 'b', 'c' and two merges; 'ab' is ranked before 'bc'.
    encoder = {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "<|endoftext|>": 5}
    tok = bpe.BPETokenizer(encoder, [("a", "b"), ("b", "c")])
    assert tok.encode("abc") == [3, 2]
    assert tok.encode("bc") == [4]


def test_tokenizer_pickles(tokenizer):
    import pickle

    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.encode(HARD_TEXT) == tokenizer.encode(HARD_TEXT)


# --- the encoder the pipeline runs: tiktoken's engine on our vocabulary files -----------------


@pytest.mark.parametrize("text", [HARD_TEXT, "", " ", "a", "\n\n", "1234567890" * 3, "<|endoftext|>"])
def test_fast_encoder_matches_tiktoken(tokenizer, text):
    fast = bpe.FastEncoder(tokenizer)
    expected = tiktoken_gpt2().encode_ordinary(text)
    assert fast.encode_document(text) == expected  # <|endoftext|> inside a document is plain text
    assert fast.encode_document_array(text).tolist() == expected
    assert tokenizer.encode_document(text) == expected


def test_fast_encoder_matches_tiktoken_on_corpus(tokenizer, corpus_text):
    assert bpe.FastEncoder(tokenizer).encode_document(corpus_text) == tiktoken_gpt2().encode_ordinary(corpus_text)


def test_user_special_tokens_in_documents_and_saved_with_the_vocabulary(tmp_path):
    bpe.copy_vocab_files(None, str(tmp_path), special_tokens=["<|dialogue|>", "<|action|>"])
    assert bpe.read_special_tokens(str(tmp_path)) == ["<|dialogue|>", "<|action|>"]
    tok = bpe.load_tokenizer(str(tmp_path))
    assert tok.vocab_size == 50259 and tok.user_special_tokens == ["<|dialogue|>", "<|action|>"]
    text = "<|dialogue|> Hi<|endoftext|><|action|>waves"
    fast = bpe.FastEncoder(tok)
    ids = fast.encode_document(text)
    assert ids == tok.encode_document(text)
    assert ids[0] == 50257 and 50258 in ids and 50256 not in ids
    assert tok.decode(ids) == text
    # A copy keeps them (model directories, the trainer's output).
    bpe.copy_vocab_files(str(tmp_path), str(tmp_path / "copy"))
    assert bpe.load_tokenizer(str(tmp_path / "copy")).vocab_size == 50259


@pytest.mark.parametrize("bad", ["", "two words", "<|a|>\n"])
def test_bad_special_tokens_are_named(bad):
    with pytest.raises(bpe.VocabularyError, match="non-empty string without whitespace"):
        bpe.check_special_tokens([bad])
    with pytest.raises(bpe.VocabularyError, match="twice"):
        bpe.check_special_tokens(["<|x|>", "<|x|>"])


def test_document_encoder_falls_back_to_python_for_vocabularies_tiktoken_cannot_run(tokenizer):
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)[:50]
    encoder = {s: i for s, i in tokenizer.encoder.items() if i < 256}
    # A merge whose result is missing from the encoder: not a valid rank table.
    broken = bpe.BPETokenizer(encoder, merges)
    with pytest.raises(bpe.VocabularyError, match="missing from the encoder"):
        bpe.FastEncoder(broken)
    assert bpe.document_encoder(broken) is broken
