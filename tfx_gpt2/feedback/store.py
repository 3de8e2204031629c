"""Where completions and feedback are kept: MongoDB (the design's store) or an embedded sqlite file.

    store = open_store(directory="/out/feedback")            # embedded: /out/feedback/feedback.db
    store = open_store(mongo_uri_env="MONGO_URI")             # MongoDB: database `tfx_gpt2`

Both keep two collections (tables): `completions` (one record per request, keyed by its id) and
`feedback` (one record per completion and prompt index, in arrival order). A feedback record's
*watermark* orders arrivals: the row number in sqlite, the ObjectId in MongoDB; "feedback after
watermark W" is what a retrain has not yet seen. Writes of completions are idempotent upserts, so
a replayed spool never duplicates. The MongoDB connection string is read from the environment
variable named by `mongo_uri_env`; only that name is ever logged or stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from typing import Any, Dict, Iterable, List, Optional, Tuple

from tfx_gpt2.sources import mongo

DATABASE_FILE = "feedback.db"
DEFAULT_DATABASE = "tfx_gpt2"

Watermarked = Tuple[str, Dict[str, Any]]


class StoreUnavailable(RuntimeError):
    """The store cannot be reached now (records go to the spool, and are replayed later)."""


class SqliteStore:
    """The embedded store: one sqlite file, safe for several processes (WAL, busy timeout)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None
        self._pid = os.getpid()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS completions (id TEXT PRIMARY KEY, created REAL, version TEXT, "
                       "record TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS feedback (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                       "completion_id TEXT, idx INTEGER, created REAL, version TEXT, score REAL, record TEXT, "
                       "UNIQUE (completion_id, idx))")

    def describe(self) -> str:
        return f"embedded store {self.path}"

    @contextlib.contextmanager
    def _db(self):
        """The connection, one transaction: kept open across calls (a server writes completions
        all the time; opening the file for each batch cost more than the writes), used by one
        thread at a time, and opened again after an error or in a forked process."""
        with self._lock:
            try:
                if self._conn is None or self._pid != os.getpid():
                    self._conn, self._pid = sqlite3.connect(self.path, timeout=30, check_same_thread=False), os.getpid()
                with self._conn:
                    yield self._conn
            except sqlite3.OperationalError as e:
                self._drop()
                raise StoreUnavailable(f"{self.path}: {e}") from None

    def _drop(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def put_completions(self, records: Iterable[Dict[str, Any]]) -> None:
        rows = [(r["id"], r["created"], r["version"], json.dumps(r)) for r in records]
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?)", rows)

    def completion(self, completion_id: str) -> Optional[Dict[str, Any]]:
        with self._db() as db:
            row = db.execute("SELECT record FROM completions WHERE id = ?", (completion_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_feedback(self, record: Dict[str, Any]) -> Tuple[bool, Dict[str, Any]]:
        """(True, record) if stored now; (False, the earlier record) if this prompt has feedback."""
        with self._db() as db:
            try:
                db.execute("INSERT INTO feedback (completion_id, idx, created, version, score, record) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (record["completion_id"], record["index"], record["created"],
                                                         record["version"], record["score"], json.dumps(record)))
                return True, record
            except sqlite3.IntegrityError:
                row = db.execute("SELECT record FROM feedback WHERE completion_id = ? AND idx = ?",
                                 (record["completion_id"], record["index"])).fetchone()
                return False, json.loads(row[0])

    def feedback_after(self, watermark: Optional[str] = None, until: Optional[str] = None) -> List[Watermarked]:
        """(watermark, record) of the feedback after `watermark` (and up to `until`), oldest first."""
        query, args = "SELECT seq, record FROM feedback WHERE seq > ?", [int(watermark or 0)]
        if until is not None:
            query, args = query + " AND seq <= ?", args + [int(until)]
        with self._db() as db:
            rows = db.execute(query + " ORDER BY seq", args).fetchall()
        return [(str(seq), json.loads(record)) for seq, record in rows]

    def feedback_of(self, completion_id: str) -> List[Watermarked]:
        with self._db() as db:
            rows = db.execute("SELECT seq, record FROM feedback WHERE completion_id = ? ORDER BY idx",
                              (completion_id,)).fetchall()
        return [(str(seq), json.loads(record)) for seq, record in rows]

    def recent_scores(self, version: Optional[str], window: int) -> List[float]:
        """The scores of the latest `window` feedbacks on completions of `version` (None: any)."""
        query, args = "SELECT score FROM feedback", []
        if version is not None:
            query, args = query + " WHERE version = ?", [str(version)]
        with self._db() as db:
            rows = db.execute(query + " ORDER BY seq DESC LIMIT ?", args + [window]).fetchall()
        return [r[0] for r in rows]

    def counts(self) -> Dict[str, int]:
        with self._db() as db:
            return {"completions": db.execute("SELECT COUNT(*) FROM completions").fetchone()[0],
                    "feedback": db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]}

    def close(self) -> None:
        with self._lock:
            self._drop()


