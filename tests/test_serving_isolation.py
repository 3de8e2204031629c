"""Feedback and its store never sit on a generation's path: with a MongoDB store that accepts
connections and never answers (each feedback look-up waits 3 s for it), completions sent while 50
feedback posts wait on it are all answered before the first of those posts gets its 503. Were the
store on a completion's path (the event loop, or the threads that tokenize long prompts), the
completions would wait behind it. The latencies are printed, not compared (the machine is shared)."""

import http.client
import json
import os
import socket
import threading
import time

import numpy as np
from conftest import wait_until
from mlflow_helpers import OurServer, post_json, tiny_model_dir

LONG_PROMPT = "a prompt long enough to be tokenized off the event loop " * 5  # over 256 characters: 61 tokens


def blackhole():
    """A TCP port that accepts connections and never answers; (port, stop)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()

    def close():
        stop.set()
        for c in held:
            c.close()
        server.close()

    return server.getsockname()[1], close


def latencies(url, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, body = post_json(url + "/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 8, "temperature": 0})
        assert status == 200, body
        out.append(time.perf_counter() - t0)
    return out


def test_a_hanging_store_does_not_slow_completions(tmp_path, monkeypatch):
    port, close = blackhole()
    monkeypatch.setenv("HANGING_MONGO_URI", f"mongodb://127.0.0.1:{port}/")
    model = tiny_model_dir(str(tmp_path / "model"), n_ctx=80)
    # All 50 posts reach the store: the rate limit (tests/test_serving_access.py) is raised here. The
    # completions come one at a time: batches of 2 (7 programs to compile instead of 12).
    server = OurServer(model, str(tmp_path), ["--mongo-uri-env", "HANGING_MONGO_URI", "--feedback-burst", "100",
                                              "--max-batch-size", "2"])
    answers = []
    try:
        latencies(server.url, 5)  # warm
        idle = latencies(server.url, 30)
        sent = []

        def post(i):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                conn.request("POST", "/v1/feedback", json.dumps({"completion_id": f"cmpl-elsewhere-{i}", "rating": 1}),
                             {"Content-Type": "application/json"})
                sent.append(i)
                response = conn.getresponse()
                answers.append((response.status, json.loads(response.read())))
            except OSError:  # the server is killed before the last posts are answered
                pass

        posts = [threading.Thread(target=post, args=(i,), daemon=True) for i in range(50)]
        for t in posts:
            t.start()
        wait_until(lambda: len(sent) == len(posts), "the feedback posts sent", timeout=30)
        loaded = latencies(server.url, 10)
        answered_before = len(answers)
        wait_until(lambda: answers, "the first feedback post's answer", timeout=30)
    finally:
        os.killpg(server.proc.pid, 9)  # 50 feedback posts would hold the drain for a minute
        server.stop()
        close()
    p99_idle, p99_loaded = np.percentile(idle, 99), np.percentile(loaded, 99)
    print(f"completion p99: {p99_idle * 1000:.1f} ms idle, {p99_loaded * 1000:.1f} ms with 50 feedback posts waiting")
    assert answered_before == 0, f"{answered_before} feedback post(s) answered before the completions; {loaded}"
    # The first posts waited the store's 3 s each, then got 503 naming the store.
    status, body = answers[0]
    assert status == 503 and "cannot be reached" in json.dumps(body), answers[0]
