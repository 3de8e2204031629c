"""Serving as a deployment: `tfx-gpt2 serve models:/NAME@champion` follows the alias to a new
version without failing a request, refuses with 503 + Retry-After when its queue is full, cancels
a request whose client went away, and finishes in-flight requests on SIGTERM before it exits."""

import json
import os
import threading
import time
import urllib.request

from mlflow_helpers import OurServer, get, register_tiny

NAME = "deploy-test"


def register(mlflow_server, tmp_path, key, seed, **shape):
    register_tiny(mlflow_server.uri, str(tmp_path / key), NAME, key=key, seed=seed, **shape)


def complete(url, prompt="Hello", max_tokens=8, stream=False):
    request = urllib.request.Request(url + "/v1/completions", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                                                      "stream": stream}).encode())
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read().decode(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), {k.lower(): v for k, v in e.headers.items()}


def version_of(body: str) -> str:
    return json.loads(body)["system_fingerprint"].split("/")[1]


def test_serving_follows_the_champion_alias_refuses_when_full_and_drains_on_sigterm(mlflow_server, tmp_path):
    register(mlflow_server, tmp_path, "v1", seed=1)
    server = OurServer(f"models:/{NAME}@champion", str(tmp_path), tracking_uri=mlflow_server.uri,
                       args=["--poll-seconds", "0.5", "--max-batch-size", "2", "--max-queue", "4"])
    try:
        status, body, _ = complete(server.url)
        assert status == 200 and version_of(body) == "1"
        check_alias_switch(server, mlflow_server, tmp_path)
        check_queue_full(server)
        check_disconnect_cancels(server)
        check_sigterm_drains(server)
    finally:
        server.stop()


def check_alias_switch(server, mlflow_server, tmp_path):
    """Clients keep sending while version 2 becomes champion: every request succeeds, and the
    answers switch from version 1 to version 2."""
    answers, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            status, body, _ = complete(server.url, max_tokens=12)
            answers.append((status, version_of(body) if status == 200 else body))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    # Blessed, so it takes `champion`; larger, so that a generation lasts long enough to interrupt.
    register(mlflow_server, tmp_path, "v2", seed=2, n_ctx=128, n_embd=256, n_layer=4, n_head=4)
    deadline = time.monotonic() + 120
    # until a few answers came from version 2 (the swap is behind us), or the deadline
    while time.monotonic() < deadline and sum(v == "2" for _, v in answers) < 4:
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(60)
    assert all(s == 200 for s, _ in answers), [a for a in answers if a[0] != 200][:3]
    versions = [v for _, v in answers]
    assert versions[0] == "1" and versions[-1] == "2" and versions == sorted(versions), versions
    models = json.loads(urllib.request.urlopen(server.url + "/v1/models").read())
    assert models["data"][0]["version"] == "2"
    metrics = urllib.request.urlopen(server.url + "/metrics").read().decode()
    assert f'tfx_gpt2_model_info{{name="{NAME}",source="models:/{NAME}/2",version="2"}} 1.0' in metrics
    assert "tfx_gpt2_model_swaps_total 1.0" in metrics


def check_queue_full(server):
    """More prompts than the queue holds at once: some get 503 with Retry-After, none hangs."""
    results = []

    def send():
        status, body, headers = complete(server.url, prompt=["Hello"] * 4, max_tokens=12)
        results.append((status, headers.get("retry-after"), body))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    refused = [r for r in results if r[0] == 503]
    assert len(results) == 8 and refused and any(r[0] == 200 for r in results)
    assert all(r[1] == "1" and "at most 4 prompts" in r[2] for r in refused), refused[:1]


def check_disconnect_cancels(server):
    """A streaming client that goes away is cancelled: the log line says so (status 499)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 120, "stream": True}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.readline()  # the first event: the request is generating
    conn.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and '"status": 499' not in server.read_log():
        time.sleep(0.2)
    line = [ln for ln in server.read_log().splitlines() if '"status": 499' in ln]
    assert line and '"cancelled"' in line[0], server.read_log()[-2000:]


def check_sigterm_drains(server):
    """SIGTERM while a stream is open: readiness turns 503 (the port still open), liveness stays
    200, new generations get 503; the stream completes, then the process exits with status 0."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": ["Hi", "Ho"], "max_tokens": 120, "stream": True}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = response.readline()
    os.killpg(server.proc.pid, 15)
    deadline = time.monotonic() + 30
    while get(server.url + "/ping")[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    ping, health, live = get(server.url + "/ping"), get(server.url + "/health"), get(server.url + "/health/live")
    refused = complete(server.url)
    rest = response.read().decode()
    assert ping[0] == 503 and json.loads(ping[1])["status"] == "draining"
    assert health[0] == 503 and json.loads(health[1])["status"] == "draining"
    assert live[0] == 200 and json.loads(live[1]) == {"status": "alive", "draining": True}
    assert refused[0] == 503 and "shutting down" in refused[1] and refused[2]["retry-after"] == "1"
    assert first.startswith(b"data: ") and rest.rstrip().endswith("data: [DONE]")
    assert server.proc.wait(60) == 0 and "Application shutdown complete" in server.read_log()


def test_readiness_says_why_until_ready_and_liveness_answers(tmp_path):
    """With the registry down at start: /ping and /health answer 503, /health naming the error
    and its cause (and the retry); /health/live answers 200; SIGTERM exits with status 0."""
    import subprocess

    from mlflow_helpers import BIN, free_port

    port, registry = free_port(), f"http://127.0.0.1:{free_port()}"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([os.path.join(BIN, "tfx-gpt2"), "serve", f"models:/{NAME}@champion", "--port", str(port),
                             "--no-feedback", "--tracking-uri", registry], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = get(url + "/health")
                if json.loads(health[1]).get("error"):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        body = json.loads(health[1])
        assert health[0] == 503 and body["status"] == "failed", health
        assert registry.split("//")[1] in body["error"] and "retrying in" in body["error"], body
        ping = get(url + "/ping")
        assert ping[0] == 503 and json.loads(ping[1])["status"] == "failed"
        assert get(url + "/health/live") == (200, '{"status":"alive","draining":false}')
        os.killpg(proc.pid, 15)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        log.close()