def _default_client(uri: str):
    import pymongo

    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000, appname="tfx-gpt2-feedback")


# Tests replace this with a function returning a mongomock client.
client_factory = _default_client


class MongoStore:
    """The MongoDB store: collections `completions` and `feedback` of `database`."""

    def __init__(self, uri_env: str, database: str = DEFAULT_DATABASE):
        spec = mongo.MongoSource(collections=(f"{database}.feedback",), uri_env=uri_env)
        self.uri_env, self.database = uri_env, database
        self.client = client_factory(mongo.resolve_uri(spec))
        self.db = self.client[database]
        self._indexed = False

    def describe(self) -> str:
        return f"MongoDB database {self.database} (connection string in ${self.uri_env})"

    @contextlib.contextmanager
    def _call(self):
        import pymongo.errors

        try:
            if not self._indexed:
                self.db["feedback"].create_index([("completion_id", 1), ("index", 1)], unique=True)
                self._indexed = True
            yield
        except (pymongo.errors.ConnectionFailure, pymongo.errors.ServerSelectionTimeoutError,
                pymongo.errors.NetworkTimeout) as e:
            raise StoreUnavailable(f"MongoDB (${self.uri_env}): {type(e).__name__}") from None

    def put_completions(self, records: Iterable[Dict[str, Any]]) -> None:
        from pymongo import ReplaceOne

        ops = [ReplaceOne({"_id": r["id"]}, {**r, "_id": r["id"]}, upsert=True) for r in records]
        if ops:
            with self._call():
                self.db["completions"].bulk_write(ops, ordered=False)

    def completion(self, completion_id: str) -> Optional[Dict[str, Any]]:
        with self._call():
            record = self.db["completions"].find_one({"_id": completion_id})
        return _plain(record) if record else None

    def put_feedback(self, record: Dict[str, Any]) -> Tuple[bool, Dict[str, Any]]:
        import pymongo.errors

        with self._call():
            try:
                self.db["feedback"].insert_one(dict(record))
                return True, record
            except pymongo.errors.DuplicateKeyError:
                earlier = self.db["feedback"].find_one({"completion_id": record["completion_id"],
                                                        "index": record["index"]})
                return False, _plain(earlier)

    def feedback_after(self, watermark: Optional[str] = None, until: Optional[str] = None) -> List[Watermarked]:
        from bson import ObjectId

        bounds = {}
        if watermark:
            bounds["$gt"] = ObjectId(watermark)
        if until:
            bounds["$lte"] = ObjectId(until)
        with self._call():
            cursor = self.db["feedback"].find({"_id": bounds} if bounds else {}).sort("_id", 1)
            return [(str(r["_id"]), _plain(r)) for r in cursor]

    def feedback_of(self, completion_id: str) -> List[Watermarked]:
        with self._call():
            cursor = self.db["feedback"].find({"completion_id": completion_id}).sort("index", 1)
            return [(str(r["_id"]), _plain(r)) for r in cursor]

    def recent_scores(self, version: Optional[str], window: int) -> List[float]:
        with self._call():
            cursor = self.db["feedback"].find({} if version is None else {"version": str(version)},
                                              {"score": 1}).sort("_id", -1).limit(window)
            return [r["score"] for r in cursor]

    def counts(self) -> Dict[str, int]:
        with self._call():
            return {"completions": self.db["completions"].count_documents({}),
                    "feedback": self.db["feedback"].count_documents({})}

    def close(self) -> None:
        self.client.close()


def _plain(record: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in record.items() if k != "_id"}


def open_store(directory: Optional[str] = None, mongo_uri_env: Optional[str] = None,
               database: str = DEFAULT_DATABASE):
    """MongoDB when `mongo_uri_env` names the variable holding its connection string, else the
    embedded store in `directory`."""
    if mongo_uri_env:
        return MongoStore(mongo_uri_env, database)
    if not directory:
        raise ValueError("give the embedded store's directory, or mongo_uri_env for MongoDB")
    return SqliteStore(os.path.join(directory, DATABASE_FILE))
