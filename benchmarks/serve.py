"""Serving under load: `tfx-gpt2 serve` against `mlflow models serve` on the same registered model.

    .venv/bin/python benchmarks/serve.py                          # tiny model, 1/8/32 clients, 20 s each
    .venv/bin/python benchmarks/serve.py --model 124M --duration 30
    .venv/bin/python benchmarks/serve.py --clients 8 --duration 5   # a smoke run

One random model of `--model`'s shape (OpenAI's vocabulary) is registered in a fresh sqlite MLflow
store as `models:/bench@champion`. Both servers serve that URI on localhost: ours with its defaults,
MLflow's with `--env-manager local`. Each is driven in turn by a closed loop of N clients (each
sends its next request when the last one is answered) for a fixed duration, with short prompts
and `--new-tokens` new tokens per request (24; a range is drawn in the same sequence for both
servers), greedy. Meanwhile a
poller sends `GET /ping` every 50 ms. Before measuring, every prompt is sent once (MLflow's server
compiles each new prompt shape on first use; ours compiles at start-up, before /health says ready).

Both are driven through `POST /invocations` (the same body); ours is then driven again through
`POST /v1/completions` with `"stream": true` ("ours SSE"), which measures the time to the first
token (for MLflow's server, which cannot stream, that time is its latency). Generated tokens are
counted by encoding the returned text. Printed per server and client count: req/s, generated
tokens/s, latency p50/p99, time to first token p50, `/ping` p99, errors; then ours / MLflow's.
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

BIN = os.path.dirname(sys.executable)
PROMPTS = ["Hello", "The weather today", "Once upon a time there was", "In 1969, the first",
           "Machine learning is", "My favourite food", "The capital of France is", "A short story about"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(model: str, root: str) -> str:
    """Registers a random model of preset `model` as `bench` with alias champion; its tracking URI."""
    import keras

    from tfx_gpt2.config import model_preset
    from tfx_gpt2.model.gpt2 import GPT2
    from tfx_gpt2.model.io import save_model_dir
    from tfx_gpt2.registry import push_model

    keras.utils.set_random_seed(0)
    model_dir = save_model_dir(GPT2(model_preset(model)), os.path.join(root, "model"))
    uri = "sqlite:///" + os.path.join(root, "mlflow.db")
    push_model(tracking_uri=uri, experiment_name="bench", registered_model_name="bench", model_dir=model_dir,
               model_key="bench", params={}, history=[], eval_metrics={}, blessed=True)
    return uri


class Server:
    def __init__(self, name, argv, ready_path, root, tracking_uri):
        self.name, self.port = name, int(argv[argv.index("--port" if "--port" in argv else "-p") + 1])
        self.log = open(os.path.join(root, f"{name}.log"), "w")
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": BIN + os.pathsep + os.environ["PATH"]}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.log.name}")
            try:
                if request(self.port, "GET", ready_path)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        self.start_seconds = time.perf_counter() - t0

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(60)
        self.log.close()


def request(port, method, path, body=None, conn=None, stream=False):
    """(status, body text, seconds to the first generated text or None) of one request."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t0 = time.perf_counter()
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if not stream:
            return r.status, r.read().decode(), None
        first, parts = None, []
        while True:
            line = r.readline()
            if not line:
                break
            if line.startswith(b"data: {"):
                event = json.loads(line[6:])
                text = "".join(c["text"] for c in event.get("choices", []))
                if text and first is None:
                    first = time.perf_counter() - t0
                parts.append(text)
        return r.status, "".join(parts), first
    finally:
        if own:
            conn.close()


def body_for(mode, prompt, new_tokens):
    if mode == "stream":
        return "/v1/completions", {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True}
    return "/invocations", {"inputs": [prompt], "params": {"max_new_tokens": new_tokens, "temperature": 0.0}}


def text_of(mode, text):
    return text if mode == "stream" else json.loads(text)["predictions"][0]


