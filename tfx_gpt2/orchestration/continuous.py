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

from tfx_gpt2.config.settings import PipelineSettings
from tfx_gpt2.feedback.records import FeedbackRule
from tfx_gpt2.feedback.retrain import Decision, RegistryState, RetrainPolicy, decide, registry_state
from tfx_gpt2.feedback.spans import (
    FEEDBACK_COLLECTION,
    MongoTrainingData,
    TrainingData,
    TrainingDataError,
    write_span,
)


def with_loop_defaults(settings: PipelineSettings, environ=None) -> PipelineSettings:
    """The loop's defaults: each retrain fine-tunes the champion (a warm start) unless
    `TFX_GPT2_WARM_START` says otherwise."""
    environ = os.environ if environ is None else environ
    if environ.get("TFX_GPT2_WARM_START", "") == "":
        return dataclasses.replace(settings, warm_start=True)
    return settings


def training_data(settings: PipelineSettings):
    """Where feedback documents go: beside a text corpus, `<output_dir>/training-data/<pipeline>`
    (`TrainingData`); with a MongoDB corpus, a collection read with it (`MongoTrainingData`)."""
    if settings.mongo_collections:
        return MongoTrainingData(settings.data_config().source, settings.feedback_collection or FEEDBACK_COLLECTION)
    if "{SPAN}" in settings.file_pattern:
        raise TrainingDataError(f"file_pattern = {settings.file_pattern!r}: give the corpus's own pattern (e.g. "
                                "'*.txt'); the span layout is made from it")
    return TrainingData(os.path.join(settings.output_dir, "training-data", settings.pipeline_name),
                        settings.data_root, settings.file_pattern)


def span_settings(settings: PipelineSettings, data) -> PipelineSettings:
    """The settings that run the pipeline on the corpus plus the feedback documents."""
    if isinstance(data, MongoTrainingData):
        extra = () if data.collection in settings.mongo_collections else (data.collection,)
        return dataclasses.replace(settings, mongo_collections=tuple(settings.mongo_collections) + extra,
                                   feedback_collection=data.collection)
    return dataclasses.replace(settings, data_root=data.root, file_pattern=data.span_pattern)


def write_feedback(data, state: RegistryState, store, rule: FeedbackRule) -> Dict[str, Any]:
    """Writes the feedback after the trained watermark as training documents; returns a manifest."""
    records = store.feedback_after(state.trained_watermark)
    if isinstance(data, MongoTrainingData):
        from tfx_gpt2.sources import mongo

        with mongo.connect(data.source) as client:
            new = data.write(client, records, rule, store.describe())
        return {"span": "the next export", "documents": new, "feedback_records": len(records),
                "collection": data.collection}
    return write_span(data, state.trained_span + 1, records, rule, state.trained_watermark, store.describe())


def exported_spans(settings: PipelineSettings, component: str = "TextExampleGen") -> List[int]:
    """The spans the pipeline's ExampleGen has exported, from ML Metadata (under any orchestrator:
    the executions of the pipeline's context whose type is the component's class)."""
    from ml_metadata.metadata_store import metadata_store

    from tfx_gpt2.feedback.spans import mlmd_span
    from tfx_gpt2.orchestration.mlmd_runs import metadata_config

    if not os.path.exists(settings.metadata_path):
        return []
    store = metadata_store.MetadataStore(metadata_config(settings.metadata_path))
    context = store.get_context_by_type_and_name("pipeline", settings.pipeline_name)
    if context is None:
        return []
    types = {t.id: t.name for t in store.get_execution_types()}
    runs = [e.id for e in store.get_executions_by_context(context.id)
            if types.get(e.type_id, "").rsplit(".", 1)[-1] == component]
    outputs = [e.artifact_id for e in store.get_events_by_execution_ids(runs) if e.type == e.OUTPUT]
    return sorted({mlmd_span(a) for a in store.get_artifacts_by_id(outputs)
                   if "span" in a.custom_properties or "span" in a.properties})


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
    if isinstance(data, TrainingData) and 0 not in exported_spans(prepared.settings):
        data.remove_spans_after(0)
        prepared.corpus_first = True
    elif decision.new_documents:
        prepared.manifest = write_feedback(data, state, store, rule)
    return prepared


def retrain(settings: PipelineSettings, store, policy: RetrainPolicy, rule: FeedbackRule,
            force: bool = False) -> Optional[Dict[str, object]]:
    """Decides and, when a condition holds, runs the pipeline on the corpus and the feedback spans
    with Beam; returns the run's summary (None: nothing to do). A failed run raises."""
    from tfx_gpt2.orchestration.beam_local import run_and_report

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
        where = f"collection {m['collection']} (the next export's span)" if "collection" in m else f"span {m['span']}"
        print(f"{where}: {m['documents']} new training document(s) from {m['feedback_records']} feedback "
              f"record(s) ({store.describe()})", flush=True)
    return run_and_report(prepared.settings)
