"""The registered champion answering over HTTP through `tfx-gpt2 serve`.

It answers MLflow's bodies with the same greedy text as the champion's MLflow pyfunc (what
`mlflow models serve` answers, tests/test_serving_mlflow.py), plus OpenAI's completions API (driven here by the `openai`
client, streaming and not), Seldon's body, `/v1/models`, `/metrics` and `/health`; bad input of
every kind gets a 4xx that names the field and the limit."""

import json
import time
import urllib.request

import pytest
from mlflow_helpers import OurServer, get, post_json, register_tiny

NAME = "serving-test"

@pytest.fixture(scope="module")
def champion(mlflow_server, tmp_path_factory):
    return register_tiny(mlflow_server.uri, str(tmp_path_factory.mktemp("serve") / "m"), NAME)


@pytest.fixture(scope="module")
def reference(champion, mlflow_server, tmp_path_factory):
    """The champion's pyfunc, loaded in this process: what `mlflow models serve` answers
    (tests/test_serving_mlflow.py checks that server)."""
    import mlflow.artifacts
    import mlflow.pyfunc

    local = mlflow.artifacts.download_artifacts(artifact_uri=champion, tracking_uri=mlflow_server.uri,
                                                dst_path=str(tmp_path_factory.mktemp("reference")))
    model = mlflow.pyfunc.load_model(local)
    return lambda prompts, params: {"predictions": list(model.predict(prompts, params=params))}


@pytest.fixture(scope="module")
def our_serve(champion, mlflow_server, tmp_path_factory):
    server = OurServer(champion, str(tmp_path_factory.mktemp("ourserve")), ["--max-batch-size", "4", "--body-timeout", "2"],
                       tracking_uri=mlflow_server.uri)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(our_serve):
    import openai

    return openai.OpenAI(base_url=our_serve.url + "/v1", api_key="unused", max_retries=0)


GREEDY = {"max_new_tokens": 5, "temperature": 0.0}


def test_our_server_takes_seldon_and_mlflow_bodies(our_serve, reference):
    url = our_serve.url
    reference = reference(["Hello", "The"], GREEDY)
    status, body = post_json(url + "/api/v1.0/predictions", {"data": {"ndarray": ["Hello", "The"]},
                                                             "parameters": GREEDY})
    assert status == 200 and body["data"]["ndarray"] == reference["predictions"], body
    status, body = post_json(url + "/invocations", {"data": {"ndarray": [["Hello"], ["The"]]}, "parameters": GREEDY})
    assert status == 200 and body["predictions"] == reference["predictions"]
    for request in ({"inputs": ["Hello", "The"]}, {"instances": ["Hello", "The"]},
                    {"dataframe_records": [{"prompt": "Hello"}, {"prompt": "The"}]},
                    {"dataframe_split": {"columns": ["prompt"], "data": [["Hello"], ["The"]]}}):
        status, body = post_json(url + "/invocations", {**request, "params": GREEDY})
        assert status == 200 and body["predictions"] == reference["predictions"], (request, body)


