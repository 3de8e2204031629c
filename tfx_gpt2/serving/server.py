"""`tfx-gpt2 serve`: the HTTP layer in front of the engine.

    GET  /                       the playground: a page to try the model (served from the package)
    POST /v1/completions         OpenAI's completions API, streaming with `"stream": true` (SSE)
    GET  /v1/models              the served model, its registry version and context size
    POST /invocations            MLflow's scoring formats ({"inputs": [...], "params": {...}}, ...)
    POST /api/v1.0/predictions   Seldon Core's format
    GET  /ping                   readiness, as MLflow's scoring server means it: 200 once the model
                                 is compiled, 503 before and while draining after SIGTERM
    GET  /health                 readiness with the reason: loading, the load's error, draining
    GET  /health/live            liveness: 200 while the process runs
    GET  /metrics                Prometheus metrics (see `tfx_gpt2.serving.prometheus`)
    GET  /docs                   the endpoints, from /openapi.json (served locally)
    POST /v1/feedback            a rating (and a corrected text) of a completion, by its id
    /v2/...                      the Open Inference Protocol (KServe v2; `tfx_gpt2.serving.oip`)

Every completion is recorded (id, prompts, completions, settings, model version, latency, time)
in the feedback store, without slowing generation (`tfx_gpt2.feedback.recorder`). Its id is the
OpenAI body's `id`, and the `X-Completion-Id` header of every generation route.

Handlers parse and check the body (`tfx_gpt2.serving.protocol`), tokenize off the event loop,
`submit` to the engine and await its events: the event loop never runs model code, so `/ping`
answers while a batch is generating. A full queue answers 503 with `Retry-After`; a client that
disconnects, or a request past `--request-timeout`, is cancelled and leaves the batch. Bodies are
bounded in size and time before a handler sees them (`tfx_gpt2.serving.guard`); feedback and the
store run on a bounded pool of their own, never on a generation's path. One JSON log line per
request (`tfx_gpt2.serving.requests`); prompts and completions only with `--log-prompts`.

SIGTERM (or Ctrl-C) drains: readiness answers 503 and new generations are refused (503) while the
port stays open and the requests in flight finish; then the server shuts down and the process
exits with status 0. A second signal stops at once.

(No `from __future__ import annotations` here: FastAPI reads handler annotations at run time.)
"""

import asyncio
import dataclasses
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import List, Optional

import uvicorn
from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from tfx_gpt2.feedback.recorder import ACCEPTED
from tfx_gpt2.feedback.records import CONFLICT, INVALID, UNAVAILABLE, UNKNOWN, FeedbackError
from tfx_gpt2.serving import oip, protocol
from tfx_gpt2.serving.access import ANONYMOUS, KEY_ID, AccessGuard, ApiKeys, RateLimiter, client_of
from tfx_gpt2.serving.deployment import Deployment, Served
from tfx_gpt2.serving.engine import EngineConfig, EngineStopped, QueueFull, Request, Row
from tfx_gpt2.serving.guard import BodyGuard
from tfx_gpt2.serving.logprobs import choice_logprobs
from tfx_gpt2.serving.prometheus import CONTENT_TYPE, ServerMetrics

