"""MongoExampleGen in a real TFX pipeline (BeamDagRunner, ML Metadata on sqlite) against mongomock:
splits, rejected records, caching of an unchanged database, incremental spans read together by
the encoder, the empty-result error, and no password anywhere after a run."""

import dataclasses
import json
import os

import mongomock
import pytest
from bson import ObjectId
from ml_metadata.metadata_store import metadata_store
from mongo_helpers import SharedClient

from tfx_gpt2.config.settings import DEFAULT_BEAM_ARGS
from tfx_gpt2.orchestration import beam_local, mlmd_runs
from tfx_gpt2.pipeline import DataConfig, create_data_pipeline
from tfx_gpt2.sources import mongo

PASSWORD = "s3cretPW-do-not-store"


def _insert(coll, start, n, lang="en"):
    coll.insert_many([
        {"_id": ObjectId(f"{start + i:024x}"), "body": f"Article {start + i} reports that the river rose by "
         f"{i} metres after {3 * i} days of rain. " * 3, "lang": lang, "kind": "<|news|>"}
        for i in range(n)
    ])


@pytest.fixture()
def db(monkeypatch):
    client = mongomock.MongoClient()
    monkeypatch.setattr(mongo, "client_factory", lambda uri: SharedClient(client))
    monkeypatch.setenv("NEWS_MONGO_URI", f"mongodb://reader:{PASSWORD}@db.example:27017/?authSource=admin")
    coll = client.news.articles
    _insert(coll, 1, 40)
    _insert(coll, 500, 5, lang="fr")
    coll.insert_many([
        {"_id": ObjectId(f"{900:024x}"), "lang": "en"},                 # no text field
        {"_id": ObjectId(f"{901:024x}"), "body": 7, "lang": "en"},      # not a string
        {"_id": ObjectId(f"{902:024x}"), "body": b"\xff\xfe", "lang": "en"},  # not UTF-8
        {"_id": ObjectId(f"{903:024x}"), "body": "   ", "lang": "en"},  # empty: kept for validation
    ])
    return coll


def data_pipeline(root, source):
    config = DataConfig(source, validate=False, split_ratios={"train": 8, "eval": 1, "test": 1},
                        control_feature="kind", special_tokens=("<|news|>",))
    return create_data_pipeline(
        "mongo-test", os.path.join(root, "pipeline"), config, block_len=65,
        metadata_connection_config=mlmd_runs.metadata_config(os.path.join(root, "mlmd.sqlite")),
        beam_pipeline_args=list(DEFAULT_BEAM_ARGS),
    )


def _store(root):
    return metadata_store.MetadataStore(mlmd_runs.metadata_config(os.path.join(root, "mlmd.sqlite")))


def _latest(store, type_name, key):
    arts = [a for a in store.get_artifacts_by_type(type_name) if key in a.custom_properties]
    return mlmd_runs.artifact_props(max(arts, key=lambda a: a.id))


