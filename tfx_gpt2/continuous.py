"""The continuous-training loop, run locally: `tfx-gpt2 retrain` and the Airflow feedback DAG's steps.

    decision, manifest, run_settings = prepare(settings, store, RetrainPolicy(), FeedbackRule())
    summary = retrain(settings, store, RetrainPolicy(), FeedbackRule())   # prepare, then run with Beam

`prepare` lays the corpus out as spans (`tfx_gpt2.feedback.spans`), reads from the registry which
feedback the registered versions were trained on, decides (`tfx_gpt2.feedback.retrain.decide`) and,
when it fires, writes the new feedback as the next span. `retrain` then runs the pipeline on the
spans: the corpus and every feedback span go through the same validation, split and encoding, and
the champion gate decides whether the new version takes `champion`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

from tfx_gpt2.feedback.records import FeedbackRule
from tfx_gpt2.feedback.retrain import Decision, RegistryState, RetrainPolicy, decide, registry_state
from tfx_gpt2.feedback.spans import TrainingData, TrainingDataError, write_span
from tfx_gpt2.settings import PipelineSettings


def training_data(settings: PipelineSettings) -> TrainingData:
    """The span layout of the settings' corpus: `<output_dir>/training-data/<pipeline>`."""
    if settings.mongo_collections:
        raise TrainingDataError(
            "the continuous-training loop writes feedback spans beside a text corpus; with a MongoDB source, add the "
            "feedback store's collection to mongo_collections with mongo_incremental instead (docs/continuous-training.md)")
    if "{SPAN}" in settings.file_pattern:
        raise TrainingDataError(f"file_pattern = {settings.file_pattern!r}: give the corpus's own pattern (e.g. "
                                "'*.txt'); the span layout is made from it")
    return TrainingData(os.path.join(settings.output_dir, "training-data", settings.pipeline_name),
                        settings.data_root, settings.file_pattern)


def span_settings(settings: PipelineSettings, data: TrainingData) -> PipelineSettings:
    """The settings that run the pipeline on the spans instead of the corpus folder."""
    return dataclasses.replace(settings, data_root=data.root, file_pattern=data.span_pattern)


def exported_spans(settings: PipelineSettings, node_id: str = "TextExampleGen") -> List[int]:
    """The spans the pipeline's ExampleGen has exported (from ML Metadata)."""
    from ml_metadata.metadata_store import metadata_store

    from tfx_gpt2.local import metadata_config

    if not os.path.exists(settings.metadata_path):
        return []
    store = metadata_store.MetadataStore(metadata_config(settings.metadata_path))
    context = store.get_context_by_type_and_name("node", f"{settings.pipeline_name}.{node_id}")
    if context is None:
        return []
    spans = set()
    for artifact in store.get_artifacts_by_context(context.id):
        if "span" in artifact.custom_properties:
            spans.add(artifact.custom_properties["span"].int_value)
        elif "span" in artifact.properties:
            spans.add(artifact.properties["span"].int_value)
    return sorted(spans)


@dataclasses.dataclass
class Prepared:
    """What `prepare` found and did."""

    decision: Decision
    settings: PipelineSettings  # the settings that run the pipeline on the spans
    manifest: Optional[Dict[str, Any]] = None  # of the feedback span written, if any
    corpus_first: bool = False  # span 0 was never exported: run on it before writing feedback


def decide_now(settings: PipelineSettings, store, policy: RetrainPolicy, rule: FeedbackRule,
               force: bool = False) -> Tuple[Decision, RegistryState]:
    """Whether to retrain now (the registry says which feedback was trained on), writing nothing."""
    state = registry_state(settings.tracking_uri, settings.pipeline_name)
    decision = decide(store, policy, rule, state.trained_watermark, state.champion, state.newest_version_time)
    if force and not decision.fire:
        decision.fire = True
        decision.reasons.append("forced (--force)")
    return decision, state


def prepare(settings: PipelineSettings, store, policy: RetrainPolicy, rule: FeedbackRule,
            force: bool = False) -> Prepared:
    """Decides and, when a condition holds, writes the new feedback as the next span. The
    ExampleGen exports the newest span only, so while the corpus (span 0) was never exported,
    no feedback span is written (and an unexported one is removed): the corpus goes first."""
    decision, state = decide_now(settings, store, policy, rule, force)
    data = training_data(settings).setup()
    prepared = Prepared(decision, span_settings(settings, data))
    if not decision.fire:
        return prepared
    if 0 not in exported_spans(prepared.settings):
        data.remove_spans_after(0)
        prepared.corpus_first = True
    elif decision.new_documents:
        records = store.feedback_after(state.trained_watermark)
        prepared.manifest = write_span(data, state.trained_span + 1, records, rule, state.trained_watermark,
                                       store.describe())
    return prepared


def retrain(settings: PipelineSettings, store, policy: RetrainPolicy, rule: FeedbackRule,
            force: bool = False) -> Optional[Dict[str, object]]:
    """Decides and, when a condition holds, runs the pipeline on the corpus and the feedback spans
    with Beam; returns the run's summary (None: nothing to do). A failed run raises."""
    from tfx_gpt2.local import run_and_report

    prepared = prepare(settings, store, policy, rule, force)
    print(prepared.decision.describe(), flush=True)
    if not prepared.decision.fire:
        return None
    if prepared.corpus_first:
        print("the corpus (span 0) was never exported by this pipeline: training on it first", flush=True)
        summary = run_and_report(prepared.settings)
        prepared = prepare(settings, store, policy, rule, force=True)
        if prepared.manifest is None:  # no feedback to add yet
            return summary
    if prepared.manifest is not None:
        m = prepared.manifest
        print(f"span {m['span']}: {m['documents']} training document(s) from {m['feedback_records']} feedback "
              f"record(s) ({store.describe()})", flush=True)
    return run_and_report(prepared.settings)
