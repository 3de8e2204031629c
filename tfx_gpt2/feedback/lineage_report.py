"""What `tfx-gpt2 lineage` prints: data -> model for a version, model -> feedback -> model for a completion."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from tfx_gpt2.feedback.lineage import EVAL_TAG, FINE_TUNED_FROM_TAG, PREFIX, utc
from tfx_gpt2.feedback.records import FeedbackRule
from tfx_gpt2.registry.champion import version_with_alias
from tfx_gpt2.registry.client import ALIAS_URI, VERSION_URI, connect


def _version(client, uri: str):
    m = ALIAS_URI.match(uri)
    if m:
        version = version_with_alias(client, m["name"], m["alias"])
        if version is None:
            raise LookupError(f"{uri}: no version of {m['name']!r} holds the alias {m['alias']!r}")
        return version
    m = VERSION_URI.match(uri)
    if not m:
        raise LookupError(f"{uri!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(m["name"], m["version"])
    except MlflowException:
        raise LookupError(f"{uri}: no such version in the registry") from None


def _spans(tags: Dict[str, str]) -> List[Dict[str, Any]]:
    try:
        return json.loads(tags.get(PREFIX + "data.lineage") or "[]")
    except ValueError:
        return []


def version_lineage(tracking_uri: str, uri: str) -> str:
    """The spans, watermarks and counts that trained a registered version."""
    client = connect(tracking_uri)
    v = _version(client, uri)
    tags = v.tags or {}
    lines = [f"models:/{v.name}/{v.version}  aliases: {','.join(v.aliases) or '-'}  blessed: "
             f"{tags.get('blessed', '?')}  MLflow run: {v.run_id}  registered: {utc(int(v.creation_timestamp) / 1000)}",
             f"  pipeline run: {tags.get('pipeline_run_id') or '?'}",
             "  " + (f"fine-tuned from version {tags[FINE_TUNED_FROM_TAG]} (warm start)"
                     if tags.get(FINE_TUNED_FROM_TAG) else
                     f"started from: {tags.get('init_checkpoint') or 'not recorded'}")]
    lines += _evaluation(tags)
    spans = _spans(tags)
    if not spans:
        lines.append("  trained on: not recorded (a version registered before lineage tags)")
        return "\n".join(lines)
    lines.append(f"  trained on spans {tags.get(PREFIX + 'data.spans')}: {tags.get(PREFIX + 'data.documents')} "
                 "documents")
    for s in spans:
        if "feedback_records" in s:
            lines.append(f"    span {s['span']}: {s['documents']} documents from {s['feedback_records']} feedback "
                         f"record(s), store watermarks ({s['feedback_after'] or 'start'}, {s['feedback_until']}]")
        else:
            lines.append(f"    span {s['span']}: {s['documents']} documents (corpus)")
    if PREFIX + "feedback.span" in tags:
        lines.append(f"  feedback: {tags.get(PREFIX + 'feedback.records')} records -> "
                     f"{tags.get(PREFIX + 'feedback.documents')} training documents, "
                     f"{tags.get(PREFIX + 'feedback.from')} to {tags.get(PREFIX + 'feedback.to')}, from "
                     f"{tags.get(PREFIX + 'feedback.store')}")
        lines += _counts("documents per key", tags.get(PREFIX + "feedback.keys"))
        lines += _counts("records dropped", tags.get(PREFIX + "feedback.dropped"))
    return "\n".join(lines)


def _evaluation(tags: Dict[str, str]) -> List[str]:
    """The evaluator's figures, gate and reason, from the version's tags."""
    figures = {k[len(EVAL_TAG):]: v for k, v in sorted(tags.items()) if k.startswith(EVAL_TAG) and k != EVAL_TAG + "gate"}
    if not figures:
        return ["  evaluation: not recorded (a version registered before evaluation tags)"]
    lines = ["  evaluation: " + ", ".join(f"{k} {v}" for k, v in figures.items())]
    if tags.get(EVAL_TAG + "gate"):
        gate = json.loads(tags[EVAL_TAG + "gate"])
        lines.append("  gate: " + ", ".join(f"{g['metric']} {g['direction']} (margin {g['margin']:g})" for g in gate))
    if tags.get("blessing_reason"):
        lines.append(f"  blessing: {tags['blessing_reason']}")
    return lines


def _counts(title: str, tag: Optional[str]) -> List[str]:
    counts = json.loads(tag) if tag else {}
    if not counts:
        return [f"    {title}: none"]
    return [f"    {title}: " + ", ".join(f"{k} {n}" for k, n in counts.items())]


def _after(a: Optional[str], b: str) -> bool:
    """Watermark b comes after a (row numbers compare as numbers, ObjectIds as hex strings)."""
    if a is None or a == "":
        return True
    return int(b) > int(a) if a.isdigit() and b.isdigit() else b > a


def _trained_with(versions, watermark: str) -> List[tuple]:
    """(version, span, rule) of the versions whose feedback spans hold feedback `watermark`."""
    found = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        tags = v.tags or {}
        for s in _spans(tags):
            if "feedback_until" in s and _after(s["feedback_after"], watermark) and \
                    not _after(s["feedback_until"], watermark):
                rule = json.loads(tags.get(PREFIX + "feedback.rule") or "{}")
                found.append((v, s["span"], FeedbackRule(**rule) if rule else None))
    return found


def completion_lineage(tracking_uri: str, store, completion_id: str) -> str:
    """The version that produced a completion, its feedback, and the versions that feedback trained."""
    completion = store.completion(completion_id)
    if completion is None:
        raise LookupError(f"no completion {completion_id!r} in {store.describe()}")
    lines = [f"{completion_id}: produced by models:/{completion['model']}/{completion['version']} at "
             f"{utc(completion['created'])} ({completion['route']}, {len(completion['prompts'])} prompt(s))"]
    feedback = store.feedback_of(completion_id)
    if not feedback:
        lines.append("  no feedback on it")
        return "\n".join(lines)
    client = connect(tracking_uri)
    versions = client.search_model_versions(f"name = '{completion['model']}'")
    for watermark, record in feedback:
        lines.append(f"  feedback on prompt {record['index']}: rating {record['rating']} ({record['scale']}), "
                     f"{'with' if record.get('corrected_text') else 'no'} corrected text, at {utc(record['created'])} "
                     f"(store watermark {watermark})")
        trained = _trained_with(versions, watermark)
        for v, span, rule in trained:
            v = client.get_model_version(v.name, v.version)  # a search leaves out the aliases
            kept = rule is None or rule.document(record) is not None
            lines.append(f"    in feedback span {span}, which trained models:/{v.name}/{v.version} "
                         f"(aliases: {','.join(v.aliases) or '-'}): "
                         + ("kept as a training document" if kept else "not kept by the rule"))
        if not trained:
            lines.append("    not trained on yet")
    return "\n".join(lines)
