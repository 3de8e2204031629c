"""Documents and the reasons a record is not one (plain Python, no TFX).

Every source (text files, MongoDB) turns records into `Document`s or `Rejected`s. A rejected record
is never dropped silently: it is counted per reason, listed with its id in the ExampleGen's
`rejected/` report, and the counts become properties of the output artifact.

Reasons:
    missing_text_field   the record has no text field (MongoDB) -- the field name is in `detail`
    non_string_text      the text field holds another type (number, list, ...)
    invalid_utf8         the bytes are not UTF-8; `detail` gives the byte offset

Empty documents are *not* rejected: they become examples with `num_chars == 0`, so that data
validation reports them as an anomaly, and the encoder skips them (counted as `empty_documents`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional, Tuple, Union

MISSING_TEXT_FIELD = "missing_text_field"
NON_STRING_TEXT = "non_string_text"
INVALID_UTF8 = "invalid_utf8"
REASONS = (MISSING_TEXT_FIELD, NON_STRING_TEXT, INVALID_UTF8)


@dataclasses.dataclass(frozen=True)
class Document:
    """A document: its stable id (the key of the split hash), its text, where it came from and
    extra string fields (e.g. a control token) that travel with it as features."""

    doc_id: str
    text: str
    source: str
    metadata: Tuple[Tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A record that is not a document, and why."""

    doc_id: str
    source: str
    reason: str
    detail: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)


def decode_utf8(data: bytes) -> Tuple[Optional[str], str]:
    """(text, '') for valid UTF-8, else (None, a detail naming the byte offset)."""
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return None, f"byte {e.start}: {data[e.start:e.start + 8]!r} is not UTF-8"


def check_text(value: Any, field: str) -> Tuple[Optional[str], str, str]:
    """Checks a text field's value: (text, '', '') or (None, reason, detail).

    Strings decoded with the `surrogateescape` error handler (how tfx-gpt2's MongoDB client reads
    invalid UTF-8) hold lone surrogates where the bad bytes were; they are `invalid_utf8`.
    """
    if value is None:
        return None, MISSING_TEXT_FIELD, f"no field {field!r}"
    if isinstance(value, bytes):
        text, detail = decode_utf8(value)
        return (text, "", "") if text is not None else (None, INVALID_UTF8, detail)
    if not isinstance(value, str):
        return None, NON_STRING_TEXT, f"{field!r} is a {type(value).__name__}: {str(value)[:60]!r}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = value.encode("utf-8", "surrogateescape")
        offset = len(value[:e.start].encode("utf-8", "surrogateescape"))
        return None, INVALID_UTF8, f"byte {offset}: {raw[offset:offset + 8]!r} is not UTF-8"
    return value, "", ""


def classify(doc_id: str, source: str, value: Any, field: str,
             metadata: Tuple[Tuple[str, str], ...] = ()) -> Union[Document, Rejected]:
    """A `Document` for a valid text value (stripped of surrounding whitespace), else a `Rejected`."""
    text, reason, detail = check_text(value, field)
    if text is None:
        return Rejected(doc_id, source, reason, detail)
    return Document(doc_id, text.strip(), source, metadata)


def count_reasons(rejected_lines) -> Dict[str, int]:
    """Counts the reasons in the JSON lines of a rejected report."""
    counts = {r: 0 for r in REASONS}
    for line in rejected_lines:
        line = line.strip()
        if line:
            reason = json.loads(line)["reason"]
            counts[reason] = counts.get(reason, 0) + 1
    return counts
