"""Documents from MongoDB collections (plain Python and pymongo, no TFX).

    spec = MongoSource(collections=("news.articles", "forum.posts"), text_field="body",
                       filter='{"lang": "en"}', uri_env="MONGO_URI")
    with connect(spec) as client:
        for record in read_collection(client, spec, "news.articles"):
            ...  # Document or Rejected

The connection string is never a parameter: `MongoSource` names where to find it (an environment
variable or a secret file), so pipeline metadata, compiled pipelines and logs hold only that name.
Logs show the URI with the password replaced by `***`.

Reading is a cursor sorted by a *watermark* field (`_id` by default; a timestamp field also works,
ties broken by `_id`), fetched `batch_size` documents at a time, so memory does not depend on the
collection's size. If the connection drops mid-cursor, a new cursor starts after the last document
seen, so no document is lost or read twice. An incremental export reads the documents past the
last watermark the previous export read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import urllib.parse
from typing import Any, Dict, Iterator, Optional, Tuple, Union

from tfx_gpt2.sources.documents import INVALID_UTF8, Document, Rejected, classify

logger = logging.getLogger("tfx_gpt2.mongo")

MISSING_WATERMARK = "missing_watermark_field"
DEFAULT_URI_ENV = "MONGO_URI"
# Errors after which a new cursor can resume where the old one stopped.
_RETRYABLE = ("AutoReconnect", "ConnectionFailure", "NetworkTimeout", "CursorNotFound", "ExecutionTimeout")


class MongoSourceError(ValueError):
    """The MongoDB source is misconfigured or cannot be read."""


@dataclasses.dataclass(frozen=True)
class MongoSource:
    """Where the documents are and which field holds their text.

    Attributes:
        collections: `database.collection` names, read one after the other.
        text_field: the field with the document's text (dots reach into sub-documents).
        filter: a MongoDB query as (extended) JSON, e.g. `{"lang": "en"}`; `{}` takes everything.
        metadata_fields: extra fields copied as string features (e.g. a control-token field).
        uri_env: the environment variable that holds the connection string (default `MONGO_URI`).
        uri_file: or a file that holds it (e.g. a mounted Kubernetes secret); wins over `uri_env`.
        watermark_field: the field that orders documents by arrival (`_id`, or a timestamp).
        incremental: export only documents past the previous run's watermark, as a new span.
        batch_size: documents per round trip (memory is bounded by it).
        max_retries: reconnections in a row before the export fails.
        feedback_collection: the collection of feedback training documents, if one is read
            (`tfx_gpt2.feedback.spans.MongoTrainingData`): each export records what made them.
    """

    collections: Tuple[str, ...]
    text_field: str = "text"
    filter: str = "{}"
    metadata_fields: Tuple[str, ...] = ()
    uri_env: Optional[str] = DEFAULT_URI_ENV
    uri_file: Optional[str] = None
    watermark_field: str = "_id"
    incremental: bool = False
    batch_size: int = 1000
    max_retries: int = 5
    retry_wait_s: float = 1.0
    feedback_collection: str = ""

    def __post_init__(self):
        if isinstance(self.collections, str):
            object.__setattr__(self, "collections", (self.collections,))
        object.__setattr__(self, "collections", tuple(self.collections))
        object.__setattr__(self, "metadata_fields", tuple(self.metadata_fields))
        if not self.collections:
            raise MongoSourceError("MongoSource.collections is empty; name at least one 'database.collection'.")
        for name in self.collections:
            db, _, coll = name.partition(".")
            if not db or not coll:
                raise MongoSourceError(
                    f"MongoSource.collections has {name!r}; write each as 'database.collection', e.g. 'news.articles'."
                )
        if "://" in (self.uri_env or "") or "://" in (self.uri_file or ""):
            raise MongoSourceError(
                "MongoSource.uri_env / uri_file look like a connection string; give the *name* of an "
                "environment variable (e.g. uri_env='MONGO_URI') or the path of a file that holds the URI, "
                "so that the password never lands in pipeline metadata."
            )
        if not self.uri_env and not self.uri_file:
            raise MongoSourceError("MongoSource needs uri_env (an environment variable) or uri_file (a secret file).")
        if self.batch_size <= 0:
            raise MongoSourceError(f"MongoSource.batch_size = {self.batch_size}; it must be positive.")
        self.query()  # the filter must parse

    def query(self) -> Dict[str, Any]:
        from bson import json_util

        try:
            query = json_util.loads(self.filter)
        except (ValueError, TypeError) as e:
            raise MongoSourceError(
                f"MongoSource.filter = {self.filter!r} is not valid JSON ({e}); write a MongoDB query such "
                "as '{\"lang\": \"en\"}' (extended JSON, e.g. {\"$date\": ...}, is accepted)."
            ) from None
        if not isinstance(query, dict):
            raise MongoSourceError(f"MongoSource.filter = {self.filter!r} must be a JSON object, e.g. '{{}}'.")
        return query

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "MongoSource":
        return cls(**json.loads(text))


def redact(uri: str) -> str:
    """The URI with its password replaced by `***` (safe to log)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def resolve_uri(spec: MongoSource) -> str:
    """Reads the connection string from the secret file or the environment variable."""
    if spec.uri_file:
        try:
            with open(spec.uri_file, encoding="utf-8") as f:
                uri = f.read().strip()
        except OSError as e:
            raise MongoSourceError(
                f"MongoSource.uri_file = {spec.uri_file!r} cannot be read ({e.strerror}); mount the secret "
                "there or use uri_env."
            ) from None
        where = f"file {spec.uri_file}"
    else:
        uri = os.environ.get(spec.uri_env, "").strip()
        where = f"${spec.uri_env}"
    if not uri:
        raise MongoSourceError(
            f"no MongoDB connection string in {where}; set it, e.g. "
            f"`export {spec.uri_env or 'MONGO_URI'}='mongodb://user:password@host:27017/'` (the pipeline "
            "stores only the variable's name)."
        )
    if not uri.startswith(("mongodb://", "mongodb+srv://")):
        raise MongoSourceError(
            f"the connection string in {where} does not start with mongodb:// or mongodb+srv://."
        )
    return uri


