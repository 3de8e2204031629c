"""Wire-level faults with mockupdb (a MongoDB wire-protocol server): our real pymongo client
against a connection closed mid-cursor, an authentication failure, and invalid UTF-8 on the wire."""

import struct

import pytest
from bson.raw_bson import RawBSONDocument
from mockupdb import MockupDB, go

from tfx_gpt2.sources import documents as d
from tfx_gpt2.sources import mongo

WIRE = {"maxWireVersion": 21, "minWireVersion": 0}


@pytest.fixture()
def server():
    s = MockupDB(auto_ismaster=WIRE)
    s.run()
    yield s
    s.stop()


def spec(**kw):
    return mongo.MongoSource(**{"collections": ("db.c",), "retry_wait_s": 0.0, "batch_size": 2, **kw})


def read_all(s):
    with mongo.connect(s) as client:
        return list(mongo.read_collection(client, s, "db.c"))


def test_connection_closed_mid_cursor_resumes_after_the_last_document(server, monkeypatch):
    monkeypatch.setenv("MONGO_URI", server.uri)
    future = go(read_all, spec())
    find = server.receives("find", "c", timeout=30)
    assert find["sort"] == {"_id": 1} and find["batchSize"] == 2
    find.reply({"cursor": {"id": 42, "ns": "db.c", "firstBatch": [{"_id": 1, "text": "one"}, {"_id": 2, "text": "two"}]},
                "ok": 1})
    server.receives("getMore", 42, timeout=30).hangup()  # the connection drops mid-cursor
    again = server.receives("find", "c", timeout=30)
    assert again["filter"] == {"$and": [{}, {"_id": {"$gt": 2}}]}  # after the last document read
    again.reply({"cursor": {"id": 0, "ns": "db.c", "firstBatch": [{"_id": 3, "text": "three"}]}, "ok": 1})
    records = future()
    assert [r.text for r in records] == ["one", "two", "three"]
    assert [r.doc_id for r in records] == ["db.c:1", "db.c:2", "db.c:3"]


def test_authentication_failure_is_clear_and_does_not_leak_the_password(server, monkeypatch):
    server.autoresponds("saslStart", {"ok": 0, "errmsg": "Authentication failed.", "code": 18})
    server.autoresponds("saslContinue", {"ok": 0, "errmsg": "Authentication failed.", "code": 18})
    uri = server.uri.replace("mongodb://", "mongodb://alice:hunter2@")
    monkeypatch.setenv("MONGO_URI", uri)
    with pytest.raises(mongo.MongoSourceError) as info:
        read_all(spec())
    message = str(info.value)
    assert "refused the credentials" in message and "$MONGO_URI" in message
    assert "hunter2" not in message


def _raw_doc(doc_id: int, text: bytes) -> RawBSONDocument:
    body = b"\x10_id\x00" + struct.pack("<i", doc_id)
    body += b"\x02text\x00" + struct.pack("<i", len(text) + 1) + text + b"\x00"
    return RawBSONDocument(struct.pack("<i", len(body) + 5) + body + b"\x00")


def test_invalid_utf8_on_the_wire_is_one_rejected_document(server, monkeypatch):
    import mockupdb

    monkeypatch.setenv("MONGO_URI", server.uri)
    monkeypatch.setattr(mockupdb, "docs_repr", lambda *docs: "<raw BSON>")  # its log cannot print bad UTF-8
    future = go(read_all, spec())
    server.receives("find", "c", timeout=30).reply({"cursor": {"id": 0, "ns": "db.c", "firstBatch": [
        _raw_doc(1, b"fine"), _raw_doc(2, b"bad \xff\xfe bytes"), _raw_doc(3, "caf\u00e9".encode())]}, "ok": 1})
    records = future()
    assert [type(r).__name__ for r in records] == ["Document", "Rejected", "Document"]
    assert records[1].reason == d.INVALID_UTF8 and records[1].doc_id == "db.c:2"
    assert "not valid UTF-8 in 'text' at character 4" in records[1].detail
    assert records[2].text == "café"