SELDON_PATH = "/api/v1.0/predictions"
# Prompts of at most this many characters in all are tokenized on the event loop (about 40
# microseconds); longer ones in a worker thread, so the loop never waits on a long encoding.
INLINE_CHARS = 256
request_log = logging.getLogger("tfx_gpt2.serving.requests")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Server settings (the engine's are in `EngineConfig`).

    Attributes:
        request_timeout: seconds a request may take before it is cancelled (HTTP 504).
        poll_seconds: how often to check a `models:/NAME@ALIAS` alias for a new version (0: never).
        log_prompts: put prompt and completion text in the request log.
        retry_after: seconds suggested to clients refused because the queue is full.
        body_timeout: seconds a request body may take to arrive in full (408 after).
        side_workers: threads for feedback and the store (`/v1/feedback`).
        side_queue: feedback requests waiting for those threads at most (503 beyond).
        feedback_per_minute: feedbacks a client (an API key, or an address when anonymous) may
            post a minute on average (429 with Retry-After beyond).
        feedback_burst: feedbacks a client may post at once.
    """

    request_timeout: float = 120.0
    poll_seconds: float = 30.0
    log_prompts: bool = False
    retry_after: int = 1
    body_timeout: float = 10.0
    side_workers: int = 4
    side_queue: int = 64
    feedback_per_minute: float = 30.0
    feedback_burst: int = 10

    def __post_init__(self):
        if not self.body_timeout > 0 or self.side_workers < 1 or self.side_queue < 1:
            raise ValueError(f"ServeConfig: body_timeout = {self.body_timeout}, side_workers = {self.side_workers} "
                             f"and side_queue = {self.side_queue} must be positive")
        if not self.feedback_per_minute > 0 or self.feedback_burst < 1:
            raise ValueError(f"ServeConfig: feedback_per_minute = {self.feedback_per_minute} and feedback_burst = "
                             f"{self.feedback_burst}; give a positive rate and a burst of at least 1")


# The HTTP answer to each reason feedback is refused for.
FEEDBACK_REFUSED = {INVALID: 400, UNKNOWN: 404, CONFLICT: 409, UNAVAILABLE: 503}


class _Refused(Exception):
    def __init__(self, status: int, message: str, field: Optional[str] = None, headers=None):
        super().__init__(message)
        self.status, self.field, self.headers = status, field, headers or {}


@dataclasses.dataclass
class _Call:
    """One generation request in flight: its rows, timing and where its events arrive."""

    route: str
    served: Served
    prompts: List[str]  # the text of each row's prompt
    rows: List[Row]
    request: Request
    events: asyncio.Queue
    started: float
    first_text: Optional[float] = None
    id: str = dataclasses.field(default_factory=lambda: "cmpl-" + uuid.uuid4().hex[:24])
    job: Optional[protocol.Job] = None
    key_id: str = ANONYMOUS


def page(name: str) -> str:
    return resources.files("tfx_gpt2.serving").joinpath("static", name).read_text(encoding="utf-8")


FAVICON = resources.files("tfx_gpt2.serving").joinpath("static", "favicon.ico").read_bytes()


class Api:
    """The handlers: each parses, checks, queues and awaits; none runs model code."""

    def __init__(self, deployment: Deployment, config: ServeConfig, metrics: ServerMetrics, recorder=None,
                 keys: ApiKeys = ApiKeys()):
        self.deployment, self.config, self.metrics, self.recorder = deployment, config, metrics, recorder
        self.keys = keys
        self.feedback_limit = RateLimiter(config.feedback_per_minute, config.feedback_burst)
        self.draining, self.in_flight = False, 0  # in_flight: POST requests, counted by `BodyGuard`
        # Long prompts are tokenized here, feedback and the store work there: a store that hangs
        # fills its own threads, never the tokenizer's.
        self.tokenizing = ThreadPoolExecutor(2, thread_name_prefix="tfx-gpt2-tokenize")
        self.side = ThreadPoolExecutor(config.side_workers, thread_name_prefix="tfx-gpt2-feedback-api")
        self.side_waiting = 0

    def close(self) -> None:
        self.tokenizing.shutdown(wait=False)
        self.side.shutdown(wait=False)

    def readiness(self):
        """(HTTP status, body) of the readiness routes."""
        if self.draining:
            return 503, {"status": "draining", "reason": "the server is shutting down (SIGTERM); it finishes the "
                                                         "requests in flight and takes no new ones"}
        current = self.deployment.current
        if current is None:
            error = self.deployment.error
            return 503, {"status": "failed" if error else "loading", "error": error,
                         "reason": error or self.deployment.phase}
        return 200, {"status": "ready", "model": current.name, "version": current.version,
                     "compile_seconds": round(current.compile_seconds, 1)}

    def served(self) -> Served:
        if self.draining:
            raise _Refused(503, "the server is shutting down; send the request to another replica",
                           headers={"Retry-After": str(self.config.retry_after)})
        if self.deployment.current is None:
            raise _Refused(503, self.deployment.error or "the model is loading; retry when /health answers 200",
                           headers={"Retry-After": str(self.config.retry_after)})
        return self.deployment.current

    # -- a generation request's life ------------------------------------------------------------

    async def queue_job(self, current: Served, route: str, job: protocol.Job, started: float, field: str) -> _Call:
        encode = current.tokenizer.encode
        if job.prompt_ids is not None:  # sent as token ids: their text is for echo and the records
            ids = [list(i) for i in job.prompt_ids]
            job = dataclasses.replace(job, prompts=[current.tokenizer.decode(i) for i in ids])
        elif sum(len(p) for p in job.prompts) <= INLINE_CHARS:  # less work than handing them to a thread
            ids = [encode(p) for p in job.prompts]
        else:
            ids = await asyncio.get_running_loop().run_in_executor(self.tokenizing,
                                                                   lambda: [encode(p) for p in job.prompts])
        protocol.check_fits(job, [len(i) for i in ids], current.n_ctx, field)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        rows = [Row(i, job.config, scored=job.scored, generate=job.generate,
                    streams_text=not (job.scored or job.echo)) for i in ids]
        req = Request(rows, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev), stream=job.stream)
        try:
            current.engine.submit(req)
        except QueueFull as e:
            raise _Refused(503, f"{e}; retry in {self.config.retry_after} s",
                           headers={"Retry-After": str(self.config.retry_after)}) from None
        self.metrics.prompt_tokens.inc(sum(len(i) for i in ids))
        self.metrics.queue_depth.set(current.engine.queue_depth)
        return _Call(route, current, list(job.prompts), rows, req, events, started, job=job)

    async def start(self, route: str, job: protocol.Job, started: float, field: str, http: HttpRequest) -> _Call:
        """Tokenizes (off the event loop), checks the context and queues the job's rows."""
        try:
            call = await self.queue_job(self.served(), route, job, started, field)
        except EngineStopped:  # the model was just switched: use the new engine
            try:
                call = await self.queue_job(self.served(), route, job, started, field)
            except EngineStopped:
                raise _Refused(503, "the server is shutting down") from None
        call.key_id = http.scope.get(KEY_ID, ANONYMOUS)
        return call

    async def events_of(self, call: _Call, http: HttpRequest):
        """Yields `(row_index, text)` as text arrives; returns when every row is done.

        Cancels the rows when the client goes away or the request times out."""
        index = {id(r): i for i, r in enumerate(call.rows)}
        pending = len(call.rows)
        deadline = call.started + self.config.request_timeout
        try:
            while pending:
                try:
                    if call.events.empty():
                        kind, row, payload = await asyncio.wait_for(call.events.get(), timeout=0.25)
                    else:
                        kind, row, payload = call.events.get_nowait()
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        raise _Refused(499, "the client disconnected") from None
                    if time.monotonic() > deadline:
                        raise _Refused(504, f"the request took longer than {self.config.request_timeout} s") from None
                    continue
                if kind == "text":
                    call.first_text = call.first_text or time.monotonic()
                    yield index[id(row)], payload
                elif kind == "error":
                    raise _Refused(500, payload)
                else:
                    pending -= 1
        finally:
            if pending:
                call.request.cancelled = True

    def finish(self, call: _Call, status: int) -> None:
        """Records a request that reached the engine: metrics and its log line."""
        m, latency = self.metrics, time.monotonic() - call.started
        # Streams note their first text as it arrives; other requests, the engine's first token.
        call.first_text = call.first_text or min((r.first_token_at for r in call.rows if r.first_token_at),
                                                 default=None)
        tokens = sum(len(r.ids) for r in call.rows)
        m.requests.labels(call.route, str(status)).inc()
        m.latency.labels(call.route).observe(latency)
        if call.first_text:
            m.ttft.labels(call.route).observe(call.first_text - call.started)
        m.generated_tokens.inc(tokens)
        m.compiled.set(len(call.served.engine.programs))
        m.queue_depth.set(call.served.engine.queue_depth)
        line = {"event": "request", "id": call.id, "route": call.route, "status": status,
                "latency_ms": round(latency * 1000, 1),
                "ttft_ms": round((call.first_text - call.started) * 1000, 1) if call.first_text else None,
                "prompts": len(call.rows), "prompt_tokens": sum(len(r.prompt_ids) for r in call.rows),
                "completion_tokens": tokens,
                "finish_reasons": [r.finish_reason or ("cancelled" if call.request.cancelled else None)
                                   for r in call.rows],
                "model": call.served.name, "version": call.served.version, "key_id": call.key_id}
        if self.config.log_prompts:
            line["prompts_text"] = call.prompts
            line["completions"] = [r.text for r in call.rows]
        request_log.info(json.dumps(line))
        if self.recorder is not None and status == 200:
            self.recorder.completed(completion_record(call, line))

    def refused(self, route: str, started: float, e, shape):
        """Records and answers a refused request in the route's error shape."""
        status = e.status
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.monotonic() - started)
        request_log.info(json.dumps({"event": "request", "route": route, "status": status, "error": str(e),
                                     "field": getattr(e, "field", None)}))
        return JSONResponse(shape(status, str(e), getattr(e, "field", None)), status_code=status,
                            headers=getattr(e, "headers", None))

    async def complete(self, route: str, http: HttpRequest, parse, shape, answer, field: str):
        """Runs a non-streaming generation request end to end."""
        started = time.monotonic()
        try:
            job = parse(await http.body())
            call = await self.start(route, job, started, field, http)
            async for _ in self.events_of(call, http):
                pass
        except (protocol.BadRequest, _Refused) as e:
            return self.refused(route, started, e, shape)
        self.finish(call, 200)
        return JSONResponse(answer(call), headers={"X-Completion-Id": call.id})

    # -- generation routes ----------------------------------------------------------------------

    async def completions(self, http: HttpRequest):
        """OpenAI's completions API; `"stream": true` answers with server-sent events."""
        started, route = time.monotonic(), "/v1/completions"
        try:
            body = protocol.read_json(await http.body())
            job = protocol.parse_completion(body, self.served().n_vocab)
            self.check_model_name(body.get("model"))
            call = await self.start(route, job, started, "max_tokens", http)
        except (protocol.BadRequest, _Refused) as e:
            return self.refused(route, started, e, openai_error)
        if job.stream:
            return StreamingResponse(self.stream_completion(call, http, job), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                              "X-Completion-Id": call.id})
        try:
            async for _ in self.events_of(call, http):
                pass
        except _Refused as e:
            return self.refused(route, started, e, openai_error)
        self.finish(call, 200)
        return JSONResponse(completion_body(call), headers={"X-Completion-Id": call.id})

    def check_model_name(self, name):
        current = self.served()
        if name not in (None, "", current.name):
            raise _Refused(404, f"model {name!r} is not served here; this server serves {current.name!r} "
                                "(GET /v1/models)", "model")

    async def stream_completion(self, call: _Call, http: HttpRequest, job: protocol.Job):
        status, completed = 499, False  # 499 unless the stream ends: the client went away
        try:
            async for index, text in self.events_of(call, http):
                yield stream_chunk(call, index, text)
            for i, r in enumerate(call.rows):
                if not r.streams_text:  # echoed or scored: the text (and its logprobs) comes whole
                    yield sse({"id": call.id, "object": "text_completion", "created": int(time.time()),
                               "model": call.served.name, "choices": [{**choice(call, i), "finish_reason": None}]})
                yield stream_chunk(call, i, "", finish_reason(r))
            if job.include_usage:
                yield sse({"id": call.id, "object": "text_completion", "created": int(time.time()),
                           "model": call.served.name, "choices": [], "usage": completion_body(call)["usage"]})
            yield "data: [DONE]\n\n"
            status, completed = 200, True
        except _Refused as e:
            status = e.status
            yield sse(openai_error(e.status, str(e), None))
        finally:
            if not completed:
                call.request.cancelled = True
            self.finish(call, status)

    async def invocations(self, http: HttpRequest):
        """MLflow's scoring formats (and Seldon's body)."""
        content_type = http.headers.get("content-type", "application/json")
        return await self.complete(
            "/invocations", http, lambda data: protocol.parse_invocations(data, content_type, self.served().n_vocab),
            mlflow_error, lambda call: {"predictions": [r.text for r in call.rows]}, "max_new_tokens")

    async def seldon(self, http: HttpRequest):
        """Seldon Core's prediction format."""
        return await self.complete(
            SELDON_PATH, http, lambda data: protocol.parse_seldon(protocol.read_json(data), self.served().n_vocab),
            seldon_error, lambda call: {"data": {"names": ["generated_text"], "ndarray": [r.text for r in call.rows]},
                                        "meta": {}}, "max_new_tokens")

    async def infer(self, http: HttpRequest, model_name: str, model_version: Optional[str] = None):
        """The Open Inference Protocol's inference: a BYTES tensor of prompts in, of texts out."""
        started, route = time.monotonic(), "/v2/models/infer"
        try:
            self.check_v2_model(model_name, model_version)
            job, answer = oip.parse_infer(await http.body(), http.headers.get(oip.HEADER), self.served().n_vocab)
            call = await self.start(route, job, started, "max_new_tokens", http)
            async for _ in self.events_of(call, http):
                pass
        except (protocol.BadRequest, _Refused) as e:
            return self.refused(route, started, e, oip.error)
        self.finish(call, 200)
        body, headers = oip.infer_response(call.served.name, call.served.version, answer["id"],
                                           [r.text for r in call.rows], answer["binary"])
        return Response(content=body, headers={**headers, "X-Completion-Id": call.id})

    def check_v2_model(self, name: str, version: Optional[str]) -> Served:
        current = self.served()
        if name != current.name or version not in (None, "", current.version):
            raise _Refused(404, f"model {name!r} version {version!r} is not served here; this server serves "
                                f"{current.name!r} version {current.version!r} (GET /v2/models/{current.name})")
        return current

    async def v2_server(self):
        """The Open Inference Protocol's server metadata."""
        from importlib.metadata import version

        return {"name": "tfx-gpt2", "version": version("tfx-gpt2"), "extensions": ["binary_tensor_data"]}

    async def v2_live(self):
        return Response(status_code=200)

    async def v2_ready(self):
        return Response(status_code=200 if self.readiness()[0] == 200 else 503)

    async def v2_model(self, model_name: str, model_version: Optional[str] = None):
        """The model's metadata: its input and output tensors."""
        try:
            current = self.check_v2_model(model_name, model_version)
        except _Refused as e:
            return JSONResponse(oip.error(e.status, str(e)), status_code=e.status, headers=e.headers)
        return oip.model_metadata(current.name, current.version, current.n_ctx)

    async def v2_model_ready(self, model_name: str, model_version: Optional[str] = None):
        try:
            self.check_v2_model(model_name, model_version)
        except _Refused as e:
            return Response(status_code=e.status)
        return Response(status_code=200)

    async def feedback(self, http: HttpRequest):
        """A rating of a completion (and a corrected text, a comment), by the completion's id."""
        started, route = time.monotonic(), "/v1/feedback"
        try:
            if self.recorder is None:
                raise _Refused(404, "this server does not record feedback; start it without --no-feedback")
            self.check_feedback_rate(http)
            answer = await self.on_side(self.recorder.feedback, protocol.read_json(await http.body()),
                                        http.scope.get(KEY_ID, ANONYMOUS))
        except FeedbackError as e:
            return self.refused(route, started, _Refused(FEEDBACK_REFUSED[e.reason], str(e), e.field), openai_error)
        except (protocol.BadRequest, _Refused) as e:
            return self.refused(route, started, e, openai_error)
        status = 202 if answer["status"] == ACCEPTED else 200
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.feedback.labels(answer["status"]).inc()
        self.metrics.latency.labels(route).observe(time.monotonic() - started)
        request_log.info(json.dumps({"event": "feedback", "route": route, "status": status,
                                     "key_id": http.scope.get(KEY_ID, ANONYMOUS), **answer}))
        return JSONResponse(answer, status_code=status)

    def check_feedback_rate(self, http: HttpRequest) -> None:
        """429 when this client (its key, or its address when anonymous) posted too much feedback."""
        who = client_of(http.scope)
        wait = self.feedback_limit.take(who)
        if wait:
            retry = RateLimiter.retry_after(wait)
            raise _Refused(429, f"{who} posted feedback more often than {self.config.feedback_per_minute:g} a minute "
                                f"(bursts of {self.config.feedback_burst}); retry in {retry} s",
                           headers={"Retry-After": retry})

    async def on_side(self, fn, *args):
        """Runs `fn(*args)` on the feedback threads; 503 when `side_queue` requests already wait."""
        if self.side_waiting >= self.config.side_queue:
            raise _Refused(503, f"{self.side_waiting} feedback requests are waiting for the store; retry in "
                                f"{self.config.retry_after} s", headers={"Retry-After": str(self.config.retry_after)})
        self.side_waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.side, fn, *args)
        finally:
            self.side_waiting -= 1

    # -- other routes ---------------------------------------------------------------------------

    async def playground(self):
        """The playground page."""
        return HTMLResponse(page("playground.html"))

    async def docs(self):
        """The endpoints, read from /openapi.json."""
        return HTMLResponse(page("docs.html"))

    async def ping(self):
        """Readiness as MLflow's scoring server answers it: 200 once the model is ready, 503 while
        it loads, failed to load, or the server drains."""
        status, body = self.readiness()
        if status == 200:
            return Response(content="\n", status_code=200, media_type="application/json")
        return JSONResponse(body, status_code=status, headers={"Retry-After": str(self.config.retry_after)})

    async def health(self):
        """Readiness with its reason: 200 once the model is compiled; 503 while it loads (with what
        it is doing), after a failed load (with the error and its cause) and while draining."""
        status, body = self.readiness()
        return JSONResponse(body, status_code=status)

    async def live(self):
        """Liveness: 200 while the process runs (draining included)."""
        return JSONResponse({"status": "alive", "draining": self.draining})

    async def version(self):
        """MLflow's version (as MLflow's scoring server answers)."""
        import mlflow

        return Response(content=mlflow.__version__, status_code=200, media_type="application/json")

    async def metrics_page(self):
        """Prometheus metrics."""
        current = self.deployment.current
        if current is not None:
            self.metrics.queue_depth.set(current.engine.queue_depth)
            self.metrics.compiled.set(len(current.engine.programs))
        return Response(content=self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def models(self):
        """The served model (OpenAI's model list), with its registry version and context size."""
        try:
            current = self.served()
        except _Refused as e:
            return JSONResponse(openai_error(e.status, str(e), None), status_code=e.status, headers=e.headers)
        return {"object": "list", "data": [{
            "id": current.name, "object": "model", "created": int(current.loaded_at), "owned_by": "tfx-gpt2",
            "version": current.version, "source": current.source, "context_length": current.n_ctx,
            "feedback_scale": self.recorder.scale if self.recorder is not None else None,
            "auth": "bearer" if self.keys.required else None}]}

    async def favicon(self):
        return Response(content=FAVICON, media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})

    def count_gets(self, app):
        """ASGI middleware: metrics of the GET routes (generation routes record themselves, at
        their last byte). Plain ASGI: Starlette's `BaseHTTPMiddleware` would wrap every request,
        POSTs too, in tasks and streams of its own."""
        metrics = self.metrics

        async def middleware(scope, receive, send):
            if scope["type"] != "http" or scope["method"] != "GET":
                return await app(scope, receive, send)
            started, status = time.monotonic(), [500]

            async def send_and_note(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_and_note)
            finally:
                route = scope["path"] if scope["path"] in GET_ROUTES else "other"
                metrics.requests.labels(route, str(status[0])).inc()
                metrics.latency.labels(route).observe(time.monotonic() - started)

        return middleware