def _default_client(uri: str):
    import pymongo

    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=30_000, retryReads=True, appname="tfx-gpt2")


# Tests replace this with a function returning a mongomock client.
client_factory = _default_client


class _Client:
    def __init__(self, spec: MongoSource):
        self.uri = resolve_uri(spec)
        self.client = client_factory(self.uri)

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        self.client.close()


def connect(spec: MongoSource) -> _Client:
    """`with connect(spec) as client:` -- a client for the URI that `spec` points to."""
    return _Client(spec)


def _error_name(e: BaseException) -> str:
    return type(e).__name__


def describe_error(e: BaseException, spec: MongoSource) -> MongoSourceError:
    """A clear, password-free error for a pymongo failure."""
    where = f"file {spec.uri_file}" if spec.uri_file else f"${spec.uri_env}"
    code = getattr(e, "code", None)
    if code in (13, 18) or "auth" in str(e).lower():
        return MongoSourceError(
            f"MongoDB refused the credentials of the connection string in {where} ({_error_name(e)}, code "
            f"{code}); check the user, the password and authSource in that URI."
        )
    return MongoSourceError(f"MongoDB error with the server in {where}: {_error_name(e)}: {e}")


def get_path(record: Dict[str, Any], path: str) -> Any:
    """`record['a']['b']` for `path='a.b'`; None when a step is missing."""
    value: Any = record
    for step in path.split("."):
        if not isinstance(value, dict) or step not in value:
            return None
        value = value[step]
    return value


def id_string(value: Any) -> str:
    """A stable string for an `_id` (ObjectId -> hex; others -> extended JSON)."""
    from bson import ObjectId, json_util

    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value
    return json_util.dumps(value, sort_keys=True)


def dump_watermark(value: Any) -> str:
    from bson import json_util

    return json_util.dumps(value)


def load_watermark(text: Optional[str]) -> Any:
    from bson import json_util

    return None if text is None else json_util.loads(text)


def _range_query(spec: MongoSource, lower: Any, upper: Any) -> Dict[str, Any]:
    clauses = [spec.query()]
    if lower is not None:
        clauses.append({spec.watermark_field: {"$gt": lower}})
    if upper is not None:
        clauses.append({spec.watermark_field: {"$lte": upper}})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _collection(client, name: str):
    db, _, coll = name.partition(".")
    return client[db][coll]


def _raw(coll):
    """The collection returning undecoded BSON documents, so that each is decoded on its own: one
    with invalid UTF-8 is then one rejected document instead of an error for the whole batch.
    (Test doubles without raw BSON support return decoded documents.)"""
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    try:
        return coll.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    except (NotImplementedError, TypeError, AttributeError):
        return coll


def _decode(record) -> Tuple[Dict[str, Any], bool]:
    """(document, valid UTF-8?) for a raw or already decoded record."""
    raw = getattr(record, "raw", None)
    if raw is None:
        return record, True
    import bson
    from bson.codec_options import CodecOptions

    try:
        return bson.decode(raw), True
    except (bson.errors.InvalidBSON, UnicodeDecodeError):
        return bson.decode(raw, codec_options=CodecOptions(unicode_decode_error_handler="replace")), False


def snapshot(client, spec: MongoSource, name: str) -> Dict[str, Any]:
    """{'count', 'max_watermark'} of the filtered collection now: the driver's fingerprint and the
    upper end of the range an export reads (documents added later wait for the next run)."""
    coll = _collection(client, name)
    query = spec.query()
    count = coll.count_documents(query)
    last = coll.find_one(
        {"$and": [query, {spec.watermark_field: {"$exists": True}}]} if spec.watermark_field != "_id" else query,
        projection={spec.watermark_field: 1}, sort=[(spec.watermark_field, -1), ("_id", -1)],
    )
    return {"count": count, "max_watermark": None if last is None else get_path(last, spec.watermark_field)}


