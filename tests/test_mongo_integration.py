"""Against a real MongoDB server, when `MONGO_URI` is set (skipped otherwise):

    MONGO_URI=mongodb://user:password@localhost:27017/ .venv/bin/python -m pytest tests/test_mongo_integration.py

Writes a scratch collection in database `tfx_gpt2_test`, reads it back through the same code
the pipeline runs (real pymongo, raw BSON, batches, incremental watermark), and drops it.
"""

import os
import uuid

import pytest

from tfx_gpt2.sources import documents as d
from tfx_gpt2.sources import mongo

pytestmark = pytest.mark.skipif(not os.environ.get("MONGO_URI"), reason="set MONGO_URI to run against a real server")


@pytest.fixture()
def collection():
    import pymongo

    client = pymongo.MongoClient(os.environ["MONGO_URI"])
    name = f"docs_{uuid.uuid4().hex[:8]}"
    coll = client.tfx_gpt2_test[name]
    yield coll, f"tfx_gpt2_test.{name}"
    coll.drop()
    client.close()


def test_read_filter_batches_and_increments(collection):
    coll, name = collection
    coll.insert_many([{"text": f"document {i}", "lang": "en" if i % 2 else "fr"} for i in range(25)])
    coll.insert_one({"text": 3, "lang": "en"})
    spec = mongo.MongoSource(collections=(name,), filter='{"lang": "en"}', batch_size=4)
    with mongo.connect(spec) as client:
        assert mongo.snapshot(client, spec, name)["count"] == 13
        progress = {}
        records = list(mongo.read_collection(client, spec, name, progress=progress))
        assert [r.text for r in records if isinstance(r, d.Document)] == [f"document {i}" for i in range(1, 25, 2)]
        assert [r.reason for r in records if isinstance(r, d.Rejected)] == [d.NON_STRING_TEXT]
        coll.insert_one({"text": "late", "lang": "en"})
        later = list(mongo.read_collection(client, spec, name, lower=progress["last_watermark"]))
        assert [r.text for r in later] == ["late"]