def test_openai_client_completes_and_streams_the_same_text(our_serve, client, reference):
    reference = reference(["Hello", "The"], GREEDY)
    done = client.completions.create(model=NAME, prompt=["Hello", "The"], max_tokens=5, temperature=0)
    assert [c.text for c in done.choices] == reference["predictions"]
    assert [c.index for c in done.choices] == [0, 1] and done.choices[0].finish_reason in ("stop", "length")
    assert done.id.startswith("cmpl-") and done.model == NAME and done.system_fingerprint == NAME + "/1"
    assert done.usage.prompt_tokens == 2 and done.usage.completion_tokens <= 10
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    other = client.completions.create(model=NAME, prompt="Hello", max_tokens=5, temperature=0)
    assert other.id != done.id

    chunks = list(client.completions.create(model=NAME, prompt="Hello", max_tokens=5, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == reference["predictions"][0] and len(chunks) >= 3
    assert chunks[-2].choices[0].finish_reason in ("stop", "length") and chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1


def test_streaming_is_server_sent_events_ending_with_done(our_serve):
    request = urllib.request.Request(our_serve.url + "/v1/completions", method="POST",
                                     data=json.dumps({"prompt": "Hi", "max_tokens": 4, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_seeded_sampling_is_reproducible(client):
    args = dict(model=NAME, prompt="Once", max_tokens=6, temperature=1.0, top_p=0.9, seed=11)
    assert client.completions.create(**args).choices[0].text == client.completions.create(**args).choices[0].text


def test_models_and_health_name_the_served_version(our_serve, client):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME] and models[0].version == "1" and models[0].context_length == 16
    status, body = get(our_serve.url + "/health")
    assert status == 200 and json.loads(body)["version"] == "1"


def metric(text: str, sample: str, **labels) -> float:
    """The value of a Prometheus sample (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_metrics_count_requests_tokens_batches_and_name_the_model(our_serve, client):
    before = get(our_serve.url + "/metrics")[1]
    client.completions.create(model=NAME, prompt="Hello", max_tokens=3, temperature=0)
    post_json(our_serve.url + "/invocations", {"inputs": 5})
    status, text = get(our_serve.url + "/metrics")
    assert status == 200
    assert metric(text, "tfx_gpt2_requests_total", route="/v1/completions", status="200") == \
        metric(before, "tfx_gpt2_requests_total", route="/v1/completions", status="200") + 1
    assert metric(text, "tfx_gpt2_requests_total", route="/invocations", status="400") >= 1
    assert metric(text, "tfx_gpt2_generated_tokens_total") >= metric(before, "tfx_gpt2_generated_tokens_total") + 1
    assert metric(text, "tfx_gpt2_batch_size_count") >= 1
    assert metric(text, "tfx_gpt2_request_seconds_count", route="/v1/completions") >= 1
    assert metric(text, "tfx_gpt2_time_to_first_token_seconds_count", route="/v1/completions") >= 1
    assert metric(text, "tfx_gpt2_compiled_programs") == 7  # batch buckets 1, 2, 4 (decode, prefill); scoring
    assert metric(text, "tfx_gpt2_model_info", name=NAME, version="1") == 1
    assert "tfx_gpt2_queue_depth" in text


def test_one_log_line_per_request_without_prompt_text(our_serve, client):
    client.completions.create(model=NAME, prompt="A secret prompt", max_tokens=2)
    lines = [json.loads(line.split("tfx_gpt2.serving.requests: ", 1)[1]) for line in our_serve.read_log().splitlines()
             if "tfx_gpt2.serving.requests: " in line]
    assert lines and lines[-1]["route"] == "/v1/completions" and lines[-1]["completion_tokens"] <= 2
    assert lines[-1]["version"] == "1" and "secret" not in our_serve.read_log()


def test_completions_are_recorded_and_take_feedback(our_serve, client):
    from tfx_gpt2.feedback.store import SqliteStore

    answer = client.completions.create(model=NAME, prompt="Rate me", max_tokens=3, temperature=0)
    request = urllib.request.Request(our_serve.url + "/invocations", method="POST",
                                     data=json.dumps({"inputs": ["One", "Two"], "params": GREEDY}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        mlflow_id = r.headers["X-Completion-Id"]
        predictions = json.loads(r.read())["predictions"]
    ok = {"completion_id": answer.id, "rating": 1, "corrected_text": " better", "comment": "close"}
    assert post_json(our_serve.url + "/v1/feedback", ok) == (200, {"completion_id": answer.id, "index": 0,
                                                                    "status": "recorded", "score": 1.0})
    assert post_json(our_serve.url + "/v1/feedback", ok)[1]["status"] == "already recorded"
    status, body = post_json(our_serve.url + "/v1/feedback", {**ok, "rating": -1})
    assert status == 409 and body["error"]["param"] == "rating" and "final" in body["error"]["message"]
    status, body = post_json(our_serve.url + "/v1/feedback", {"completion_id": "cmpl-unknown", "rating": 1})
    assert status == 404 and body["error"]["param"] == "completion_id"
    status, body = post_json(our_serve.url + "/v1/feedback", {"completion_id": answer.id, "rating": 7})
    assert status == 400 and "+1 or -1" in body["error"]["message"]
    store = SqliteStore(our_serve.feedback_dir + "/feedback.db")
    deadline = time.monotonic() + 30
    while store.completion(mlflow_id) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    record = store.completion(answer.id)
    assert record["prompts"] == ["Rate me"] and record["completions"] == [answer.choices[0].text]
    assert record["version"] == "1" and record["model"] == NAME and record["latency_ms"] > 0
    assert record["settings"]["temperature"] == 0 and record["finish_reasons"] == ["length"]
    assert store.completion(mlflow_id)["completions"] == predictions  # MLflow's body: the id is in a header
    (_, feedback), = store.feedback_of(answer.id)
    assert (feedback["rating"], feedback["corrected_text"], feedback["comment"], feedback["prompt"]) == (
        1, " better", "close", "Rate me")
    text = get(our_serve.url + "/metrics")[1]
    assert metric(text, "tfx_gpt2_feedback_total", outcome="recorded") == 1


BAD = [  # (path, body, status, words the message must hold)
    ("/v1/completions", b"not json", 400, ["not JSON"]),
    ("/v1/completions", {"prompt": 123}, 400, ["prompt", "not a string"]),
    ("/v1/completions", {"prompt": [None]}, 400, ["prompt[0]", "not a string"]),
    ("/v1/completions", {"prompt": []}, 400, ["empty list"]),
    ("/v1/completions", {"prompt": ["a"] * 33}, 400, ["33 prompts", "limit is 32"]),
    ("/v1/completions", {"prompt": "a", "temprature": 1}, 400, ["temprature"]),
    ("/v1/completions", {"prompt": "a", "temperature": "Infinity"}, 400, ["temperature"]),
    ("/v1/completions", {"prompt": "a", "temperature": -1}, 400, ["temperature = -1", "[0.0, 10.0]"]),
    ("/v1/completions", {"prompt": "a", "top_k": 2 ** 40}, 400, ["top_k", "50257"]),
    ("/v1/completions", {"prompt": "a", "top_p": 0}, 400, ["top_p = 0", "(0.0, 1.0]"]),
    ("/v1/completions", {"prompt": "a", "max_tokens": 16}, 400, ["max_tokens = 16", "context of 16"]),
    ("/v1/completions", {"prompt": "word " * 20, "max_tokens": 4}, 400, ["prompt 0 has", "context of 16"]),
    ("/v1/completions", {"prompt": "a", "n": 2}, 400, ["n = 2", "[1, 1]"]),
    ("/v1/completions", {"prompt": "a", "logprobs": 6}, 400, ["logprobs = 6", "[0, 5]"]),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, ["max_tokens = 0", "echo"]),
    ("/v1/completions", {"prompt": "a", "echo": "yes"}, 400, ["echo"]),
    ("/v1/completions", {"prompt": [[1, 2], [50257]]}, 400, ["prompt[1]", "token ids", "50257"]),
    ("/v1/completions", {"prompt": "a", "model": "gpt-4"}, 404, ["gpt-4", NAME]),
    ("/v1/completions", {"prompt": "a", "stream": "yes"}, 400, ["stream"]),
    ("/invocations", {"inputs": 123}, 400, ["inputs = 123"]),
    ("/invocations", {"inputs": [None]}, 400, ["inputs[0] = None"]),
    ("/invocations", {"inputs": ["a"], "params": {"temprature": 1}}, 400, ["temprature"]),
    ("/invocations", {"inputs": ["a"], "params": {"max_new_tokens": 100}}, 400, ["max_new_tokens = 100", "16"]),
    ("/invocations", {"prompts": ["a"]}, 400, ["inputs", "dataframe_records"]),
    ("/api/v1.0/predictions", {"prompts": ["Hi"]}, 400, ["prompts"]),
    ("/api/v1.0/predictions", {"data": {"ndarray": ["a"]}, "parameters": {"top_k": 2 ** 40}}, 400, ["top_k"]),
]


@pytest.mark.parametrize("path,body,status,words", BAD, ids=[f"{p}-{i}" for i, (p, *_) in enumerate(BAD)])
def test_bad_input_gets_a_4xx_naming_the_field_and_limit(our_serve, path, body, status, words):
    data = body if isinstance(body, bytes) else json.dumps(body).replace('"Infinity"', "Infinity").encode()
    request = urllib.request.Request(our_serve.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == status
    text = e.value.read().decode()
    assert all(w in text for w in words), text
    assert get(our_serve.url + "/ping")[0] == 200


# -- hostile bodies ---------------------------------------------------------------------------------

HUGE = "9" * 5001
HOSTILE_BODIES = {  # route: (a lone surrogate in its text, a 5,001-digit integer in a setting)
    "/v1/completions": ('{"prompt": "\\ud800"}', '{"prompt": "a", "seed": %s}' % HUGE),
    "/invocations": ('{"inputs": ["ok", "\\udfff"]}', '{"inputs": ["a"], "params": {"seed": %s}}' % HUGE),
    "/api/v1.0/predictions": ('{"data": {"ndarray": ["\\ud800"]}}', '{"data": {"ndarray": ["a"]}, "parameters": '
                                                                        '{"seed": %s}}' % HUGE),
    "/v1/feedback": ('{"completion_id": "cmpl-\\ud800", "rating": 1}', '{"completion_id": "x", "rating": %s}' % HUGE),
    f"/v2/models/{NAME}/infer": (
        '{"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}',
        '{"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["a"]}], '
        '"parameters": {"seed": %s}}' % HUGE),
}


def raw_post(port: int, path: str, head: dict, parts=(), timeout: float = 30.0):
    """(status, body) of a POST written by hand: `head` headers, then each of `parts` (bytes);
    None when the server closed without an answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                 *(f"{k}: {v}" for k, v in head.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            for part in parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body was sent: read its answer
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data and _complete(data):
                    break
        except ConnectionResetError:
            pass
    if not data:
        return None
    head_text, _, body = data.partition(b"\r\n\r\n")
    return int(head_text.split()[1]), body.decode("utf-8", "replace")


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
    return bool(length) and len(body) >= length[0]


def in_route_format(path: str, body: str) -> str:
    """The error message of `body`, checked to be in `path`'s error format."""
    answer = json.loads(body)
    if path == "/invocations":
        assert answer["error_code"] == "BAD_REQUEST", answer
        return answer["message"]
    if path == "/api/v1.0/predictions":
        assert answer["status"]["status"] == "FAILURE", answer
        return answer["status"]["info"]
    if path.startswith("/v2/"):
        assert set(answer) == {"error"}, answer
        return answer["error"]
    assert answer["error"]["type"] == "invalid_request_error", answer
    return answer["error"]["message"]


@pytest.mark.parametrize("path", list(HOSTILE_BODIES))
def test_hostile_bodies_get_a_4xx_in_the_routes_format(our_serve, path):
    """Deep nesting, lone surrogates, huge integers, bodies over the limit (declared, or chunked
    and cut off), a body that never ends: each a 4xx in the route's error format, never a 500;
    then the server still answers /ping and a completion."""
    port, surrogate, huge = our_serve.port, *HOSTILE_BODIES[path]

    def send(body: bytes):
        return raw_post(port, path, {"Content-Length": len(body)}, [body])

    cases = {
        "nesting": (send(b"[" * 100_000), 400, "nested"),
        "surrogate": (send(surrogate.encode()), 400, "lone UTF-16 surrogate"),
        "integer": (send(huge.encode()), 400, "5001 digits"),
        "declared": (raw_post(port, path, {"Content-Length": 200_000_000}, [b"{" * 1000]), 413, "limit is 1000000"),
        # Ten chunks of 100,001 bytes: the tenth takes it over the limit (and is the last sent).
        "chunked": (raw_post(port, path, {"Transfer-Encoding": "chunked"},
                             [b"%x\r\n%s\r\n" % (100_001, b" " * 100_001)] * 10), 413, "over the limit"),
        "slow": (raw_post(port, path, {"Content-Length": 100}, [b'{"prompt"']), 408, "within 2 s"),
    }
    for name, (answer, status, words) in cases.items():
        assert answer is not None and answer[0] == status, (name, answer)
        message = in_route_format(path, answer[1])
        assert words in message and "set_int_max_str_digits" not in message, (name, message)
    assert get(our_serve.url + "/ping")[0] == 200
    status, body = post_json(our_serve.url + "/v1/completions", {"prompt": "Still", "max_tokens": 2})
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_half_sent_bodies_are_dropped_and_memory_stays_bounded(our_serve):
    """40 connections each send half a body and stall: all get 408 after the body timeout (2 s
    here) while a completion still answers, and five bodies declaring 200 MB each are refused
    before they are read (the server's memory does not grow by them)."""
    from concurrent.futures import ThreadPoolExecutor

    pid = our_serve.proc.pid
    rss = lambda: int(open(f"/proc/{pid}/status").read().split("VmRSS:")[1].split()[0]) // 1024  # noqa: E731
    before = rss()
    with ThreadPoolExecutor(45) as pool:
        stalled = [pool.submit(raw_post, our_serve.port, "/v1/completions", {"Content-Length": 1000},
                               [b'{"prompt": "']) for _ in range(40)]
        big = [pool.submit(raw_post, our_serve.port, "/invocations", {"Content-Length": 200_000_000},
                           [b"x" * 1000]) for _ in range(5)]
        status, body = post_json(our_serve.url + "/v1/completions", {"prompt": "Meanwhile", "max_tokens": 2})
        assert status == 200
        assert [f.result()[0] for f in big] == [413] * 5
        assert [f.result()[0] for f in stalled] == [408] * 40
    assert rss() - before < 100, (before, rss())
    assert get(our_serve.url + "/ping")[0] == 200


def test_open_inference_protocol_through_tritonclient(our_serve, reference):
    """NVIDIA's `tritonclient[http]` as the client: health, metadata, and `infer` with the prompts
    as a BYTES tensor (binary and JSON), the settings as parameters; the texts are the pyfunc's."""
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=our_serve.url.split("//")[1])
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, "1")
    assert not client.is_model_ready("another") and not client.is_model_ready(NAME, "7")
    assert client.get_server_metadata()["name"] == "tfx-gpt2"
    meta = client.get_model_metadata(NAME)
    assert meta["versions"] == ["1"] and [t["datatype"] for t in meta["inputs"] + meta["outputs"]] == ["BYTES"] * 2
    prompts = ["Hello", "The weather today"]

    def infer(binary, params=GREEDY, model=NAME):
        tensor = triton.InferInput("text_input", [len(prompts)], "BYTES")
        tensor.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=np.object_), binary_data=binary)
        result = client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("text_output", binary_data=binary)],
                              parameters=params)
        return [t.decode() if isinstance(t, bytes) else t for t in result.as_numpy("text_output")]

    expected = reference(prompts, GREEDY)["predictions"]
    assert infer(binary=True) == expected and infer(binary=False) == expected
    for params, model, words in [({**GREEDY, "temprature": 1}, NAME, "temprature"),
                                 ({"max_new_tokens": 100}, NAME, "max_new_tokens = 100"),
                                 (GREEDY, "another", "not served here")]:
        with pytest.raises(InferenceServerException) as e:
            infer(True, params, model)
        assert words in str(e.value), str(e.value)