def _resume_clause(spec: MongoSource, last_wm: Any, last_id: Any) -> Dict[str, Any]:
    if spec.watermark_field == "_id":
        return {"_id": {"$gt": last_id}}
    return {"$or": [
        {spec.watermark_field: {"$gt": last_wm}},
        {spec.watermark_field: last_wm, "_id": {"$gt": last_id}},
    ]}


def _is_retryable(e: BaseException) -> bool:
    return any(c.__name__ in _RETRYABLE for c in type(e).__mro__)


def read_collection(
    client, spec: MongoSource, name: str, lower: Any = None, upper: Any = None,
    sleep=time.sleep, progress: Optional[Dict[str, Any]] = None,
) -> Iterator[Union[Document, Rejected]]:
    """Yields every record of collection `name` that matches the filter, with watermark in
    `(lower, upper]` (None: unbounded), in watermark order, as a `Document` or a `Rejected`.

    A dropped connection or a lost cursor resumes after the last record yielded, up to
    `spec.max_retries` times in a row, waiting `retry_wait_s * 2**attempt` seconds between tries.
    `progress['last_watermark']` is the watermark of the last record yielded (the next incremental
    export starts after it), `progress['retries']` the reconnections.
    """
    progress = {} if progress is None else progress
    progress.setdefault("retries", 0)
    coll = _raw(_collection(client, name))
    base = _range_query(spec, lower, upper)
    fields = {spec.text_field: 1, spec.watermark_field: 1, **{f: 1 for f in spec.metadata_fields}}
    sort = [("_id", 1)] if spec.watermark_field == "_id" else [(spec.watermark_field, 1), ("_id", 1)]
    last: Optional[Tuple[Any, Any]] = None
    failures = 0
    while True:
        query = base if last is None else {"$and": [base, _resume_clause(spec, *last)]}
        try:
            cursor = coll.find(query, projection=fields, sort=sort, batch_size=spec.batch_size)
            for raw in cursor:
                failures = 0
                record, valid = _decode(raw)
                last = (get_path(record, spec.watermark_field), record["_id"])
                if last[0] is not None:
                    progress["last_watermark"] = last[0]
                yield _to_record(record, spec, name) if valid else _invalid_utf8(record, spec, name)
            return
        except Exception as e:  # noqa: BLE001 -- pymongo's errors are classified below
            if not _is_retryable(e):
                raise describe_error(e, spec) from None
            failures += 1
            progress["retries"] += 1
            if failures > spec.max_retries:
                raise MongoSourceError(
                    f"reading {name} failed {failures} times in a row ({_error_name(e)}: {e}); the export "
                    f"stopped after {'no document' if last is None else 'the document with _id ' + id_string(last[1])}. "
                    "Check the server and the network, or raise MongoSource.max_retries."
                ) from None
            wait = spec.retry_wait_s * 2 ** (failures - 1)
            logger.warning("reading %s: %s (%s); resuming after %s in %.1f s (try %d of %d)", name,
                           _error_name(e), e, "the start" if last is None else id_string(last[1]), wait,
                           failures, spec.max_retries)
            sleep(wait)


def _to_record(record: Dict[str, Any], spec: MongoSource, name: str) -> Union[Document, Rejected]:
    doc_id = f"{name}:{id_string(record['_id'])}"
    metadata = []
    for field in spec.metadata_fields:
        value = get_path(record, field)
        metadata.append((field, "" if value is None else str(value)))
    return classify(doc_id, name, get_path(record, spec.text_field), spec.text_field, tuple(metadata))


def _invalid_utf8(record: Dict[str, Any], spec: MongoSource, name: str) -> Rejected:
    text = get_path(record, spec.text_field)
    where = ""
    if isinstance(text, str) and "\ufffd" in text:
        where = f" in {spec.text_field!r} at character {text.index(chr(0xFFFD))} ({text[:40]!r}...)"
    return Rejected(f"{name}:{id_string(record['_id'])}", name, INVALID_UTF8,
                    f"the stored string is not valid UTF-8{where}")


def missing_watermark(client, spec: MongoSource, name: str) -> Iterator[Rejected]:
    """Records of `name` that match the filter but lack the watermark field: an incremental export
    cannot place them in a range, so they are reported instead of silently skipped."""
    if spec.watermark_field == "_id":
        return
    coll = _collection(client, name)
    query = {"$and": [spec.query(), {spec.watermark_field: {"$exists": False}}]}
    for record in coll.find(query, projection={"_id": 1}, batch_size=spec.batch_size):
        yield Rejected(f"{name}:{id_string(record['_id'])}", name, MISSING_WATERMARK,
                       f"no field {spec.watermark_field!r}")
