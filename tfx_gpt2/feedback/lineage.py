"""Data -> model -> completion -> feedback -> data: the tags a registered version carries, and the
answers of `tfx-gpt2 lineage`.

Each version registered by the pipeline is tagged with the spans it was trained on:

    tfx_gpt2.data.spans            '0-2'
    tfx_gpt2.data.documents        documents in those spans
    tfx_gpt2.feedback.span         the newest feedback span (absent: trained on the corpus alone)
    tfx_gpt2.feedback.watermark    the store watermark of the last feedback in it
    tfx_gpt2.feedback.records      feedback records in the feedback spans, and
    tfx_gpt2.feedback.documents    the training documents the rule made of them
    tfx_gpt2.feedback.from / .to   their time range (UTC)
    tfx_gpt2.feedback.rule         the rule that made the documents (FeedbackRule, JSON)
    tfx_gpt2.feedback.keys         documents kept per API key id, over the feedback spans (JSON)
    tfx_gpt2.feedback.dropped      feedback records that gave no document, per reason (JSON)
    tfx_gpt2.fine_tuned_from       the registered version the training started from (warm start)
    tfx_gpt2.data.lineage          per span: number, documents, feedback watermarks (JSON)
    tfx_gpt2.eval.<metric>         each of the evaluator's figures (docs/evaluation.md)
    tfx_gpt2.eval.gate             the gate metrics it was blessed or refused on (JSON)

The same spans are linked to the version in ML Metadata: the Examples artifacts are inputs of the
MlflowPusher execution whose PushedModel records the version.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Dict, List, Optional

from tfx_gpt2.feedback.spans import describe_spans

PREFIX = "tfx_gpt2."
FEEDBACK_SPAN_TAG = "tfx_gpt2.feedback.span"
FEEDBACK_WATERMARK_TAG = "tfx_gpt2.feedback.watermark"
FINE_TUNED_FROM_TAG = "tfx_gpt2.fine_tuned_from"
MAX_TAG_CHARS = 5000  # MLflow's limit on a tag value
EVAL_TAG = PREFIX + "eval."


def eval_tags(metrics: Dict[str, float], gate: str = "") -> Dict[str, str]:
    """The evaluator's figures (numbers) and gate (JSON) as tags of the version and its run."""
    tags = {f"{EVAL_TAG}{name}": f"{float(value):.6g}" for name, value in sorted(metrics.items())}
    return {**tags, f"{EVAL_TAG}gate": gate} if gate else tags


def utc(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lineage_tags(lineage: List[Dict[str, Any]]) -> Dict[str, str]:
    """The version tags of the spans in `lineage` (BpeEncoder's `lineage` property)."""
    if not lineage:
        return {}
    feedback = [s["feedback"] for s in lineage if s.get("feedback")]
    tags = {PREFIX + "data.spans": describe_spans(s["span"] for s in lineage),
            PREFIX + "data.documents": str(sum(s.get("documents") or 0 for s in lineage))}
    if feedback:
        last = max(feedback, key=lambda m: m["span"])
        tags.update({
            FEEDBACK_SPAN_TAG: str(last["span"]),
            FEEDBACK_WATERMARK_TAG: str(last["feedback_until"] or ""),
            PREFIX + "feedback.records": str(sum(m["feedback_records"] for m in feedback)),
            PREFIX + "feedback.documents": str(sum(m["documents"] for m in feedback)),
            PREFIX + "feedback.from": utc(min((m["feedback_from"] for m in feedback if m["feedback_from"] is not None),
                                              default=None)),
            PREFIX + "feedback.to": utc(max((m["feedback_to"] for m in feedback if m["feedback_to"] is not None),
                                            default=None)),
            PREFIX + "feedback.store": last["store"],
            PREFIX + "feedback.rule": json.dumps(last["rule"], sort_keys=True),
            PREFIX + "feedback.keys": _counts_tag([m.get("by_key") or {} for m in feedback]),
            PREFIX + "feedback.dropped": _counts_tag([m.get("dropped") or {} for m in feedback]),
        })
    compact = [{"span": s["span"], "documents": s.get("documents"),
                **({"feedback_after": s["feedback"]["feedback_after"], "feedback_until": s["feedback"]["feedback_until"],
                    "feedback_records": s["feedback"]["feedback_records"]} if s.get("feedback") else {})}
               for s in lineage]
    text = json.dumps(compact, separators=(",", ":"))
    while len(text) > MAX_TAG_CHARS and len(compact) > 1:  # the newest spans are kept
        compact = compact[1:]
        text = json.dumps(compact, separators=(",", ":"))
    tags[PREFIX + "data.lineage"] = text
    return tags


def _counts_tag(counts: List[Dict[str, int]]) -> str:
    """Counts summed over spans, as JSON, the largest first (the smallest left out past MLflow's limit)."""
    total: Dict[str, int] = {}
    for c in counts:
        for k, n in c.items():
            total[k] = total.get(k, 0) + n
    items = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
    text = json.dumps(dict(items))
    while len(text) > MAX_TAG_CHARS:
        items = items[:-1]
        text = json.dumps({**dict(items), "...": sum(total.values()) - sum(n for _, n in items)})
    return text


def trained_feedback(versions) -> tuple:
    """(span, watermark) of the newest feedback span any of `versions` (MLflow ModelVersions) was
    trained on; (0, None) when none was trained on feedback."""
    best = None
    for v in versions:
        tags = v.tags or {}
        span = tags.get(FEEDBACK_SPAN_TAG, "")
        if span.isdigit() and (best is None or int(span) > best[0]):
            best = (int(span), tags.get(FEEDBACK_WATERMARK_TAG) or None)
    return best or (0, None)
