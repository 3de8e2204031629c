"""The streaming encoder of `tfx-gpt2 encode`: parts cut where the encoding cannot change, so
the ids of the parts are the ids of the whole text, for any chunk size."""

import io

import numpy as np
import pytest

from tfx_gpt2.text.bpe import VocabularyError, document_encoder, load_tokenizer
from tfx_gpt2.text.stream import encode_parts, last_cut, text_parts

TRICKY = ("It's 2024: naïve café 🙂 costs €12.50!\n\n\n  Indented\tline   \n"
          "def f(x):\n    return x  # trailing  \n\n<|dialogue|> hi<|dialogue|>there  \u3000 wide\u2003space "
          "don't we'll 1234567 \x1cfs\x1c \n" * 3 + "no-space-run-" * 40 + "   \n")


@pytest.fixture(scope="module")
def encoder():
    return document_encoder(load_tokenizer("gpt2", ["<|dialogue|>"]))


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 7, 64, 1 << 20])
def test_parts_encode_to_the_ids_of_the_whole_text(encoder, chunk_bytes):
    data = TRICKY.encode("utf-8")
    parts = list(text_parts(io.BytesIO(data), "tricky.txt", chunk_bytes))
    assert "".join(parts) == TRICKY
    if chunk_bytes < 64:
        assert len(parts) > 10
    ids = np.concatenate(list(encode_parts(iter(parts), encoder, workers=2))).tolist()
    assert ids == encoder.encode_document(TRICKY)
    assert encoder.encode_document(TRICKY).count(50257) == 6  # the special token survives every cut


def test_every_cut_is_between_a_non_space_and_a_space_or_newline():
    assert last_cut("abc def") == 3 and last_cut("abc\n\ndef") == 3 and last_cut("abc  ") == 3
    assert last_cut("  \n\n ") == 0 and last_cut("nospace") == 0
    assert last_cut("x \x1c y") == 1  # \x1c is not whitespace to GPT-2's pre-tokenizer: no cut after it


def test_invalid_utf8_names_the_byte(encoder):
    data = "ok " * 10 + "é"
    raw = data.encode("utf-8") + b" \xff tail"
    with pytest.raises(VocabularyError, match=r"bad\.txt is not valid UTF-8 \(byte 33\)"):
        list(text_parts(io.BytesIO(raw), "bad.txt", chunk_bytes=4))


def test_a_truncated_character_at_the_end_is_an_error():
    with pytest.raises(VocabularyError, match=r"byte 2"):
        list(text_parts(io.BytesIO(b"ab\xc3"), "cut.txt", chunk_bytes=2))
