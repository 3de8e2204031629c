"""The feedback store and the server's recorder: feedback bodies and ratings, the rule that makes
training documents, the embedded store, and the spool that keeps records while MongoDB is down
(a real pymongo client against mockupdb, a MongoDB wire-protocol server)."""

import json
import threading
import time

import pytest
from conftest import wait_until
from mockupdb import MockupDB

from tfx_gpt2.feedback.recorder import Recorder
from tfx_gpt2.feedback.records import FeedbackError, FeedbackRule, parse_feedback
from tfx_gpt2.feedback.store import MongoStore, SqliteStore

WIRE = {"maxWireVersion": 21, "minWireVersion": 0}


def completion(i, version="1", prompts=("Hello",)):
    return {"id": f"cmpl-{i}", "created": 1000.0 + i, "route": "/v1/completions", "model": "m", "version": version,
            "prompts": list(prompts), "completions": [f" world {i}"] * len(prompts), "settings": {}}


@pytest.mark.parametrize("body, field, words", [
    ([1], None, "JSON object"),
    ({"rating": 1}, "completion_id", "completion_id = None"),
    ({"completion_id": "c"}, "rating", "rating is missing"),
    ({"completion_id": "c", "rating": 0}, "rating", "+1 or -1"),
    ({"completion_id": "c", "rating": True}, "rating", "+1 or -1"),
    ({"completion_id": "c", "rating": 1, "corrected_text": 5}, "corrected_text", "not a string"),
    ({"completion_id": "c", "rating": 1, "index": -1}, "index", "not a prompt's index"),
    ({"completion_id": "c", "rating": 1, "ratting": 1}, "ratting", "unknown field"),
])
def test_bad_feedback_names_the_field(body, field, words):
    with pytest.raises(FeedbackError) as info:
        parse_feedback(body, "thumbs")
    assert info.value.field == field and words in str(info.value) and info.value.reason == "invalid"


def test_ratings_on_both_scales_become_one_score():
    assert parse_feedback({"completion_id": "c", "rating": -1}, "thumbs")["score"] == 0.0
    assert parse_feedback({"completion_id": "c", "rating": 4}, "stars")["score"] == 0.75
    with pytest.raises(FeedbackError, match="from 1 to 5"):
        parse_feedback({"completion_id": "c", "rating": 6}, "stars")


def test_the_rule_keeps_good_completions_and_corrections():
    rule = FeedbackRule(min_score=0.75)
    base = {"prompt": "Q: ", "completion": "bad", "corrected_text": None}
    assert rule.document({**base, "score": 1.0}) == "Q: bad"
    assert rule.document({**base, "score": 0.5}) is None
    assert rule.document({**base, "score": 0.0, "corrected_text": "good"}) == "Q: good"
    assert FeedbackRule(use_corrections=False).document({**base, "score": 0.0, "corrected_text": "good"}) is None


def fb(i, key, text, score=1.0):
    return (str(i), {"prompt": "", "completion": text, "corrected_text": None, "score": score, "key_id": key})


def test_the_rule_drops_duplicates_and_caps_each_keys_share():
    spam = [fb(i, "spammer", f"Buy now {i}!") for i in range(40)]
    others = [fb(100 + i, f"user{i % 5}", f"A real sentence number {i}.") for i in range(10)]
    dupes = [fb(200, "user0", "A real sentence number 3."), fb(201, "user1", "a REAL sentence, number 3")]
    low = [fb(300, "user2", "Rated down.", score=0.0)]
    anonymous = [fb(400 + i, None, f"From the loopback server {i}.") for i in range(5)]
    selection = FeedbackRule().select(spam[:20] + others + dupes + low + anonymous + spam[20:])
    kept = selection.by_key
    total = sum(kept.values())
    # 10 from 5 users and 5 anonymous: the spammer may give at most 20% of what is kept
    assert kept["spammer"] <= 0.2 * total and kept["spammer"] == 3 and total == 18, kept
    assert kept["anonymous"] == 5 and kept["user0"] == 2
    assert selection.dropped == {"over the key's share": 37, "duplicate": 1, "near-duplicate": 1,
                                 "not kept by the rule": 1}
    assert selection.documents[:3] == ["Buy now 0!", "Buy now 1!", "Buy now 2!"]  # a key's earliest are kept
    assert len(FeedbackRule(max_key_share=1, dedupe=False).select(spam + dupes + others).documents) == 52
    assert FeedbackRule().select([fb(1, "only", "one key alone")]).documents == []  # 100% > 20%
    with pytest.raises(ValueError, match="max_key_share"):
        FeedbackRule(max_key_share=0)


