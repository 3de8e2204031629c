"""Scoring task files through a served model's `/v1/completions`, as lm-evaluation-harness's
`local-completions` model does: the same `Score`s as `training.tasks.score_requests` in process.

Each request goes as a token-id prompt (context + continuation) with `echo: true`,
`max_tokens: 0` and `logprobs: 1`. The continuation's score is the sum of the last
`len(continuation)` entries of `token_logprobs`. It is greedy when each of those tokens is the
most likely one (its log-probability is the largest of `top_logprobs`). A request must fit the
served model's context (the server refuses a longer prompt with a 400 that says so).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Dict, List, Optional, Sequence

from tfx_gpt2.training.tasks import Request, Score, TaskItem, choice_metrics, choice_requests

PROMPTS_PER_REQUEST = 32  # the server's limit per request (serving.protocol.MAX_PROMPTS)


def _post(url: str, body: dict, api_key: Optional[str], timeout: float) -> dict:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    req = urllib.request.Request(url.rstrip("/") + "/v1/completions", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.load(response)


def _score(choice: dict, request: Request) -> Score:
    logprobs = choice["logprobs"]
    n = len(request.continuation)
    values = logprobs["token_logprobs"][-n:]
    tops = logprobs["top_logprobs"][-n:]
    greedy = all(v >= max(top.values()) - 1e-6 for v, top in zip(values, tops))
    return Score(float(sum(values)), greedy)


def score_via_completions(url: str, requests: Sequence[Request], model: str = "", api_key: Optional[str] = None,
                          timeout: float = 120.0) -> List[Score]:
    """Each request's `Score` from the server at `url` (e.g. http://localhost:8080), in order."""
    scores: List[Score] = []
    for i in range(0, len(requests), PROMPTS_PER_REQUEST):
        batch = requests[i:i + PROMPTS_PER_REQUEST]
        body = {"model": model, "prompt": [list(r.context + r.continuation) for r in batch], "echo": True,
                "max_tokens": 0, "logprobs": 1, "temperature": 0}
        answer = _post(url, body, api_key, timeout)
        choices = sorted(answer["choices"], key=lambda c: c["index"])
        scores += [_score(c, r) for c, r in zip(choices, batch)]
    return scores


def task_metrics_via_completions(url: str, tokenizer, items: Sequence[TaskItem], **kwargs) -> Dict[str, float]:
    """`acc`, `acc_norm` and `items` of `items` scored by the server at `url`."""
    scores = score_via_completions(url, choice_requests(tokenizer, items), **kwargs)
    return choice_metrics(items, [s.logprob for s in scores])