GET_ROUTES = ("/", "/favicon.ico", "/docs", "/ping", "/health", "/health/live", "/version", "/metrics", "/v1/models",
              "/openapi.json", "/v2", "/v2/health/live", "/v2/health/ready")


def create_app(deployment: Deployment, config: ServeConfig = ServeConfig(), metrics: Optional[ServerMetrics] = None,
               recorder=None, keys: ApiKeys = ApiKeys()):
    """The FastAPI app serving `deployment` (which its lifespan starts, if not yet started, and stops);
    completions and feedback go to `recorder` (a `tfx_gpt2.feedback.recorder.Recorder`, closed with the app);
    POST routes take the `keys` (none: anonymous)."""
    api = Api(deployment, config, metrics or ServerMetrics(), recorder, keys)

    @asynccontextmanager
    async def lifespan(app):
        if not deployment.ready and not deployment._threads:
            deployment.start()
        yield
        await asyncio.to_thread(deployment.stop, True)
        if recorder is not None:
            await asyncio.to_thread(recorder.close)
        api.close()

    app = FastAPI(title="tfx-gpt2", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.api = api
    for path, handler in [("/", api.playground), ("/favicon.ico", api.favicon), ("/docs", api.docs),
                          ("/ping", api.ping), ("/health", api.health),
                          ("/health/live", api.live), ("/version", api.version), ("/metrics", api.metrics_page),
                          ("/v1/models", api.models)]:
        app.add_api_route(path, handler, methods=["GET"])
    for path, handler in [("/v1/completions", api.completions), ("/invocations", api.invocations),
                          (SELDON_PATH, api.seldon), ("/v1/feedback", api.feedback)]:
        app.add_api_route(path, handler, methods=["POST"])
    for path, handler in [("/v2", api.v2_server), ("/v2/health/live", api.v2_live), ("/v2/health/ready", api.v2_ready)]:
        app.add_api_route(path, handler, methods=["GET"])
    for model in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        app.add_api_route(model, api.v2_model, methods=["GET"])
        app.add_api_route(model + "/ready", api.v2_model_ready, methods=["GET"])
        app.add_api_route(model + "/infer", api.infer, methods=["POST"])
    app.add_middleware(api.count_gets)
    app.add_middleware(BodyGuard, max_bytes=protocol.MAX_BODY_BYTES, timeout=config.body_timeout,
                       error_body=error_body_of, counter=api)
    app.add_middleware(AccessGuard, keys=keys, error_body=error_body_of)  # outermost: before the body is read
    return app


def error_body_of(path: str):
    """The error format of the route at `path`, as `(status, message) -> body`."""
    shape = {"/invocations": mlflow_error, SELDON_PATH: seldon_error}.get(path, openai_error)
    if path.startswith("/v2/"):
        shape = oip.error
    return lambda status, message: shape(status, message, None)


def completion_body(call: _Call):
    prompt_tokens = sum(len(r.prompt_ids) for r in call.rows)
    completion_tokens = sum(len(r.ids) for r in call.rows)
    return {"id": call.id, "object": "text_completion", "created": int(time.time()), "model": call.served.name,
            "system_fingerprint": f"{call.served.name}/{call.served.version}",
            "choices": [choice(call, i) for i in range(len(call.rows))],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def choice(call: _Call, i: int) -> dict:
    """Row `i`'s choice: its text (after its prompt with `echo`), and its `logprobs` if asked."""
    row, job, prompt = call.rows[i], call.job, call.prompts[i]
    echo = job is not None and job.echo
    logprobs = None
    if job is not None and job.scored and row.scores is not None:
        logprobs = choice_logprobs(call.served.tokenizer, row, job.logprobs, echo, prompt)
    return {"text": (prompt if echo else "") + row.text, "index": i, "logprobs": logprobs,
            "finish_reason": finish_reason(row)}


def completion_record(call: _Call, line: dict):
    """What the feedback store keeps of a completion (with the figures of its log `line`)."""
    config = call.rows[0].config
    return {"id": call.id, "created": time.time(), "route": call.route, "model": call.served.name,
            "version": call.served.version, "prompts": call.prompts, "completions": [r.text for r in call.rows],
            "settings": dict(vars(config)) if dataclasses.is_dataclass(config) else {}, "key_id": call.key_id,
            **{k: line[k] for k in ("latency_ms", "ttft_ms", "finish_reasons", "prompt_tokens", "completion_tokens")}}


def stream_chunk(call: _Call, index: int, text: str, reason: Optional[str] = None) -> str:
    return sse({"id": call.id, "object": "text_completion", "created": int(time.time()), "model": call.served.name,
                "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": reason}]})