def test_feedback_is_idempotent_and_final(tmp_path):
    recorder = Recorder(SqliteStore(str(tmp_path / "f.db")), str(tmp_path / "spool"))
    recorder.completed(completion(1, prompts=("A", "B")))
    assert recorder.feedback({"completion_id": "cmpl-1", "rating": 1})["status"] == "recorded"
    assert recorder.feedback({"completion_id": "cmpl-1", "rating": 1})["status"] == "already recorded"
    assert recorder.feedback({"completion_id": "cmpl-1", "rating": -1, "index": 1})["status"] == "recorded"
    with pytest.raises(FeedbackError) as info:
        recorder.feedback({"completion_id": "cmpl-1", "rating": -1})
    assert info.value.reason == "conflict" and info.value.field == "rating"
    for body in [{"completion_id": "cmpl-9", "rating": 1}, {"completion_id": "cmpl-1", "rating": 1, "index": 2}]:
        with pytest.raises(FeedbackError) as info:
            recorder.feedback(body)
        assert info.value.reason == "unknown"
    recorder.close()
    store = SqliteStore(str(tmp_path / "f.db"))
    assert store.counts() == {"completions": 1, "feedback": 2}
    records = [r for _, r in store.feedback_after(None)]
    assert [(r["prompt"], r["completion"], r["rating"], r["version"]) for r in records] == [
        ("A", " world 1", 1, "1"), ("B", " world 1", -1, "1")]
    first = store.feedback_after(None)[0][0]
    assert [r["prompt"] for _, r in store.feedback_after(first)] == ["B"]
    assert store.recent_scores("1", 10) == [0.0, 1.0] and store.recent_scores("2", 10) == []


def wait_for(condition, timeout=30.0):
    wait_until(condition, "timed out", timeout)


class Wire:
    """A mockupdb server that hangs up every write while `down`, and stores what it is sent after."""

    def __init__(self):
        self.server = MockupDB(auto_ismaster=WIRE)
        self.server.run()
        self.down, self.upserts, self.inserts = True, {}, []
        self.lock = threading.Lock()
        self.server.autoresponds(self.handle)

    def handle(self, request):
        if self.down:
            return request.hangup()
        name = request.command_name
        if name == "createIndexes":
            return request.ok()
        if name == "update":
            with self.lock:
                for u in request.docs[0].get("updates") or request.docs[1:]:
                    self.upserts[u["q"]["_id"]] = u["u"]
            return request.ok(n=len(request.docs[0].get("updates") or request.docs[1:]), nModified=0)
        if name == "insert":
            with self.lock:
                self.inserts.extend(request.docs[0].get("documents") or request.docs[1:])
            return request.ok(n=1)
        return None


