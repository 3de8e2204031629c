"""Feedback bodies, ratings and the rule that turns feedback into training documents.

    POST /v1/feedback  {"completion_id": "cmpl-...", "rating": 1, "corrected_text": "...",
                        "comment": "...", "index": 0}

`rating` is on the server's scale: `thumbs` (+1 or -1) or `stars` (1 to 5). Every rating is also
stored as a `score` in [0, 1] (thumbs down 0, up 1; stars (r - 1) / 4), so rules and triggers
read one scale. `index` picks the prompt of a request that sent several (default 0).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import time
from typing import Any, Dict, List, Optional, Tuple

SCALES = {"thumbs": (-1, 1), "stars": (1, 5)}
MAX_TEXT_CHARS = 100_000
FIELDS = ("completion_id", "rating", "corrected_text", "comment", "index")


# Why feedback is refused (the server answers each with its HTTP code).
INVALID, UNKNOWN, CONFLICT, UNAVAILABLE = "invalid", "unknown", "conflict", "unavailable"


class FeedbackError(ValueError):
    """Feedback that is refused: `field` names the offending field; `reason` is `INVALID` (a bad
    body), `UNKNOWN` (no such completion or row), `CONFLICT` (other feedback on that row is final)
    or `UNAVAILABLE` (the store cannot be reached to look the completion up)."""

    def __init__(self, message: str, field: Optional[str] = None, reason: str = INVALID):
        super().__init__(message)
        self.field, self.reason = field, reason


def score(rating: int, scale: str) -> float:
    """The rating on [0, 1]."""
    low, high = SCALES[scale]
    return (rating - low) / (high - low)


def _rating(value: Any, scale: str) -> int:
    low, high = SCALES[scale]
    allowed = "+1 or -1" if scale == "thumbs" else "an integer from 1 to 5"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or (scale == "thumbs" and value not in (low, high)) \
            or not low <= value <= high:
        raise FeedbackError(f"rating = {value!r}: this server takes {scale} ratings, {allowed}", "rating")
    return int(value)


def _text(body: Dict[str, Any], name: str) -> Optional[str]:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FeedbackError(f"{name} = {value!r} is not a string; send text or leave it out", name)
    if len(value) > MAX_TEXT_CHARS:
        raise FeedbackError(f"{name} has {len(value)} characters; the limit is {MAX_TEXT_CHARS}", name)
    return value


def parse_feedback(body: Any, scale: str) -> Dict[str, Any]:
    """The checked feedback of a request body (without the completion's fields)."""
    if not isinstance(body, dict):
        raise FeedbackError("the body must be a JSON object with completion_id and rating")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise FeedbackError(f"unknown field(s) {unknown}; the fields are {list(FIELDS)}", unknown[0])
    cid = body.get("completion_id")
    if not isinstance(cid, str) or not cid:
        raise FeedbackError(f"completion_id = {cid!r}; send the `id` of a completion this server returned",
                            "completion_id")
    if "rating" not in body:
        raise FeedbackError(f"rating is missing; send {scale} ratings ({SCALES[scale][0]} to {SCALES[scale][1]})",
                            "rating")
    rating = _rating(body["rating"], scale)
    index = body.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise FeedbackError(f"index = {index!r} is not a prompt's index (0, 1, ...)", "index")
    return {"completion_id": cid, "index": index, "rating": rating, "scale": scale,
            "score": score(rating, scale), "corrected_text": _text(body, "corrected_text"),
            "comment": _text(body, "comment")}


def feedback_record(feedback: Dict[str, Any], completion: Dict[str, Any], key_id: Optional[str] = None) -> Dict[str, Any]:
    """The stored feedback: the checked body, the API key's id (None: anonymous), plus the
    completion's prompt, text and model."""
    index = feedback["index"]
    if index >= len(completion["prompts"]):
        raise FeedbackError(f"index = {index}: completion {completion['id']} has {len(completion['prompts'])} "
                            "prompt(s)", "index", reason=UNKNOWN)
    return {**feedback, "model": completion["model"], "version": completion["version"],
            "prompt": completion["prompts"][index], "completion": completion["completions"][index],
            "completion_created": completion["created"], "created": time.time(), "key_id": key_id}


def differing_field(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[str]:
    """The first field in which two feedbacks on one completion differ, or None."""
    for name in ("rating", "corrected_text", "comment"):
        if a.get(name) != b.get(name):
            return name
    return None


ANONYMOUS = "anonymous"
# Why a feedback record gave no training document (the lineage report counts each).
NOT_KEPT, DUPLICATE, NEAR_DUPLICATE, OVER_SHARE = "not kept by the rule", "duplicate", "near-duplicate", \
    "over the key's share"


def near_form(text: str) -> str:
    """The text as near-duplicates share it: case, punctuation and spacing left out."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


@dataclasses.dataclass
class Selection:
    """The training documents a rule made of feedback records, and why the others gave none.

    Attributes:
        kept: (watermark, record, document) of each document kept, in arrival order.
        by_key: documents kept per API key id (`anonymous`: from a server without keys).
        dropped: records that gave no document, per reason.
    """

    kept: List[Tuple[str, Dict[str, Any], str]]
    by_key: Dict[str, int]
    dropped: Dict[str, int]

    @property
    def documents(self) -> List[str]:
        return [d for _, _, d in self.kept]


def key_of(record: Dict[str, Any]) -> str:
    return record.get("key_id") or ANONYMOUS


def share_cap(counts: List[int], free: int, share: float) -> int:
    """The most documents one key may keep so that none holds more than `share` of the kept
    documents: the largest m with m <= share * (free + sum(min(c, m))), `free` being the
    anonymous documents, which have no key to count against."""
    m = max(counts, default=0)
    while m > 0 and m > share * (free + sum(min(c, m) for c in counts)):
        m -= 1
    return m


@dataclasses.dataclass(frozen=True)
class FeedbackRule:
    """Which feedback becomes a training document, and what the document is.

    Attributes:
        min_score: a completion rated at least this (on [0, 1]) is kept as `prompt + completion`
            (1.0: thumbs up or 5 stars; 0.75: 4 stars too); above 1 keeps none.
        use_corrections: a `corrected_text` becomes `prompt + corrected_text`, whatever the rating.
        min_chars: shorter documents are left out (they teach nothing).
        dedupe: a document equal to an earlier one, or equal but for case, punctuation and spacing,
            is dropped.
        max_key_share: no API key may give more than this share of a span's documents (its
            latest are dropped); 1 turns it off. Documents from a server without keys
            (`anonymous`) are not counted against any key.
    """

    min_score: float = 0.75
    use_corrections: bool = True
    min_chars: int = 1
    dedupe: bool = True
    max_key_share: float = 0.2

    def __post_init__(self):
        if not isinstance(self.min_score, (int, float)) or self.min_score < 0:
            raise ValueError(f"FeedbackRule.min_score = {self.min_score!r}; give a score in [0, 1] (or above 1 "
                             "to keep corrections only)")
        if not isinstance(self.max_key_share, (int, float)) or not 0 < self.max_key_share <= 1:
            raise ValueError(f"FeedbackRule.max_key_share = {self.max_key_share!r}; give a share in (0, 1] (1: no cap)")

    def document(self, record: Dict[str, Any]) -> Optional[str]:
        """The training document a feedback record gives, or None."""
        text = None
        if self.use_corrections and record.get("corrected_text"):
            text = record["prompt"] + record["corrected_text"]
        elif record["score"] >= self.min_score:
            text = record["prompt"] + record["completion"]
        return text if text is not None and len(text) >= self.min_chars else None

    def documents(self, records: List[Dict[str, Any]]) -> List[str]:
        return self.select([("", r) for r in records]).documents

    def select(self, records: List[Tuple[str, Dict[str, Any]]]) -> Selection:
        """The documents of (watermark, record) pairs, oldest first: the rule, then duplicates
        dropped, then each key capped at `max_key_share` of what is kept."""
        dropped: Dict[str, int] = collections.Counter()
        seen, near, candidates = set(), set(), []
        for watermark, record in records:
            document = self.document(record)
            if document is None:
                dropped[NOT_KEPT] += 1
            elif self.dedupe and document in seen:
                dropped[DUPLICATE] += 1
            elif self.dedupe and near_form(document) in near:
                dropped[NEAR_DUPLICATE] += 1
            else:
                seen.add(document)
                near.add(near_form(document))
                candidates.append((watermark, record, document))
        counts = collections.Counter(key_of(r) for _, r, _ in candidates)
        free = counts.pop(ANONYMOUS, 0)
        cap = share_cap(list(counts.values()), free, self.max_key_share) if self.max_key_share < 1 else None
        kept, by_key = [], collections.Counter()
        for watermark, record, document in candidates:
            key = key_of(record)
            if cap is not None and key != ANONYMOUS and by_key[key] >= cap:
                dropped[OVER_SHARE] += 1
                continue
            by_key[key] += 1
            kept.append((watermark, record, document))
        return Selection(kept, dict(by_key), dict(dropped))
