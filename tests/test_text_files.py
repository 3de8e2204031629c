import io

import pytest

from tfx_gpt2.sources.documents import INVALID_UTF8, Document, Rejected
from tfx_gpt2.sources.text_files import TextSourceError, read_documents


def test_documents_split_by_separator_with_ids():
    docs = list(read_documents(b"one\n<|endoftext|>\ntwo<|endoftext|>  ", "/d/a.txt"))
    assert [(d.doc_id, d.text, d.source) for d in docs] == [
        ("a.txt:0", "one", "/d/a.txt"), ("a.txt:1", "two", "/d/a.txt"), ("a.txt:2", "", "/d/a.txt")]


def test_whole_file_is_one_document():
    docs = list(read_documents("ä<|endoftext|>b".encode(), "f.txt", separator=None))
    assert [d.text for d in docs] == ["ä<|endoftext|>b"]


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_streaming_in_chunks_gives_the_same_documents(chunk):
    data = "αβγ<|endoftext|>δ<|endoftext|><|endoftext|>εζη <|endoftext|>".encode() * 3
    docs = list(read_documents(io.BytesIO(data), "s.txt", chunk_bytes=chunk))
    expected = list(read_documents(data, "s.txt"))
    assert docs == expected and len(docs) == 13


def test_invalid_utf8_rejects_only_that_document_with_the_file_offset():
    data = b"good one<|endoftext|>bad \xff\xfe here<|endoftext|>good two"
    docs = list(read_documents(io.BytesIO(data), "bad.txt", chunk_bytes=4))
    assert [type(d) for d in docs] == [Document, Rejected, Document]
    rejected = docs[1]
    assert rejected.reason == INVALID_UTF8 and rejected.doc_id == "bad.txt:1"
    offset = data.index(bytes([0xFF]))
    assert rejected.detail.startswith(f"byte {offset} of the file")


def test_empty_separator_is_refused():
    with pytest.raises(TextSourceError, match="use None for one document per file"):
        list(read_documents(b"abc", "x.txt", separator=""))