def test_records_spool_while_mongodb_is_down_and_are_replayed_when_it_is_back(tmp_path, monkeypatch):
    wire = Wire()
    monkeypatch.setenv("FEEDBACK_MONGO", wire.server.uri)
    recorder = Recorder(MongoStore("FEEDBACK_MONGO"), str(tmp_path / "spool"), retry_seconds=0.3)
    for i in range(20):
        recorder.completed(completion(i))
    wait_for(lambda: recorder.spooled == 20)
    answer = recorder.feedback({"completion_id": "cmpl-3", "rating": 1})  # known from memory
    assert answer["status"] == "accepted"
    assert not wire.upserts and not wire.inserts
    wire.down = False
    wait_for(lambda: len(wire.upserts) == 20 and len(wire.inserts) == 1 and not recorder.spool_files())
    assert sorted(wire.upserts) == sorted(f"cmpl-{i}" for i in range(20))
    assert wire.upserts["cmpl-7"]["completions"] == [" world 7"]
    assert wire.inserts[0]["completion_id"] == "cmpl-3" and wire.inserts[0]["score"] == 1.0
    recorder.completed(completion(20))  # and new records go straight to the store
    wait_for(lambda: "cmpl-20" in wire.upserts)
    recorder.close()
    wire.server.stop()


def test_feedback_is_final_while_the_store_is_down_and_after_a_restart(tmp_path, monkeypatch):
    """+1 then -1 on one completion with MongoDB down: the second is refused (409), also by a new
    server process on the same spool; only the first reaches the store."""
    wire = Wire()
    monkeypatch.setenv("FEEDBACK_MONGO", wire.server.uri)
    recorder = Recorder(MongoStore("FEEDBACK_MONGO"), str(tmp_path / "spool"), retry_seconds=60)
    recorder.completed(completion(1, prompts=("A", "B")))
    assert recorder.feedback({"completion_id": "cmpl-1", "rating": 1}, "alice")["status"] == "accepted"
    with pytest.raises(FeedbackError) as info:
        recorder.feedback({"completion_id": "cmpl-1", "rating": -1}, "alice")
    assert info.value.reason == "conflict" and info.value.field == "rating"
    assert recorder.feedback({"completion_id": "cmpl-1", "rating": 1}, "alice")["status"] == "already recorded"
    assert recorder.feedback({"completion_id": "cmpl-1", "rating": -1, "index": 1}, "alice")["status"] == "accepted"  # its own row
    recorder.close()
    again = Recorder(MongoStore("FEEDBACK_MONGO"), str(tmp_path / "spool"), retry_seconds=0.3)
    again.completed(completion(1, prompts=("A", "B")))
    with pytest.raises(FeedbackError) as info:
        again.feedback({"completion_id": "cmpl-1", "rating": -1}, "bob")
    assert info.value.reason == "conflict"
    wire.down = False
    wait_for(lambda: len(wire.inserts) == 2 and not again.spool_files())
    assert sorted((r["index"], r["rating"], r["key_id"]) for r in wire.inserts) == [(0, 1, "alice"), (1, -1, "alice")]
    again.close()
    wire.server.stop()


def test_a_full_buffer_spills_to_the_spool_without_waiting(tmp_path):
    gate = threading.Event()

    class Stuck(SqliteStore):  # a store that answers nothing until the gate opens
        def put_completions(self, records):
            gate.wait()
            super().put_completions(records)

    store = Stuck(str(tmp_path / "f.db"))
    recorder = Recorder(store, str(tmp_path / "spool"), max_buffer=2)
    caller = threading.Thread(target=lambda: [recorder.completed(completion(i)) for i in range(50)], daemon=True)
    caller.start()
    caller.join(30)
    # generation never waits on the store: all 50 were taken while the store answered nothing
    assert not caller.is_alive() and not gate.is_set() and recorder.spool_files()
    gate.set()
    wait_for(lambda: store.counts()["completions"] == 50 and not recorder.spool_files())
    recorder.close()