def test_full_cached_then_incremental_spans(db, tmp_path, capfd):
    root = str(tmp_path)
    source = mongo.MongoSource(collections=("news.articles",), text_field="body", filter='{"lang": "en"}',
                               metadata_fields=("kind",), uri_env="NEWS_MONGO_URI", incremental=True)
    beam_local.run_local(data_pipeline(root, source))
    store = _store(root)
    gen = _latest(store, "Examples", "mongo_watermarks")
    assert gen["span"] == 0 and gen["documents"] == 41 and gen["empty_documents"] == 1
    assert (gen["rejected_missing_text_field"], gen["rejected_non_string_text"], gen["rejected_invalid_utf8"]) == (1, 1, 1)
    enc = _latest(store, "Examples", "block_len")
    assert enc["train_documents"] + enc["eval_documents"] + enc["test_documents"] == 40
    assert enc["train_empty_documents"] + enc["eval_empty_documents"] + enc["test_empty_documents"] == 1
    assert enc["vocab_size"] == 50258  # GPT-2's + <|news|>, the control token of every document
    first_tokens = sum(enc[f"{s}_tokens"] for s in ("train", "eval", "test"))

    # Unchanged database: the driver resolves the same inputs, so ExampleGen is a cache hit.
    beam_local.run_local(data_pipeline(root, source))
    assert mlmd_runs.execution_states(_store(root), "mongo-test")["MongoExampleGen"] == "CACHED"

    # New documents: span 1 holds only them; the encoder reads both spans.
    _insert(db, 1000, 6)
    beam_local.run_local(data_pipeline(root, source))
    store = _store(root)
    gen = _latest(store, "Examples", "mongo_watermarks")
    assert gen["span"] == 1 and gen["documents"] == 6
    assert mongo.load_watermark(json.loads(gen["mongo_start_after"])["news.articles"]) == ObjectId(f"{903:024x}")
    enc = _latest(store, "Examples", "block_len")
    assert enc["train_documents"] + enc["eval_documents"] + enc["test_documents"] == 46
    assert sum(enc[f"{s}_tokens"] for s in ("train", "eval", "test")) > first_tokens

    # The password is nowhere: ML Metadata, the pipeline's files, the logs.
    with open(os.path.join(root, "mlmd.sqlite"), "rb") as f:
        assert PASSWORD.encode() not in f.read()
    for dirpath, _, files in os.walk(os.path.join(root, "pipeline")):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                assert PASSWORD.encode() not in f.read(), os.path.join(dirpath, name)
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err
    assert "NEWS_MONGO_URI" in str(store.get_executions())  # only the variable's name is recorded


def test_no_matching_document_is_a_clear_error(db, tmp_path):
    source = mongo.MongoSource(collections=("news.articles",), text_field="body", filter='{"lang": "de"}',
                               uri_env="NEWS_MONGO_URI")
    with pytest.raises(Exception, match="yielded no document.*check the source, its filter and the text field"):
        beam_local.run_local(data_pipeline(str(tmp_path), source))


def feedback_records(store, first, n):
    import time

    for i in range(first, first + n):
        store.put_feedback({"completion_id": f"cmpl-{i}", "index": 0, "rating": 1, "scale": "thumbs", "score": 1.0,
                            "corrected_text": None, "comment": None, "model": "m", "version": "1", "prompt": "Q: ",
                            "completion": f"the river rose {i} metres after the rain. " * 4, "completion_created": 0.0,
                            "created": time.time()})


def test_feedback_documents_are_a_new_span_of_the_mongodb_source(db, tmp_path):
    """The continuous-training loop on a MongoDB corpus: feedback documents go to a collection
    that the incremental export reads with the corpus, and each span records what made it."""
    from tfx_gpt2.feedback.records import FeedbackRule
    from tfx_gpt2.feedback.spans import MongoTrainingData, TrainingDataError
    from tfx_gpt2.feedback.store import SqliteStore

    root, client = str(tmp_path), mongo.client_factory("")
    corpus = mongo.MongoSource(collections=("news.articles",), text_field="body", uri_env="NEWS_MONGO_URI",
                               incremental=True)
    with pytest.raises(TrainingDataError, match="filter"):
        MongoTrainingData(dataclasses.replace(corpus, filter='{"lang": "en"}')).setup()
    target = MongoTrainingData(corpus, "news.feedback").setup()
    source = dataclasses.replace(corpus, collections=("news.articles", "news.feedback"), feedback_collection="news.feedback")
    store = SqliteStore(os.path.join(root, "feedback.db"))
    feedback_records(store, 0, 3)
    assert target.write(client, store.feedback_after(None), FeedbackRule(), "s") == 3
    assert target.write(client, store.feedback_after(None), FeedbackRule(), "s") == 0  # idempotent
    beam_local.run_local(data_pipeline(root, source))
    feedback_records(store, 3, 2)
    assert target.write(client, store.feedback_after("3"), FeedbackRule(), "s") == 2
    beam_local.run_local(data_pipeline(root, source))
    enc = _latest(_store(root), "Examples", "block_len")
    lineage = json.loads(enc["lineage"])
    assert [s["span"] for s in lineage] == [0, 1]
    first, second = (s["feedback"] for s in lineage)
    assert (first["feedback_after"], first["feedback_until"], first["feedback_records"]) == (None, "3", 3)
    assert (second["feedback_after"], second["feedback_until"], second["feedback_records"]) == ("3", "5", 2)
    assert lineage[1]["documents"] == 2
