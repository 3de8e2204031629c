"""What a run registered and measured, read from ML Metadata, and the report printed at its end
(with the commands that open MLflow and TensorBoard on it)."""

from __future__ import annotations

import glob
import json
import os
import shlex
import sys
from typing import Dict, List

from tfx_gpt2.config.pipeline import OutputLayout
from tfx_gpt2.orchestration.mlmd_runs import artifact_props, execution_states, latest_artifact, metadata_config


def read_anomalies(anomalies_artifact) -> Dict[str, List[str]]:
    """Split -> 'feature: description' lines of ExampleValidator's anomalies ([] when clean)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    out: Dict[str, List[str]] = {}
    for split_dir in sorted(glob.glob(os.path.join(anomalies_artifact.uri, "Split-*"))):
        anomalies = anomalies_pb2.Anomalies()
        with open(os.path.join(split_dir, "SchemaDiff.pb"), "rb") as f:
            anomalies.ParseFromString(f.read())
        lines = []
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(r.short_description for r in info.reason) or info.short_description
            lines.append(f"{feature}: {reasons}")
        if anomalies.HasField("dataset_anomaly_info"):
            lines.append(f"dataset: {anomalies.dataset_anomaly_info.short_description}")
        out[split_dir.rsplit("Split-", 1)[1]] = lines
    return out


def data_summary(store, context_id: int) -> Dict[str, object]:
    """Documents, rejected records, tokens per split and data anomalies of the latest run."""
    examples = [a for a in store.get_artifacts_by_context(context_id) if a.type == "Examples"]
    generated = [a for a in examples if "documents" in a.custom_properties]
    encoded = [a for a in examples if "block_len" in a.custom_properties]
    out: Dict[str, object] = {}
    if generated:
        props = artifact_props(max(generated, key=lambda a: a.id))
        out["documents"] = props.get("documents")
        out["empty_documents"] = props.get("empty_documents")
        out["rejected"] = {k[len("rejected_"):]: v for k, v in props.items() if k.startswith("rejected_") and v}
    if encoded:
        latest = max(encoded, key=lambda a: a.id)
        props = artifact_props(latest)
        splits = json.loads(latest.properties["split_names"].string_value or "[]")
        out["splits"] = {
            split: {key: props.get(f"{split}_{key}") for key in ("documents", "tokens", "blocks")}
            for split in splits
        }
        out["vocab_size"] = props.get("vocab_size")
    anomalies = latest_artifact(store, "ExampleAnomalies", context_id)
    if anomalies is not None:
        out["anomalies"] = read_anomalies(anomalies)
    return out


def summarize(layout: OutputLayout, run_id: str = "") -> Dict[str, object]:
    """What run `run_id` of the pipeline (default: the latest artifacts of any run) registered and
    measured, read from ML Metadata."""
    from ml_metadata.metadata_store import metadata_store

    store = metadata_store.MetadataStore(metadata_config(layout.metadata_path))
    context = store.get_context_by_type_and_name("pipeline", layout.pipeline_name)
    if context is None:
        raise RuntimeError(f"ML Metadata at {layout.metadata_path} has no pipeline {layout.pipeline_name!r}.")
    run = store.get_context_by_type_and_name("pipeline_run", run_id) if run_id else None
    if run_id and run is None:
        raise RuntimeError(f"ML Metadata at {layout.metadata_path} has no run {run_id!r}.")
    pushed, evaluation, model_run, blessing = (latest_artifact(store, t, context.id, run) for t in (
        "PushedModel", "ModelEvaluation", "ModelRun", "ModelBlessing"))
    if pushed is None or evaluation is None:
        raise RuntimeError("the pipeline has not pushed a model yet; did the run fail?")
    summary = {**artifact_props(evaluation), **artifact_props(pushed)}
    # The decision the push acted on (the pusher decides again when the champion moved meanwhile).
    summary["blessed"] = bool(summary.get("blessed", artifact_props(blessing).get("blessed") if blessing else False))
    summary["reason"] = summary.get("blessing_reason") or summary.get("reason")
    summary["tensorboard_logdir"] = model_run.uri if model_run else None
    summary["executions"] = execution_states(store, layout.pipeline_name, run_id)
    summary["data"] = data_summary(store, context.id)
    return summary


def ui_commands(summary: Dict[str, object], mlflow_port: int = 5000, tensorboard_port: int = 6006) -> Dict[str, List[str]]:
    """The commands that open the MLflow UI (for a sqlite store; a tracking server is its own UI)
    and TensorBoard on a run's results (argv lists). The UI runs one worker process: one reader
    on this machine needs no more (MLflow's default starts four, each importing MLflow)."""
    bin_dir = os.path.dirname(sys.executable)
    commands = {}
    tracking_uri = str(summary.get("tracking_uri", ""))
    if tracking_uri.startswith("sqlite:"):
        commands["MLflow UI"] = [os.path.join(bin_dir, "mlflow"), "ui", "--backend-store-uri", tracking_uri,
                                 "--port", str(mlflow_port), "--workers", "1"]
    commands["TensorBoard"] = [os.path.join(bin_dir, "tensorboard"), "--logdir", str(summary["tensorboard_logdir"]),
                               "--port", str(tensorboard_port)]
    return commands


def _data_lines(data: Dict[str, object]) -> List[str]:
    lines = []
    if "documents" in data:
        rejected = data.get("rejected") or {}
        lines.append(
            f"Data:             {data['documents']:,} documents ({data['empty_documents']:,} empty; rejected: "
            + (", ".join(f"{n:,} {r}" for r, n in sorted(rejected.items())) or "none") + ")"
        )
    for split, s in (data.get("splits") or {}).items():
        lines.append(f"  {split + ':':<16}{s['documents']:,} documents, {s['tokens']:,} tokens, {s['blocks']:,} blocks"
                     f" (vocabulary of {data.get('vocab_size') or 0:,} tokens)")
    anomalies = data.get("anomalies")
    if anomalies is not None:
        found = [f"{split}: {line}" for split, items in anomalies.items() for line in items]
        lines.append("Data anomalies:   " + ("none" if not found else f"{len(found)} found"))
        lines += [f"  {line}" for line in found]
    return lines


def _quality_lines(summary: Dict[str, object]) -> List[str]:
    """Next-word accuracy, the tasks' accuracies and the samples' figures, when measured."""
    lines = []
    if "next_word_accuracy" in summary:
        lines.append(f"Next word:        accuracy {summary['next_word_accuracy']:.3f} over "
                     f"{summary['next_word_documents']} eval documents (word perplexity "
                     f"{summary['next_word_perplexity']:.4g})")
    tasks = sorted(k[len("task_"):-len("_acc")] for k in summary if k.startswith("task_") and k.endswith("_acc"))
    for task in tasks:
        lines.append(f"{'Task:':<18}{task}: acc {summary[f'task_{task}_acc']:.3f}, acc_norm "
                     f"{summary[f'task_{task}_acc_norm']:.3f} ({summary[f'task_{task}_items']} items)")
    if "sample_distinct_2" in summary:
        lines.append(f"Samples:          distinct-1 {summary['sample_distinct_1']:.2f}, distinct-2 "
                     f"{summary['sample_distinct_2']:.2f}, repeated 4-grams {summary['sample_repeated_4gram_share']:.2f}"
                     f", {summary['sample_mean_words']:.1f} words")
    return lines


def report(summary: Dict[str, object]) -> str:
    """The lines printed at the end of a local run."""
    states = summary.get("executions") or {}
    cached = sorted(n for n, s in states.items() if s == "CACHED")
    lines = [
        "",
        "=" * 72,
        f"Components:       {len(states)} in this run, {len(cached)} reused from the cache"
        + (f" ({', '.join(cached)})" if 0 < len(cached) < len(states) else ""),
        f"Registered model: {summary['registered_model_name']} version {summary['model_version']}"
        f" (aliases: {summary.get('aliases', '')}; blessed: {summary['blessed']})",
        f"Eval perplexity:  {summary['eval_perplexity']:.2f}"
        f"   (unigram baseline on the same tokens: {summary['eval_unigram_perplexity']:.2f})",
        *_quality_lines(summary),
        f"Blessing:         {summary.get('reason', '')}",
        f"MLflow run:       {summary['mlflow_run_id']}",
    ]
    lines += _data_lines(summary.get("data") or {})
    lines += [
        "",
        "Open the results:",
    ]
    if not str(summary.get("tracking_uri", "")).startswith("sqlite:"):
        lines.append(f"  {'MLflow UI:':<13}{summary.get('tracking_uri')} (the tracking server)")
    lines += [f"  {name + ':':<13}{shlex.join(argv)}" for name, argv in ui_commands(summary).items()]
    lines.append("=" * 72)
    return "\n".join(lines)
