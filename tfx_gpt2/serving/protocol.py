"""Request bodies of the three APIs, checked before anything reaches the engine.

Each parser returns a `Job` (prompts, one `SamplingConfig`, streaming or not) or raises
`BadRequest` naming the field, the value and the limit. Nothing is coerced: a number or a null
where a prompt belongs is an error, as is an unknown setting, a non-finite number or a value
beyond its limit (`LIMITS`). Limits that depend on the model (the context, the vocabulary) are
checked by `check_fits` once the prompts are tokenized.

    OpenAI   POST /v1/completions          {"model", "prompt": str | [str], "max_tokens", "temperature",
                                           "top_p", "stop", "seed", "n": 1, "stream", ...}
    MLflow   POST /invocations             {"inputs" | "instances" | "dataframe_records" |
                                           "dataframe_split": ..., "params": {...}}, or CSV
    Seldon   POST /api/v1.0/predictions    {"data": {"ndarray": [...]}, "parameters": {...}}
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from typing import Any, Dict, List, Optional, Tuple

# MLflow's and Seldon's parameter names and defaults: the pyfunc signature's.
from tfx_gpt2.config.model import SAMPLING_PARAM_DEFAULTS
from tfx_gpt2.model.generate import SamplingConfig

# Abuse limits, stated once; each error message names the limit it hit.
MAX_PROMPTS = 32  # prompts per request
MAX_BODY_BYTES = 1_000_000
MAX_STOPS = 4
MAX_STOP_CHARS = 64
MAX_TEMPERATURE = 10.0
MAX_PENALTY = 10.0
MAX_SEED = 2**31 - 1
MAX_DEPTH = 16  # levels of nesting in a JSON body
MAX_INT_DIGITS = 20  # digits of an integer in a JSON body (every limit here has fewer)



class BadRequest(ValueError):
    """A request the server refuses; `field` is the offending field (None: the whole body)."""

    def __init__(self, message: str, field: Optional[str] = None, status: int = 400):
        super().__init__(message)
        self.field, self.status = field, status


@dataclasses.dataclass(frozen=True)
class Job:
    """What a request asks for: prompts, their settings, and whether to stream."""

    prompts: List[str]
    config: SamplingConfig
    stream: bool = False
    include_usage: bool = False
    logprobs: Optional[int] = None  # alternatives per token to return with their log-probabilities
    echo: bool = False  # return the prompt (and, with logprobs, its tokens' log-probabilities) too
    generate: bool = True  # False: `max_tokens` 0 with `echo`: the prompt is only scored
    prompt_ids: Optional[List[List[int]]] = None  # prompts sent as token ids (then `prompts` is empty)

    @property
    def scored(self) -> bool:
        return self.logprobs is not None


def read_json(data: bytes) -> Any:
    """The JSON value of a body, refused (400, 413) when it is too large, not JSON, nested more
    than `MAX_DEPTH` levels, holds an integer of more than `MAX_INT_DIGITS` digits, or text that is
    not valid Unicode (a lone UTF-16 surrogate such as "\\ud800")."""
    if len(data) > MAX_BODY_BYTES:
        raise BadRequest(f"the body has {len(data)} bytes; the limit is {MAX_BODY_BYTES}", status=413)
    try:
        body = json.loads(data, parse_int=_small_int)
    except BadRequest:
        raise
    except RecursionError:
        raise BadRequest(f"the body is nested too deeply to be read; send at most {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise BadRequest(f"the body is not JSON ({e}); send a JSON object") from None
    _check_values(body)
    return body


def _small_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise BadRequest(f"the body holds an integer of {digits} digits ({text[:12]}...); numbers here have at "
                         f"most {MAX_INT_DIGITS} digits")
    return int(text)


def _check_values(body: Any) -> None:
    """Refuses nesting deeper than `MAX_DEPTH` and text with lone surrogates (which JSON's escapes
    allow but UTF-8 cannot encode), naming where they are."""
    stack = [(body, 1, "the body")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"the body is nested more than {MAX_DEPTH} levels deep (at {where}); send a flatter "
                             "object")
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, f"a key of {where}")
                stack.append((item, depth + 1, key if depth == 1 else f"{where}.{key}"))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value))


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        field = where.split(".")[0].split("[")[0]
        raise BadRequest(f"{where} holds a lone UTF-16 surrogate (U+{ord(text[e.start]):04X}) at character "
                         f"{e.start}, which is not text; send valid Unicode (pair the surrogates, or drop it)",
                         None if field.startswith("the body") or field.startswith("a key") else field) from None


def _number(body: Dict[str, Any], name: str, default: float, low: float, high: float,
            low_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name} = {value!r} is not a finite number; send a number in "
                         f"{'(' if low_open else '['}{low}, {high}]", name)
    if value > high or value < low or (low_open and value == low):
        raise BadRequest(f"{name} = {value!r} is outside {'(' if low_open else '['}{low}, {high}]", name)
    return float(value)


def _integer(body: Dict[str, Any], name: str, default: Optional[int], low: int, high: int) -> Optional[int]:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} = {value!r} is not an integer; send an integer in [{low}, {high}]", name)
    if not low <= value <= high:
        raise BadRequest(f"{name} = {value!r} is outside [{low}, {high}]", name)
    return value


def _prompts(value: Any, field: str) -> List[str]:
    """A list of prompt strings from a string or a list of strings; anything else is an error."""
    prompts = [value] if isinstance(value, str) else value
    if not isinstance(prompts, list):
        raise BadRequest(f"{field} = {value!r:.100} is not a string or a list of strings", field)
    if not prompts:
        raise BadRequest(f"{field} is an empty list; send at least one prompt", field)
    if len(prompts) > MAX_PROMPTS:
        raise BadRequest(f"{field} holds {len(prompts)} prompts; the limit is {MAX_PROMPTS} per request", field)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise BadRequest(f"{field}[{i}] = {p!r:.100} is not a string; prompts are text", field)
    return prompts


def _stops(value: Any) -> Tuple[str, ...]:
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest(f"stop = {value!r:.100} is not a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise BadRequest(f"stop holds {len(stops)} strings; the limit is {MAX_STOPS} strings of at most "
                         f"{MAX_STOP_CHARS} characters", "stop")
    return tuple(s for s in stops if s)


def _unknown(body: Dict[str, Any], known, where: str) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown} in {where}; the fields are {sorted(known)}", unknown[0])


def sampling(body: Dict[str, Any], max_tokens_name: str, default_max: int, default_top_k: int,
             n_vocab: int) -> SamplingConfig:
    """The `SamplingConfig` of a settings object (values checked against `LIMITS`)."""
    seed = _integer(body, "seed", None, -1, MAX_SEED)
    return SamplingConfig(
        max_new_tokens=_integer(body, max_tokens_name, default_max, 1, 1_000_000),
        temperature=_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        top_k=_integer(body, "top_k", default_top_k, 0, n_vocab),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, MAX_PENALTY, low_open=True),
        seed=None if seed is None or seed < 0 else seed,
        stop=_stops(body.get("stop")),
    )


# -- OpenAI ---------------------------------------------------------------------------------------

OPENAI_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
                 "stop", "seed", "n", "stream", "stream_options", "user", "echo", "logprobs", "best_of",
                 "presence_penalty", "frequency_penalty", "logit_bias", "suffix"}
MAX_LOGPROBS = 5  # alternatives per token, as OpenAI's completions API allows
# OpenAI fields accepted only at the value that means "off".
_OFF = {"best_of": (1,), "presence_penalty": (0, 0.0),
        "frequency_penalty": (0, 0.0), "logit_bias": (None, {}), "suffix": (None, "")}


def parse_completion(body: Any, n_vocab: int) -> Job:
    """A `POST /v1/completions` body (OpenAI's legacy completions API)."""
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object such as {"prompt": "Hello", "max_tokens": 16}')
    _unknown(body, OPENAI_FIELDS, "the completion request")
    for name, allowed in _OFF.items():
        if name in body and body[name] not in allowed:
            raise BadRequest(f"{name} = {body[name]!r:.100} is not supported; leave it out", name)
    if "prompt" not in body:
        raise BadRequest("prompt is missing; send a string or a list of strings", "prompt")
    _integer(body, "n", 1, 1, 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream = {stream!r} is not true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest(f"stream_options = {options!r:.100} is not an object", "stream_options")
    _unknown(options, {"include_usage"}, "stream_options")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise BadRequest(f"echo = {echo!r:.40} is not true or false", "echo")
    logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
    generate = _integer(body, "max_tokens", 16, 0, 1_000_000) > 0
    if not generate and not echo:
        raise BadRequest("max_tokens = 0 generates nothing; ask for at least 1 token, or set echo (with logprobs) "
                         "to score the prompt", "max_tokens")
    config = sampling(body if generate else {**body, "max_tokens": 1}, "max_tokens", 16, 0, n_vocab)
    ids = _token_prompts(body["prompt"], n_vocab)
    prompts = [] if ids is not None else _prompts(body["prompt"], "prompt")
    return Job(prompts, config, stream, bool(options.get("include_usage")), logprobs, echo, generate, ids)


def _token_prompts(value: Any, n_vocab: int) -> Optional[List[List[int]]]:
    """Prompts sent as token ids (a list of ids, or a list of such lists), as OpenAI's API allows;
    None when the prompts are text."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        lists = [value]
    elif all(isinstance(v, list) for v in value):
        lists = value
    else:
        return None
    if len(lists) > MAX_PROMPTS:
        raise BadRequest(f"prompt holds {len(lists)} prompts; the limit is {MAX_PROMPTS} per request", "prompt")
    for i, ids in enumerate(lists):
        if not ids or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < n_vocab for t in ids):
            raise BadRequest(f"prompt[{i}] is not a non-empty list of token ids in [0, {n_vocab}); send text or "
                             "token ids of this model's vocabulary", "prompt")
    return lists


# -- MLflow ---------------------------------------------------------------------------------------

def _mlflow_params(params: Any, n_vocab: int) -> SamplingConfig:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest(f"params = {params!r:.100} is not an object of sampling settings", "params")
    _unknown(params, SAMPLING_PARAM_DEFAULTS, "params")
    return sampling(params, "max_new_tokens", SAMPLING_PARAM_DEFAULTS["max_new_tokens"], SAMPLING_PARAM_DEFAULTS["top_k"], n_vocab)


def _column(rows: List[Any], field: str) -> List[Any]:
    """The `prompt` values of records (dicts), or the records themselves."""
    out = []
    for i, r in enumerate(rows):
        if isinstance(r, dict):
            if set(r) != {"prompt"}:
                raise BadRequest(f"{field}[{i}] has keys {sorted(r)}; send records with one key, 'prompt'", field)
            r = r["prompt"]
        out.append(r)
    return out


def parse_invocations(data: bytes, content_type: str, n_vocab: int) -> Job:
    """An MLflow scoring-server body: JSON (`inputs`, `instances`, `dataframe_records`,
    `dataframe_split`, with `params`) or CSV with a `prompt` column; a Seldon body is accepted too."""
    if content_type.startswith("text/csv"):
        return Job(_csv_prompts(data), _mlflow_params(None, n_vocab))
    if not content_type.startswith("application/json"):
        raise BadRequest(f"content type {content_type!r} is not supported; send application/json or text/csv",
                         status=415)
    body = read_json(data)
    if isinstance(body, dict) and ("data" in body or "strData" in body):
        return parse_seldon(body, n_vocab)
    formats = ("inputs", "instances", "dataframe_records", "dataframe_split")
    if not isinstance(body, dict) or len([f for f in formats if f in body]) != 1:
        raise BadRequest('send a JSON object with exactly one of "inputs", "instances", "dataframe_records" or '
                         '"dataframe_split" (and optional "params"), e.g. {"inputs": ["Hello"]}')
    _unknown(body, set(formats) | {"params"}, "the request")
    field = next(f for f in formats if f in body)
    value = body[field]
    if field == "dataframe_split":
        value = _split_prompts(value)
    elif isinstance(value, dict) and set(value) == {"prompt"}:
        value = value["prompt"]
    elif isinstance(value, list):
        value = _column(value, field)
    return Job(_prompts(value, field), _mlflow_params(body.get("params"), n_vocab))


def _split_prompts(value: Any) -> List[Any]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise BadRequest('dataframe_split must be {"columns": ["prompt"], "data": [["Hello"], ...]}',
                         "dataframe_split")
    columns = value.get("columns") or ["prompt"]
    col = columns.index("prompt") if "prompt" in columns else 0 if len(columns) == 1 else None
    if col is None:
        raise BadRequest(f"dataframe_split has columns {columns}; send a 'prompt' column", "dataframe_split")
    rows = value["data"]
    if not all(isinstance(r, list) and len(r) == len(columns) for r in rows):
        raise BadRequest(f"every row of dataframe_split.data must hold {len(columns)} value(s)", "dataframe_split")
    return [r[col] for r in rows]


def _csv_prompts(data: bytes) -> List[str]:
    if len(data) > MAX_BODY_BYTES:
        raise BadRequest(f"the body has {len(data)} bytes; the limit is {MAX_BODY_BYTES}", status=413)
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as e:
        raise BadRequest(f"the CSV body cannot be read ({e})") from None
    if not rows or "prompt" not in rows[0]:
        raise BadRequest("the CSV body needs a header row with a 'prompt' column", "prompt")
    col = rows[0].index("prompt")
    return _prompts([r[col] for r in rows[1:] if len(r) > col], "prompt")


# -- Seldon ---------------------------------------------------------------------------------------

def parse_seldon(body: Any, n_vocab: int) -> Job:
    """Seldon Core's body: `{"data": {"ndarray": [...]}}` (or `strData`), `parameters` optional."""
    if not isinstance(body, dict):
        raise BadRequest('send {"data": {"ndarray": ["a prompt", ...]}} with optional "parameters"')
    _unknown(body, {"data", "strData", "parameters", "params", "meta"}, "the Seldon request")
    if "strData" in body:
        prompts = _prompts(body["strData"], "strData")[:1]
    else:
        data = body.get("data")
        if not isinstance(data, dict) or "ndarray" not in data:
            raise BadRequest('send {"data": {"ndarray": ["a prompt", ...]}} (Seldon) with optional '
                             '"parameters": {"temperature": 0.8, ...}', "data")
        rows = data["ndarray"]
        rows = [r[0] if isinstance(r, list) and len(r) == 1 else r for r in rows] if isinstance(rows, list) else rows
        prompts = _prompts(rows, "data.ndarray")
    return Job(prompts, _mlflow_params(body.get("parameters", body.get("params")), n_vocab))


def check_fits(job: Job, prompt_lengths: List[int], n_ctx: int, field: str) -> None:
    """Each prompt plus the tokens asked for must fit the model's context."""
    new = job.config.max_new_tokens if job.generate else 0
    if new >= n_ctx:
        raise BadRequest(f"{field} = {new} is beyond the model's context of {n_ctx} tokens; ask for at most "
                         f"{n_ctx - 1}", field)
    for i, n in enumerate(prompt_lengths):
        if max(n, 1) + new > n_ctx:
            raise BadRequest(f"prompt {i} has {n} tokens and {field} is {new}: {n + new} tokens are more than the "
                             f"model's context of {n_ctx}; shorten the prompt or lower {field}", "prompt")