def finish_reason(row: Row) -> str:
    return "length" if row.finish_reason == "length" else "stop"


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def openai_error(status: int, message: str, field):
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": field, "code": status}}


def mlflow_error(status: int, message: str, field):
    return {"error_code": "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR", "message": message}


def seldon_error(status: int, message: str, field):
    return {"status": {"code": status, "info": message, "status": "FAILURE"}}


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 8080, engine: EngineConfig = EngineConfig(),
          config: ServeConfig = ServeConfig(), recorder=None, keys: ApiKeys = ApiKeys()) -> None:
    """Serves `model_uri` until SIGTERM or Ctrl-C (then drains, see the module docstring); the
    model loads and compiles in the background. Completions and feedback go to `recorder` (None:
    not recorded)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A registry that does not answer is reported by /health within seconds (and retried by the
    # deployment), not after MLflow's default of minutes of retries.
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
        os.environ.setdefault(name, value)
    metrics = ServerMetrics()

    def on_change(served: Served):
        if metrics.model_info.collect()[0].samples:
            metrics.swaps.inc()
        metrics.serving(served.name, served.version, served.source)
        metrics.compiled.set(len(served.engine.programs))

    deployment = Deployment(model_uri, engine, config.poll_seconds, on_change=on_change,
                            on_batch=lambda n: metrics.batch_size.observe(n))
    app = create_app(deployment, config, metrics, recorder, keys)
    # No access log: the request log (one JSON line per request) says more.
    server = DrainingServer(uvicorn.Config(app, host=host, port=port,
                                           log_level=os.environ.get("TFX_GPT2_LOG_LEVEL", "info"),
                                           timeout_graceful_shutdown=int(config.request_timeout), access_log=False),
                            app.state.api, drain_seconds=config.request_timeout)
    server.run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain: the first SIGTERM or SIGINT turns readiness to 503 and
    refuses new generations while the port stays open; once no request is in flight (or after
    `drain_seconds`) the server shuts down, and the process exits with status 0 (uvicorn would
    raise the signal again, exiting 143). A second signal shuts down at once."""

    def __init__(self, config, api: Api, drain_seconds: float):
        super().__init__(config)
        self.api, self.drain_seconds, self.drain_deadline = api, drain_seconds, None

    def handle_exit(self, sig, frame):
        if self.api.draining:
            return super().handle_exit(sig, frame)
        self.api.draining, self.drain_deadline = True, time.monotonic() + self.drain_seconds
        logging.getLogger("tfx_gpt2.serving").info(
            "signal %d: draining (%d request(s) in flight); readiness answers 503", sig, self.api.in_flight)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit and (
                self.api.in_flight == 0 or time.monotonic() > self.drain_deadline):
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None):
        await super().shutdown(sockets)
        if self.drain_deadline is not None:
            self._captured_signals.clear()  # drained: exit 0, not with the signal's status