def test_retrain_conditions(tmp_path):
    from tfx_gpt2.feedback.retrain import RetrainPolicy, decide

    store = SqliteStore(str(tmp_path / "f.db"))
    recorder = Recorder(store, str(tmp_path / "spool"))
    for i in range(6):
        recorder.completed(completion(i, version="1"))
        recorder.feedback({"completion_id": f"cmpl-{i}", "rating": 1 if i < 2 else -1})  # 2 up, 4 down
    recorder.close()
    rule = FeedbackRule()
    enough = decide(store, RetrainPolicy(min_new_documents=2), rule, None, "1")
    assert enough.fire and (enough.new_records, enough.new_documents) == (6, 2)
    assert not decide(store, RetrainPolicy(min_new_documents=3), rule, None, "1").fire
    first_two = store.feedback_after(None)[1][0]
    assert decide(store, RetrainPolicy(min_new_documents=2), rule, first_two, "1").new_documents == 0
    ratings = RetrainPolicy(min_new_documents=0, min_mean_score=0.5, min_scores=5)
    low = decide(store, ratings, rule, None, "1")
    assert low.fire and abs(low.mean_score - 2 / 6) < 1e-9 and "0.333" in low.describe()
    assert not decide(store, RetrainPolicy(min_new_documents=0, min_mean_score=0.5, min_scores=7), rule, None, "1").fire
    assert not decide(store, ratings, rule, None, "2").fire  # no rating of version 2
    old = decide(store, RetrainPolicy(min_new_documents=0, every_hours=1), rule, None, "1", time.time() - 7200)
    assert old.fire and "2.0 h old" in old.describe()
    assert not decide(store, RetrainPolicy(min_new_documents=0, every_hours=1), rule, None, "1", time.time()).fire


def test_lineage_tags_and_the_trained_watermark():
    from types import SimpleNamespace

    from tfx_gpt2.feedback.lineage import lineage_tags, trained_feedback

    manifest = {"span": 1, "feedback_after": None, "feedback_until": "16", "feedback_records": 16, "documents": 12,
                "feedback_from": 0.0, "feedback_to": 60.0, "store": "embedded store x", "rule": {"min_score": 0.75}}
    tags = lineage_tags([{"span": 0, "documents": 79, "feedback": None}, {"span": 1, "documents": 12,
                                                                           "feedback": manifest}])
    assert tags["tfx_gpt2.data.spans"] == "0-1" and tags["tfx_gpt2.data.documents"] == "91"
    assert (tags["tfx_gpt2.feedback.span"], tags["tfx_gpt2.feedback.watermark"]) == ("1", "16")
    assert tags["tfx_gpt2.feedback.from"] == "1970-01-01T00:00:00Z" and tags["tfx_gpt2.feedback.to"].endswith(":01:00Z")
    assert json.loads(tags["tfx_gpt2.data.lineage"])[1]["feedback_until"] == "16"
    versions = [SimpleNamespace(tags={}), SimpleNamespace(tags={"tfx_gpt2.feedback.span": "0",
                                                                "tfx_gpt2.feedback.watermark": "5"}),
                SimpleNamespace(tags=tags)]
    assert trained_feedback(versions) == (1, "16") and trained_feedback(versions[:2]) == (0, "5")
    assert trained_feedback(versions[:1]) == (0, None)
    counted = lineage_tags([{"span": 1, "documents": 3, "feedback": {
        **manifest, "by_key": {"alice": 2, "anonymous": 1}, "dropped": {"duplicate": 4}}}, {"span": 2, "documents": 1,
        "feedback": {**manifest, "span": 2, "by_key": {"bob": 1, "alice": 5}, "dropped": {"over the key's share": 2}}}])
    assert json.loads(counted["tfx_gpt2.feedback.keys"]) == {"alice": 7, "anonymous": 1, "bob": 1}
    assert json.loads(counted["tfx_gpt2.feedback.dropped"]) == {"duplicate": 4, "over the key's share": 2}


def test_a_replay_cut_short_by_a_dead_process_is_taken_up_again(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    # What a process killed between claiming a spool file and storing it leaves behind.
    with open(spool / "completions-123.jsonl.replaying-abcd1234", "w") as f:
        for i in range(3):
            f.write(json.dumps(completion(i)) + "\n")
    store = SqliteStore(str(tmp_path / "f.db"))
    recorder = Recorder(store, str(spool))
    wait_for(lambda: store.counts()["completions"] == 3 and not recorder.spool_files())
    recorder.close()
    assert not list(spool.iterdir())
