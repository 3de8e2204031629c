import pytest

from tfx_gpt2.sources.text_files import TextSourceError, split_documents


def test_documents_split_by_separator_with_ids():
    docs = list(split_documents(b"one\n<|endoftext|>\ntwo<|endoftext|>  ", "/d/a.txt"))
    assert [(d.doc_id, d.text) for d in docs] == [("a.txt:0", "one"), ("a.txt:1", "two"), ("a.txt:2", "")]


def test_whole_file_is_one_document():
    docs = list(split_documents("ä<|endoftext|>b".encode(), "f.txt", separator=None))
    assert [d.text for d in docs] == ["ä<|endoftext|>b"]


def test_invalid_utf8_names_file_and_offset():
    with pytest.raises(TextSourceError, match=r"bad.txt is not valid UTF-8 \(byte 3"):
        list(split_documents(b"abc\xff\xfe", "bad.txt"))