# -- logprobs and echo ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras_model(champion, mlflow_server, tmp_path_factory):
    """The champion's Keras model, loaded here from the registry."""
    import mlflow.artifacts

    from tfx_gpt2.model.io import load_model_dir
    from tfx_gpt2.serving.deployment import model_dir_of

    local = mlflow.artifacts.download_artifacts(artifact_uri=champion, tracking_uri=mlflow_server.uri,
                                                dst_path=str(tmp_path_factory.mktemp("keras")))
    return load_model_dir(model_dir_of(local))


def log_softmax(keras_model, ids):
    import numpy as np

    logits = np.asarray(keras_model(np.array([ids], "int32")), np.float64)[0]
    return logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)


def check_logprobs(logprobs, ids, expected, first, tokenizer, alternatives):
    """`logprobs` (OpenAI's object) holds tokens `ids[first:]` with the Keras model's log-softmax."""
    import numpy as np

    from tfx_gpt2.serving.logprobs import token_text

    assert logprobs.tokens == [token_text(tokenizer, t) for t in ids[first:]]
    for i, (lp, top) in enumerate(zip(logprobs.token_logprobs, logprobs.top_logprobs), start=first):
        if i == 0:
            assert lp is None and top is None
            continue
        assert abs(lp - expected[i - 1, ids[i]]) < 1e-4, (i, lp, expected[i - 1, ids[i]])
        best = np.argsort(-expected[i - 1])[:alternatives]
        assert len(top) == alternatives
        for token in best:
            assert abs(top[token_text(tokenizer, int(token))] - expected[i - 1, token]) < 1e-4


