import json

import pytest

from tfx_gpt2.sources import documents as d


@pytest.mark.parametrize("value, reason", [
    (None, d.MISSING_TEXT_FIELD),
    (7, d.NON_STRING_TEXT),
    (["a"], d.NON_STRING_TEXT),
    (b"ab\xffcd", d.INVALID_UTF8),
    ("ab\udcffcd", d.INVALID_UTF8),  # how pymongo's surrogateescape hands over invalid UTF-8
])
def test_rejections_name_the_reason(value, reason):
    record = d.classify("c:1", "db.c", value, "body")
    assert isinstance(record, d.Rejected) and record.reason == reason
    assert record.doc_id == "c:1" and record.source == "db.c"
    assert json.loads(record.to_json())["reason"] == reason


def test_invalid_utf8_detail_gives_the_byte_offset():
    assert d.classify("x", "s", "ab\udcffcd", "t").detail.startswith("byte 2: b'\\xffcd'")


def test_documents_are_stripped_and_keep_metadata():
    doc = d.classify("c:1", "db.c", "  text \n", "body", (("kind", "<|news|>"),))
    assert doc == d.Document("c:1", "text", "db.c", (("kind", "<|news|>"),))
    assert d.classify("c:2", "db.c", b"caf\xc3\xa9", "body").text == "café"


def test_count_reasons():
    lines = [d.Rejected("a", "s", d.INVALID_UTF8).to_json(), d.Rejected("b", "s", d.INVALID_UTF8).to_json(), ""]
    assert d.count_reasons(lines) == {d.MISSING_TEXT_FIELD: 0, d.NON_STRING_TEXT: 0, d.INVALID_UTF8: 2}
