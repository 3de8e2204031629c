"""MongoDB source logic against mongomock (no server): filters, fields, reasons, resuming,
incremental ranges, connection strings."""

import mongomock
import pytest
from bson import ObjectId
from mongo_helpers import FlakyClient, SharedClient

from tfx_gpt2.sources import documents as d
from tfx_gpt2.sources import mongo


@pytest.fixture()
def client():
    c = mongomock.MongoClient()
    c.news.articles.insert_many(
        [{"_id": ObjectId(f"{i:024x}"), "body": f"article {i}", "lang": "en" if i % 3 else "fr",
          "meta": {"kind": "<|news|>"}, "ts": 1000 + i} for i in range(1, 31)]
    )
    c.news.articles.insert_many([
        {"_id": ObjectId(f"{100:024x}"), "lang": "en", "ts": 2000},
        {"_id": ObjectId(f"{101:024x}"), "body": 42, "lang": "en", "ts": 2001},
        {"_id": ObjectId(f"{102:024x}"), "body": b"bad \xff", "lang": "en", "ts": 2002},
    ])
    return c


def spec(**kw):
    args = dict(collections=("news.articles",), text_field="body", filter='{"lang": "en"}', retry_wait_s=0.0)
    return mongo.MongoSource(**{**args, **kw})


def test_reads_filtered_documents_in_order_with_metadata_and_reasons(client):
    records = list(mongo.read_collection(client, spec(metadata_fields=("meta.kind",)), "news.articles"))
    docs = [r for r in records if isinstance(r, d.Document)]
    rejected = {r.reason: r for r in records if isinstance(r, d.Rejected)}
    assert len(docs) == 20  # 30 articles, 10 in French
    assert docs[0] == d.Document(f"news.articles:{1:024x}", "article 1", "news.articles", (("meta.kind", "<|news|>"),))
    assert [x.doc_id for x in docs] == sorted(x.doc_id for x in docs)
    assert set(rejected) == {d.MISSING_TEXT_FIELD, d.NON_STRING_TEXT, d.INVALID_UTF8}
    assert rejected[d.NON_STRING_TEXT].detail == "'body' is a int: '42'"


def test_dropped_connection_resumes_without_loss_or_duplicates(client):
    flaky = FlakyClient(client, fail_after=7, failures=2)
    progress = {}
    records = list(mongo.read_collection(flaky, spec(batch_size=5), "news.articles", progress=progress,
                                         sleep=lambda s: None))
    clean = list(mongo.read_collection(client, spec(), "news.articles"))
    assert [r.doc_id for r in records] == [r.doc_id for r in clean]
    assert progress["retries"] == 2 and len(flaky.queries) == 3
    assert "$gt" in str(flaky.queries[1])  # resumed after the last document read


def test_too_many_failures_in_a_row_stop_with_the_last_document(client):
    flaky = FlakyClient(client, fail_after=0, failures=10)
    with pytest.raises(mongo.MongoSourceError, match="failed 3 times in a row.*stopped after no document"):
        list(mongo.read_collection(flaky, spec(max_retries=2), "news.articles", sleep=lambda s: None))


def test_incremental_reads_after_the_watermark_and_reports_the_last_one(client):
    progress = {}
    first = list(mongo.read_collection(client, spec(), "news.articles", progress=progress))
    last = progress["last_watermark"]
    assert last == ObjectId(f"{102:024x}")
    client.news.articles.insert_one({"_id": ObjectId(f"{200:024x}"), "body": "new", "lang": "en", "ts": 3000})
    again = list(mongo.read_collection(client, spec(), "news.articles", lower=mongo.load_watermark(mongo.dump_watermark(last))))
    assert [r.text for r in again] == ["new"] and len(first) == 23


def test_timestamp_watermark_with_ties_and_missing_field(client):
    client.news.articles.insert_many([
        {"_id": ObjectId(f"{300:024x}"), "body": "tie a", "lang": "en", "ts": 5000},
        {"_id": ObjectId(f"{301:024x}"), "body": "tie b", "lang": "en", "ts": 5000},
        {"_id": ObjectId(f"{302:024x}"), "body": "no ts", "lang": "en"},
    ])
    s = spec(watermark_field="ts", incremental=True)
    flaky = FlakyClient(client, fail_after=1, failures=1)  # fails between the two ties
    records = list(mongo.read_collection(flaky, s, "news.articles", lower=4999, sleep=lambda s: None))
    assert [r.text for r in records] == ["tie a", "tie b"] and flaky.failures_left == 0
    missing = list(mongo.missing_watermark(client, s, "news.articles"))
    assert [(m.doc_id, m.reason) for m in missing] == [(f"news.articles:{302:024x}", mongo.MISSING_WATERMARK)]


def test_snapshot_counts_and_max_watermark(client):
    snap = mongo.snapshot(client, spec(), "news.articles")
    assert snap == {"count": 23, "max_watermark": ObjectId(f"{102:024x}")}
    assert mongo.snapshot(client, spec(filter='{"lang": "de"}'), "news.articles") == {"count": 0, "max_watermark": None}


def test_uri_from_env_or_secret_file_never_in_the_spec(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_MONGO", "mongodb://u:pw@h:1/")
    assert mongo.resolve_uri(spec(uri_env="MY_MONGO")) == "mongodb://u:pw@h:1/"
    secret = tmp_path / "uri"
    secret.write_text("mongodb://u:pw2@h:1/\n")
    assert mongo.resolve_uri(spec(uri_file=str(secret))) == "mongodb://u:pw2@h:1/"
    assert "pw" not in spec(uri_env="MY_MONGO").to_json()
    assert mongo.redact("mongodb://u:pw@h:1/db") == "mongodb://u:***@h:1/db"


def test_configuration_errors_say_what_to_do(monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(mongo.MongoSourceError, match=r"no MongoDB connection string in \$NOPE; set it"):
        mongo.resolve_uri(spec(uri_env="NOPE"))
    with pytest.raises(mongo.MongoSourceError, match="give the \\*name\\* of an environment variable"):
        spec(uri_env="mongodb://u:pw@h/")
    with pytest.raises(mongo.MongoSourceError, match="'database.collection'"):
        spec(collections=("articles",))
    with pytest.raises(mongo.MongoSourceError, match="is not valid JSON"):
        spec(filter="{lang: en")
    with pytest.raises(mongo.MongoSourceError, match="cannot be read"):
        mongo.resolve_uri(spec(uri_file="/nonexistent/secret"))


def test_spec_json_round_trip():
    s = spec(metadata_fields=["kind"], collections=["a.b", "c.d"])
    assert mongo.MongoSource.from_json(s.to_json()) == s


def test_connect_uses_the_factory(monkeypatch, client):
    monkeypatch.setenv("MONGO_URI", "mongodb://h:1/")
    seen = []
    monkeypatch.setattr(mongo, "client_factory", lambda uri: seen.append(uri) or SharedClient(client))
    with mongo.connect(spec()) as c:
        assert mongo.snapshot(c, spec(), "news.articles")["count"] == 23
    assert seen == ["mongodb://h:1/"]