def test_logprobs_and_echo_are_the_models_log_softmax(our_serve, client, keras_model, tokenizer):
    """lm-evaluation-harness's `local-completions` shapes through the `openai` client: a list of
    prompts, `echo`, `max_tokens` 0 (and 1), `logprobs`, `seed`, `temperature` 0; then generated
    tokens with logprobs, streamed and not. Every value is the Keras model's own log-softmax."""
    prompts = ["The for statement", "Hello world, again"]
    answer = client.completions.create(model=NAME, prompt=prompts, echo=True, max_tokens=0, logprobs=1,
                                       temperature=0, seed=1234)
    for prompt, choice in zip(prompts, answer.choices):
        ids = tokenizer.encode(prompt)
        assert choice.text == prompt and choice.logprobs.text_offset[0] == 0
        check_logprobs(choice.logprobs, ids, log_softmax(keras_model, ids), 0, tokenizer, 1)
        pieces = [len(tokenizer.decode([t])) for t in ids]
        assert choice.logprobs.text_offset == [sum(pieces[:i]) for i in range(len(ids))]
    assert answer.usage.completion_tokens == 0
    as_ids = client.completions.create(model=NAME, prompt=[tokenizer.encode(p) for p in prompts], echo=True,
                                       max_tokens=0, logprobs=1, temperature=0, seed=1234)  # tokenized_requests
    assert [c.logprobs.token_logprobs for c in as_ids.choices] == [c.logprobs.token_logprobs for c in answer.choices]
    assert [c.text for c in as_ids.choices] == prompts

    one = client.completions.create(model=NAME, prompt=prompts[0], echo=True, max_tokens=1, logprobs=5,
                                    temperature=0, seed=1234)
    generated = client.completions.create(model=NAME, prompt=prompts[0], max_tokens=5, logprobs=3, temperature=0)
    ids = tokenizer.encode(prompts[0])
    full = ids + tokenizer.encode(generated.choices[0].text)
    expected = log_softmax(keras_model, full)
    check_logprobs(one.choices[0].logprobs, full[:len(ids) + 1], expected, 0, tokenizer, 5)
    check_logprobs(generated.choices[0].logprobs, full, expected, len(ids), tokenizer, 3)
    assert generated.choices[0].logprobs.text_offset[0] == len(prompts[0])

    stream = client.completions.create(model=NAME, prompt=prompts[0], max_tokens=5, logprobs=3, temperature=0,
                                       stream=True)
    chunks = [c.choices[0] for c in stream if c.choices]
    assert "".join(c.text for c in chunks) == generated.choices[0].text
    streamed = [c.logprobs for c in chunks if c.logprobs is not None]
    assert [t for lp in streamed for t in lp.tokens] == generated.choices[0].logprobs.tokens
    assert [v for lp in streamed for v in lp.token_logprobs] == generated.choices[0].logprobs.token_logprobs


