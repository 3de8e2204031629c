"""The server's side of the store: completions written in the background, feedback checked and stored.

Generation never waits on the store. `completed()` puts the record in a bounded buffer that a
writer thread empties in batches; when the buffer is full, or the store cannot be reached, records
are appended to a spool file on local disk (`<spool_dir>/*.jsonl`), and the writer replays the
spool once the store answers again: none is lost, and replays are idempotent (upserts by id).

Feedback is stored while the request waits (it needs the answer: 404 for an unknown completion,
409 for a different feedback on the same prompt). A completion still in the buffer is known from
memory. When the store is down, feedback on a completion known in memory is spooled and answered
202 ("accepted"); feedback on one the server cannot look up is answered 503. Feedback is final
while the store is down too: a spooled feedback (also one spooled before a restart) answers a
second one on the same prompt as the store would (409 if it differs, "already recorded" if not).
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import queue
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from tfx_gpt2.feedback.records import (
    CONFLICT,
    UNAVAILABLE,
    UNKNOWN,
    FeedbackError,
    differing_field,
    feedback_record,
    parse_feedback,
)
from tfx_gpt2.feedback.store import StoreUnavailable

log = logging.getLogger("tfx_gpt2.feedback")

# The answer's `status`.
RECORDED, ALREADY_RECORDED, ACCEPTED = "recorded", "already recorded", "accepted"
BATCH = 256
# After a first record, the writer waits this long for more: one transaction per batch, not per
# completion (each commit of the embedded store syncs the disk).
LINGER_SECONDS = 0.05


class Recorder:
    """Args:
        store: a `SqliteStore` or `MongoStore`.
        spool_dir: where records wait while the store is unreachable.
        scale: the rating scale of `POST /v1/feedback` ('thumbs' or 'stars').
        max_buffer: completions held in memory before they go to the spool.
        retry_seconds: how often the writer retries an unreachable store.
    """

    def __init__(self, store, spool_dir: str, scale: str = "thumbs", max_buffer: int = 10_000,
                 retry_seconds: float = 2.0, remember: int = 10_000):
        self.store, self.spool_dir, self.scale = store, spool_dir, scale
        self.retry_seconds = retry_seconds
        self._buffer: "queue.Queue[Dict[str, Any]]" = queue.Queue(maxsize=max_buffer)
        self._recent: "collections.OrderedDict[str, Dict[str, Any]]" = collections.OrderedDict()
        self._remember, self._lock = remember, threading.Lock()
        self._spool_lock = threading.Lock()
        self._stop = threading.Event()
        self.down_since: Optional[float] = None
        self.spooled = 0
        os.makedirs(spool_dir, exist_ok=True)
        self._recover_claimed()
        # (completion id, index) -> the feedback waiting in the spool: feedback is final before
        # the store has it too.
        self._spooled_feedback: Dict[Tuple[str, int], Dict[str, Any]] = {
            (r["completion_id"], r["index"]): r for r in self._read_spool("feedback")}
        self._thread = threading.Thread(target=self._run, name="tfx-gpt2-feedback-writer", daemon=True)
        self._thread.start()

    # -- completions ------------------------------------------------------------------------------

    def completed(self, record: Dict[str, Any]) -> None:
        """Records a completion without waiting: buffered, or spooled when the buffer is full."""
        with self._lock:
            self._recent[record["id"]] = record
            while len(self._recent) > self._remember:
                self._recent.popitem(last=False)
        try:
            self._buffer.put_nowait(record)
        except queue.Full:
            self._spool("completions", [record])

    def _run(self) -> None:
        while not self._stop.is_set() or not self._buffer.empty():
            batch = self._take(timeout=0.2)
            if batch:
                self._write(batch)
            if self.down_since is None or time.monotonic() - self.down_since >= self.retry_seconds:
                self.replay()

    def _take(self, timeout: float) -> List[Dict[str, Any]]:
        try:
            batch = [self._buffer.get(timeout=timeout)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + (0 if self._stop.is_set() else LINGER_SECONDS)
        while len(batch) < BATCH:
            try:
                batch.append(self._buffer.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _write(self, batch: List[Dict[str, Any]]) -> None:
        if self.down_since is not None:
            self._spool("completions", batch)
            return
        try:
            self.store.put_completions(batch)
        except Exception as e:  # noqa: BLE001 -- the writer must outlive any store error; nothing is dropped
            if not isinstance(e, StoreUnavailable):
                log.exception("writing %d completion(s) to the feedback store failed", len(batch))
            self._went_down(e)
            self._spool("completions", batch)

    def _went_down(self, error) -> None:
        if self.down_since is None:
            log.warning("the feedback store is unreachable (%s); spooling records to %s until it is back",
                        error, self.spool_dir)
        self.down_since = time.monotonic()

    # -- the spool --------------------------------------------------------------------------------

    def _spool(self, kind: str, records: List[Dict[str, Any]]) -> None:
        path = os.path.join(self.spool_dir, f"{kind}-{os.getpid()}.jsonl")
        with self._spool_lock, open(path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.spooled += len(records)

    def _read_spool(self, kind: str) -> List[Dict[str, Any]]:
        records = []
        for path in glob.glob(os.path.join(self.spool_dir, f"{kind}-*.jsonl")):
            with open(path, encoding="utf-8") as f:
                records += [json.loads(line) for line in f if line.strip()]
        return records

    def _recover_claimed(self) -> None:
        """Puts back the spool files a replay had claimed when its process died (replays are
        idempotent, so one still running elsewhere at worst writes some records twice)."""
        for path in glob.glob(os.path.join(self.spool_dir, "*.jsonl.replaying-*")):
            if not path.endswith(".jsonl"):
                os.rename(path, path + ".jsonl")

    def spool_files(self) -> List[str]:
        return sorted(glob.glob(os.path.join(self.spool_dir, "*.jsonl")))

    def replay(self) -> int:
        """Writes spooled records to the store; returns how many. Stops at the first failure."""
        done = 0
        for path in self.spool_files():
            claimed = f"{path}.replaying-{uuid.uuid4().hex[:8]}"
            with self._spool_lock:
                try:
                    os.rename(path, claimed)
                except FileNotFoundError:
                    continue
            with open(claimed, encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            try:
                self._store_spooled(os.path.basename(path), records)
            except Exception as e:  # noqa: BLE001 -- kept in the spool, retried later
                if not isinstance(e, StoreUnavailable):
                    log.exception("replaying %s into the feedback store failed", path)
                self._went_down(e)
                with self._spool_lock:
                    os.rename(claimed, path if not os.path.exists(path) else claimed + ".jsonl")
                return done
            os.remove(claimed)
            done += len(records)
        if self.down_since is not None and done:
            log.info("the feedback store is back: %d spooled record(s) written", done)
        self.down_since = None
        return done

    def _store_spooled(self, name: str, records: List[Dict[str, Any]]) -> None:
        if name.startswith("completions"):
            for i in range(0, len(records), BATCH):
                self.store.put_completions(records[i:i + BATCH])
            return
        for r in records:
            stored, earlier = self.store.put_feedback(r)
            if not stored and differing_field(r, earlier) is not None:
                log.warning("spooled feedback on %s[%d] differs from the feedback stored first; the first is kept",
                            r["completion_id"], r["index"])
            with self._lock:
                self._spooled_feedback.pop((r["completion_id"], r["index"]), None)

    # -- feedback ---------------------------------------------------------------------------------

    def completion(self, completion_id: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            if completion_id in self._recent:
                return self._recent[completion_id]
        return self.store.completion(completion_id)

    def feedback(self, body: Any, key_id: Optional[str] = None) -> Dict[str, Any]:
        """The answer to a feedback body sent with the API key `key_id`; its `status` is `RECORDED`,
        `ALREADY_RECORDED`, or `ACCEPTED` (spooled while the store is down).

        Raises:
            FeedbackError: refused (its `reason` says why).
        """
        feedback = parse_feedback(body, self.scale)
        cid = feedback["completion_id"]
        try:
            completion = self.completion(cid)
        except StoreUnavailable:
            raise FeedbackError(f"completion {cid} is not in this server's memory and the feedback store cannot "
                                "be reached; retry later", "completion_id", reason=UNAVAILABLE) from None
        if completion is None:
            raise FeedbackError(f"completion_id = {cid!r}: no completion with this id was served here",
                                "completion_id", reason=UNKNOWN)
        record = feedback_record(feedback, completion, key_id)
        with self._lock:
            earlier = self._spooled_feedback.get((cid, record["index"]))
        if earlier is None:
            try:
                stored, earlier = self.store.put_feedback(record)
            except StoreUnavailable as e:
                self._went_down(e)
                return self._spool_feedback(record)
        else:
            stored = False
        if not stored:
            differs = differing_field(record, earlier)
            if differs:
                raise FeedbackError(f"{cid} (index {record['index']}) already has feedback with {differs} = "
                                    f"{earlier.get(differs)!r}; feedback is final", differs, reason=CONFLICT)
            return {"completion_id": cid, "index": record["index"], "status": ALREADY_RECORDED}
        return {"completion_id": cid, "index": record["index"], "status": RECORDED,
                     "score": record["score"]}

    def _spool_feedback(self, record: Dict[str, Any]) -> Dict[str, Any]:
        key = (record["completion_id"], record["index"])
        with self._lock:
            earlier = self._spooled_feedback.setdefault(key, record)
        if earlier is not record:  # a concurrent feedback on the same prompt was spooled first
            differs = differing_field(record, earlier)
            if differs:
                raise FeedbackError(f"{key[0]} (index {key[1]}) already has feedback with {differs} = "
                                    f"{earlier.get(differs)!r}; feedback is final", differs, reason=CONFLICT)
            return {"completion_id": key[0], "index": key[1], "status": ALREADY_RECORDED}
        self._spool("feedback", [record])
        return {"completion_id": key[0], "index": key[1], "status": ACCEPTED,
                     "detail": "the feedback store is unreachable; this feedback is kept and stored when it is back"}

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is buffered (or spools it) and stops the writer."""
        self._stop.set()
        self._thread.join(timeout)
        rest = []
        while not self._buffer.empty():
            rest.append(self._buffer.get_nowait())
        if rest:
            self._spool("completions", rest)
        self.store.close()
