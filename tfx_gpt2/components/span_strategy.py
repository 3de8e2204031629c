"""LatestSpans: the resolver strategy that gives the encoder every span an incremental source exported.

TFX's `SpanRangeStrategy` returns every artifact of each span in range; when a span was exported
twice (a `span-{SPAN}` folder rewritten before it was trained on, a span re-read after a failed
run), its documents would be read twice. This strategy keeps, for each span, the artifact created
last (the highest ML Metadata id), and the latest `num_spans` spans.
"""

from typing import Dict, List, Optional

from tfx import types
from tfx.dsl.components.common import resolver

from tfx_gpt2.feedback.spans import mlmd_span


def span_of(artifact: types.Artifact) -> int:
    """The artifact's span: ExampleGens record it as a custom property (an int, or a string)."""
    return mlmd_span(artifact.mlmd_artifact)


def latest_per_span(artifacts: List[types.Artifact], num_spans: int) -> List[types.Artifact]:
    """The newest artifact of each of the latest `num_spans` spans, ordered by span."""
    newest: Dict[int, types.Artifact] = {}
    for artifact in artifacts:
        span = span_of(artifact)
        if span not in newest or artifact.id > newest[span].id:
            newest[span] = artifact
    return [newest[span] for span in sorted(newest)[-num_spans:]]


class LatestSpansStrategy(resolver.ResolverStrategy):
    """For each input, the newest artifact of each of its latest `num_spans` spans."""

    def __init__(self, num_spans: int):
        if num_spans <= 0:
            raise ValueError(f"num_spans = {num_spans}; it must be positive")
        self.num_spans = num_spans

    def resolve_artifacts(self, store, input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        del store
        resolved = {key: latest_per_span(artifacts, self.num_spans) for key, artifacts in input_dict.items()}
        return resolved if all(resolved.values()) else None