def test_a_task_file_scores_the_same_through_completions(our_serve, keras_model, tokenizer, tmp_path):
    """lm-evaluation-harness's two ways, ours: in process (`score_requests`, batched and padded) and
    through the served model's /v1/completions logprobs with echo; the same scores and accuracies."""
    import numpy as np

    from tfx_gpt2.serving.task_client import score_via_completions, task_metrics_via_completions
    from tfx_gpt2.training.tasks import choice_metrics, choice_requests, read_task_file, score_requests

    path = tmp_path / "short.jsonl"  # short enough for the served model's context of 16 tokens
    path.write_text("".join(json.dumps(item) + "\n" for item in [
        {"context": "Python is a", "choices": ["language", "snake", "banana split"], "gold": 0},
        {"context": "The for", "choices": ["statement", "loop", "while"], "gold": 0},
        {"context": "", "choices": ["Hello", "World"], "gold": 1},
        {"context": "A list is ", "choices": ["mutable", "immutable"], "gold": 0},
    ]))
    items = read_task_file(str(path))
    requests = choice_requests(tokenizer, items)
    local = score_requests(keras_model, requests)
    served = score_via_completions(our_serve.url, requests, model=NAME)
    assert [s.greedy for s in served] == [s.greedy for s in local]
    assert np.allclose([s.logprob for s in served], [s.logprob for s in local], atol=1e-4)
    assert task_metrics_via_completions(our_serve.url, tokenizer, items, model=NAME) == \
        choice_metrics(items, [s.logprob for s in local])
