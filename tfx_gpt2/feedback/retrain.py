"""When to retrain, and `tfx-gpt2 retrain`: feedback -> a new span -> the pipeline -> the gate.

    decision = decide(store, RetrainPolicy(min_new_documents=100), FeedbackRule(), trained, champion)
    if decision.fire:
        ...  # write the span (tfx_gpt2.feedback.spans) and run the pipeline on it

The conditions (any one fires):
    new data     at least `min_new_documents` training documents (what the rule makes of the
                 feedback after the trained watermark)
    ratings      the champion's mean score over its latest `score_window` ratings is below
                 `min_mean_score` (at least `min_scores` of them)
    schedule     the newest version is older than `every_hours`, and there is new feedback
A run below every condition does nothing ("nothing to do", exit status 0), so a cron entry can
call it as often as it likes. The gate is the pipeline's: a blessed version takes `champion`,
and a server following `models:/NAME@champion` switches to it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import List, Optional

from tfx_gpt2.feedback.lineage import trained_feedback
from tfx_gpt2.feedback.records import FeedbackRule
from tfx_gpt2.registry.champion import version_with_alias
from tfx_gpt2.registry.client import connect


@dataclasses.dataclass(frozen=True)
class RetrainPolicy:
    """The retrain conditions (see the module docstring); 0 or None turns one off.

    Attributes:
        min_new_documents: new training documents that make a retrain worth it.
        min_mean_score: retrain when the champion's mean score (on [0, 1]) falls below this.
        score_window: the latest ratings of the champion that the mean is taken over.
        min_scores: fewer ratings than this say nothing about the champion.
        every_hours: retrain when the newest version is this old and any feedback is new.
    """

    min_new_documents: int = 100
    min_mean_score: Optional[float] = None
    score_window: int = 100
    min_scores: int = 20
    every_hours: float = 0.0

    def __post_init__(self):
        if self.min_new_documents < 0:
            raise ValueError(f"RetrainPolicy.min_new_documents = {self.min_new_documents}; give 0 (off) or more")
        if self.min_mean_score is not None and not 0 <= self.min_mean_score <= 1:
            raise ValueError(f"RetrainPolicy.min_mean_score = {self.min_mean_score}; give a score in [0, 1]")


@dataclasses.dataclass
class Decision:
    fire: bool
    reasons: List[str]
    new_records: int
    new_documents: int
    mean_score: Optional[float]

    def describe(self) -> str:
        state = "retrain" if self.fire else "nothing to do"
        return f"{state}: " + "; ".join(self.reasons)


def decide(store, policy: RetrainPolicy, rule: FeedbackRule, trained_watermark: Optional[str],
           champion_version: Optional[str], newest_version_time: Optional[float] = None) -> Decision:
    """Whether the conditions of `policy` hold now, with the figures that decided it."""
    records = store.feedback_after(trained_watermark)
    documents = len(rule.documents([r for _, r in records]))
    fire, reasons = False, []
    if policy.min_new_documents:
        met = documents >= policy.min_new_documents
        fire |= met
        reasons.append(f"{documents} new training document(s) from {len(records)} feedback record(s) since the last "
                       f"trained watermark ({'>=' if met else '<'} {policy.min_new_documents})")
    mean = None
    if policy.min_mean_score is not None and champion_version is not None:
        scores = store.recent_scores(champion_version, policy.score_window)
        mean = sum(scores) / len(scores) if scores else None
        if len(scores) < policy.min_scores:
            reasons.append(f"{len(scores)} rating(s) of the champion (version {champion_version}), fewer than "
                           f"{policy.min_scores}: its mean score is not judged")
        else:
            met = mean < policy.min_mean_score and documents > 0
            fire |= met
            reasons.append(f"the champion's mean score over its last {len(scores)} ratings is {mean:.3f} "
                           f"({'<' if mean < policy.min_mean_score else '>='} {policy.min_mean_score})"
                           + ("" if documents or mean >= policy.min_mean_score else ", but no new training document"))
    if policy.every_hours and newest_version_time is not None:
        age = (time.time() - newest_version_time) / 3600
        met = age >= policy.every_hours and documents > 0
        fire |= met
        reasons.append(f"the newest version is {age:.1f} h old ({'>=' if age >= policy.every_hours else '<'} "
                       f"{policy.every_hours} h)")
    if not reasons:
        reasons.append("no condition is set")
    return Decision(fire, reasons, len(records), documents, mean)


@dataclasses.dataclass
class RegistryState:
    """What the registry says about the loop: the champion, and the feedback it was trained on."""

    champion: Optional[str]
    trained_span: int
    trained_watermark: Optional[str]
    newest_version_time: Optional[float]


def registry_state(tracking_uri: str, name: str) -> RegistryState:
    client = connect(tracking_uri)
    versions = client.search_model_versions(f"name = '{name}'")
    champion = version_with_alias(client, name, "champion") if versions else None
    span, watermark = trained_feedback(versions)
    newest = max((int(v.creation_timestamp) / 1000 for v in versions), default=None)
    return RegistryState(str(champion.version) if champion else None, span, watermark, newest)


# The loop's settings as environment variables (the Airflow feedback DAG's configuration).
ENV = {
    "TFX_GPT2_RETRAIN_MIN_NEW_DOCUMENTS": ("policy", "min_new_documents", int),
    "TFX_GPT2_RETRAIN_MIN_MEAN_SCORE": ("policy", "min_mean_score", float),
    "TFX_GPT2_RETRAIN_SCORE_WINDOW": ("policy", "score_window", int),
    "TFX_GPT2_RETRAIN_MIN_SCORES": ("policy", "min_scores", int),
    "TFX_GPT2_RETRAIN_EVERY_HOURS": ("policy", "every_hours", float),
    "TFX_GPT2_FEEDBACK_MIN_SCORE": ("rule", "min_score", float),
    "TFX_GPT2_FEEDBACK_USE_CORRECTIONS": ("rule", "use_corrections", lambda v: v.lower() in ("1", "true", "yes")),
    "TFX_GPT2_FEEDBACK_DEDUPE": ("rule", "dedupe", lambda v: v.lower() in ("1", "true", "yes")),
    "TFX_GPT2_FEEDBACK_MAX_KEY_SHARE": ("rule", "max_key_share", float),
}


def loop_config_from_env(environ) -> tuple:
    """(RetrainPolicy, FeedbackRule) from `TFX_GPT2_RETRAIN_*` and `TFX_GPT2_FEEDBACK_*` variables."""
    values = {"policy": {}, "rule": {}}
    for key, (which, field, convert) in ENV.items():
        if environ.get(key, "") != "":
            try:
                values[which][field] = convert(environ[key])
            except ValueError:
                raise ValueError(f"{key} = {environ[key]!r} is not a valid {field}") from None
    return RetrainPolicy(**values["policy"]), FeedbackRule(**values["rule"])