def drive(server, mode, port, clients, duration, tokenizer, new_tokens):
    """Closed-loop load from `clients` threads for `duration` s, with a /ping poller."""
    stop = threading.Event()
    results, pings = [], []
    low, high = new_tokens

    def client(k):
        rng = np.random.default_rng(k)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while not stop.is_set():
            prompt, new = PROMPTS[rng.integers(len(PROMPTS))], int(rng.integers(low, high + 1))
            path, body = body_for(mode, prompt, new)
            t0 = time.perf_counter()
            try:
                status, text, first = request(port, "POST", path, body, conn=conn, stream=mode == "stream")
            except OSError:
                status, text, first = 0, "", None
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            latency = time.perf_counter() - t0
            if stop.is_set() and time.perf_counter() - start > duration + 0.5:
                break
            tokens = len(tokenizer.encode(text_of(mode, text))) if status == 200 else 0
            results.append((status, latency, first if first is not None else latency, tokens))

    def poll():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            t0 = time.perf_counter()
            request(port, "GET", "/ping", conn=conn)
            pings.append(time.perf_counter() - t0)
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)] + [threading.Thread(target=poll)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join(300)
    elapsed = time.perf_counter() - start
    ok = [r for r in results if r[0] == 200]
    pct = lambda xs, q: float(np.percentile(xs, q)) * 1000 if xs else float("nan")  # noqa: E731
    return {"server": server + (" SSE" if mode == "stream" else ""), "clients": clients, "requests": len(ok), "errors": len(results) - len(ok),
            "req_s": len(ok) / elapsed, "tok_s": sum(r[3] for r in ok) / elapsed,
            "p50_ms": pct([r[1] for r in ok], 50), "p99_ms": pct([r[1] for r in ok], 99),
            "ttft_p50_ms": pct([r[2] for r in ok], 50), "ping_p99_ms": pct(pings, 99), "pings": len(pings)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="model preset for the shape (default tiny)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per client count")
    parser.add_argument("--new-tokens", default="24",
                        help="new tokens per request: N, or LOW-HIGH drawn per request (default 24; a range makes "
                             "MLflow's server compile each new length on first use)")
    args = parser.parse_args(argv)

    from tfx_gpt2.text.bpe import load_tokenizer

    tokenizer = load_tokenizer()
    low, _, high = args.new_tokens.partition("-")
    args.tokens = (int(low), int(high or low))
    root = tempfile.mkdtemp(prefix="bench-serve-")
    tracking_uri = register(args.model, root)
    uri = "models:/bench@champion"
    rows = []
    for name in ("ours", "mlflow"):
        port = free_port()
        argv = ([os.path.join(BIN, "tfx-gpt2"), "serve", uri, "--port", str(port)] if name == "ours" else
                [os.path.join(BIN, "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                 "--host", "127.0.0.1", "-p", str(port)])
        server = Server(name, argv, "/health" if name == "ours" else "/ping", root, tracking_uri)
        try:
            for prompt in PROMPTS:  # first use of each prompt shape (MLflow's server compiles here)
                path, body = body_for("invocations", prompt, args.tokens[0])
                status, text, _ = request(port, "POST", path, body)
                assert status == 200, text
            print(f"{name}: ready in {server.start_seconds:.1f} s", flush=True)
            modes = ["invocations", "stream"] if name == "ours" else ["invocations"]
            for clients in [int(c) for c in args.clients.split(",")]:
                for mode in modes:
                    rows.append(drive(name, mode, port, clients, args.duration, tokenizer, args.tokens))
                    r = rows[-1]
                    print(f"  {r['server']:>9} {clients:>3} clients: {r['req_s']:.1f} req/s, {r['errors']} errors",
                          flush=True)
        finally:
            server.stop()
    report(rows, args)
    return rows


def report(rows, args):
    print(f"\nmodel: {args.model} shape, {os.cpu_count()} CPU cores, {args.duration:.0f} s per run, "
          f"{args.new_tokens} new tokens per request, greedy")
    print(f"{'server':>10} {'clients':>7} {'req/s':>8} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'TTFT p50':>9} "
          f"{'/ping p99':>10} {'errors':>7}")
    for r in rows:
        print(f"{r['server']:>10} {r['clients']:>7} {r['req_s']:>8.1f} {r['tok_s']:>8.1f} {r['p50_ms']:>8.0f} "
              f"{r['p99_ms']:>8.0f} {r['ttft_p50_ms']:>9.0f} {r['ping_p99_ms']:>10.1f} {r['errors']:>7}")
    by = {(r["server"], r["clients"]): r for r in rows}
    for clients in sorted({r["clients"] for r in rows}):
        ours, peer = by.get(("ours", clients)), by.get(("mlflow", clients))
        if ours and peer and peer["req_s"]:
            print(f"{clients:>3} clients: ours / MLflow = {ours['req_s'] / peer['req_s']:.2f}x req/s, "
                  f"{ours['tok_s'] / max(peer['tok_s'], 1e-9):.2f}x tokens/s")
    print("peer: mlflow models serve --env-manager local (MLflow's scoring server), same registered model")


if __name__ == "__main__":
    main()
    sys.exit(0)
