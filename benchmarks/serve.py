"""Serving under load: `tfx-gpt2 serve` against `mlflow models serve` on the same registered model,
at the settings users get by default; then continuous against static batching on a mixed workload.

    .venv/bin/python benchmarks/serve.py                              # tiny model, 1 and 8 clients, 20 s each
    .venv/bin/python benchmarks/serve.py --model 124M --clients 8 --duration 60
    .venv/bin/python benchmarks/serve.py --greedy                     # temperature 0 instead of the defaults
    .venv/bin/python benchmarks/serve.py --clients 8 --duration 5 --mixed-duration 5   # a smoke run

**Peer.** One random model of `--model`'s shape (OpenAI's vocabulary) is registered in a fresh
sqlite MLflow store as `models:/bench@champion`. Both servers serve that URI on localhost, each
with its defaults: ours, and MLflow's scoring server (`--env-manager local`). Each is driven in
turn by a closed loop of N clients (each sends its next request when the last is answered, on a
new connection, as a client without keep-alive does) for a fixed duration, with short prompts,
`--new-tokens` new tokens per request and no sampling settings in the body, so each server samples
with its defaults (temperature 1, top-k 40 for `/invocations`); `--greedy` sends temperature 0.
Meanwhile a poller sends `GET /ping` every 50 ms. Before measuring, every prompt is sent once
(MLflow's server compiles each new prompt shape on first use; ours compiles at start-up, before
/health says ready). Both are driven through `POST /invocations` (the same body); ours also through
`POST /v1/completions` with `"stream": true` ("ours SSE"), for the time to first token.

**Mixed workload** (`--mixed-duration`, 0 to skip): 8 clients whose requests ask for 8, 16, 32, 64
or 128 new tokens (drawn with equal chances, so short requests are a fifth of the load), on our
server with continuous batching and again with `--scheduling static` (a batch runs until its last
row ends). The model has `--model`'s shape with a context of at least 256 tokens. Printed: each
engine's requests/s and tokens/s, and the p99 latency of its 8-token requests against their latency
alone (one client, 8-token requests only, on the continuous engine).

Generated tokens are counted by encoding the returned text.
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
MIXED_TOKENS = (8, 16, 32, 64, 128)
MIXED_CONTEXT = 256


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(model: str, root: str, name: str = "bench", n_ctx: int = 0) -> str:
    """Registers a random model of preset `model` (context at least `n_ctx`) as `name` with alias
    champion in the sqlite store under `root`; returns the store's tracking URI."""
    import dataclasses

    import keras

    from tfx_gpt2.config.model import model_preset
    from tfx_gpt2.model.gpt2 import GPT2
    from tfx_gpt2.model.io import save_model_dir
    from tfx_gpt2.registry.push import push_model

    keras.utils.set_random_seed(0)
    shape = model_preset(model)
    shape = dataclasses.replace(shape, n_ctx=max(shape.n_ctx, n_ctx))
    model_dir = save_model_dir(GPT2(shape), os.path.join(root, name))
    uri = "sqlite:///" + os.path.join(root, "mlflow.db")
    push_model(tracking_uri=uri, experiment_name="bench", registered_model_name=name, model_dir=model_dir,
               model_key=name, params={}, history=[], eval_metrics={}, blessed=True)
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


def ours(uri, port, root, *extra):
    """Our server with its defaults (completions recorded for feedback, as users get it)."""
    return [os.path.join(BIN, "tfx-gpt2"), "serve", uri, "--port", str(port),
            "--feedback-dir", os.path.join(root, f"feedback-{port}"), *extra]


def mlflow(uri, port):
    return [os.path.join(BIN, "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
            "--host", "127.0.0.1", "-p", str(port)]


def request(port, method, path, body=None, stream=False):
    """(status, body text, seconds to the first generated text or None) of one request, on a new
    connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
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
        conn.close()


def body_for(mode, prompt, new_tokens, greedy):
    settings = {"temperature": 0.0} if greedy else {}
    if mode == "stream":
        return "/v1/completions", {"prompt": prompt, "max_tokens": new_tokens, "stream": True,
                                   "top_k": 40, **settings}  # /invocations' default top-k, for the same settings
    return "/invocations", {"inputs": [prompt], "params": {"max_new_tokens": new_tokens, **settings}}


def text_of(mode, text):
    return text if mode == "stream" else json.loads(text)["predictions"][0]


def drive(label, mode, port, clients, duration, tokenizer, draw_tokens, greedy):
    """Closed-loop load from `clients` threads for `duration` s, with a /ping poller. Returns the
    summary row and each request's (status, latency, first text, tokens, tokens asked)."""
    stop = threading.Event()
    results, pings = [], []

    def client(k):
        rng = np.random.default_rng(k)
        while not stop.is_set():
            prompt, new = PROMPTS[rng.integers(len(PROMPTS))], draw_tokens(rng)
            path, body = body_for(mode, prompt, new, greedy)
            t0 = time.perf_counter()
            try:
                status, text, first = request(port, "POST", path, body, stream=mode == "stream")
            except OSError:
                status, text, first = 0, "", None
            latency = time.perf_counter() - t0
            if stop.is_set() and time.perf_counter() - start > duration + 0.5:
                break
            tokens = len(tokenizer.encode(text_of(mode, text))) if status == 200 else 0
            results.append((status, latency, first if first is not None else latency, tokens, new))

    def poll():
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status = request(port, "GET", "/ping")[0]
            except OSError:
                status = 0
            pings.append((status, time.perf_counter() - t0))
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
    row = {"server": label, "clients": clients, "requests": len(ok), "errors": len(results) - len(ok),
           "req_s": len(ok) / elapsed, "tok_s": sum(r[3] for r in ok) / elapsed,
           "p50_ms": pct([r[1] for r in ok], 50), "p99_ms": pct([r[1] for r in ok], 99),
           "ttft_p50_ms": pct([r[2] for r in ok], 50), "ping_p99_ms": pct([p[1] for p in pings], 99),
           "ping_errors": sum(p[0] != 200 for p in pings), "pings": len(pings)}
    return row, ok


def pct(xs, q):
    return float(np.percentile(xs, q)) * 1000 if xs else float("nan")


def warm(port, greedy, new_tokens):
    """Sends every prompt once (MLflow's server compiles each new prompt shape on first use)."""
    for prompt in PROMPTS:
        path, body = body_for("invocations", prompt, new_tokens, greedy)
        status, text, _ = request(port, "POST", path, body)
        assert status == 200, text


def peer_comparison(args, tokenizer, root):
    """Ours and MLflow's server at 1..N clients: the rows of the table."""
    tracking_uri = register(args.model, root)
    uri, rows = "models:/bench@champion", []
    fixed = lambda rng: args.new_tokens  # noqa: E731
    for name in ("ours", "mlflow"):
        port = free_port()
        argv = ours(uri, port, root) if name == "ours" else mlflow(uri, port)
        server = Server(name, argv, "/health" if name == "ours" else "/ping", root, tracking_uri)
        try:
            warm(port, args.greedy, args.new_tokens)
            print(f"{name}: ready in {server.start_seconds:.1f} s", flush=True)
            for clients in [int(c) for c in args.clients.split(",")]:
                for mode in (["invocations", "stream"] if name == "ours" else ["invocations"]):
                    label = name + (" SSE" if mode == "stream" else "")
                    row, _ = drive(label, mode, port, clients, args.duration, tokenizer, fixed, args.greedy)
                    rows.append(row)
                    print(f"  {label:>9} {clients:>3} clients: {row['req_s']:.1f} req/s, {row['errors']} errors",
                          flush=True)
        finally:
            server.stop()
    return rows


def mixed_workload(args, tokenizer, root):
    """Continuous against static batching on requests of 8 to 128 new tokens, and 8-token
    requests alone: a dict of the figures."""
    tracking_uri = register(args.model, root, "bench-mixed", MIXED_CONTEXT)
    uri, out = "models:/bench-mixed@champion", {}
    for scheduling in ("continuous", "static"):
        port = free_port()
        server = Server(scheduling, ours(uri, port, root, "--scheduling", scheduling), "/health", root, tracking_uri)
        try:
            warm(port, args.greedy, 8)
            if scheduling == "continuous":
                row, done = drive("alone", "invocations", port, 1, args.mixed_duration / 2, tokenizer,
                                  lambda rng: 8, args.greedy)
                out["alone_p50_ms"] = row["p50_ms"]
            row, done = drive(scheduling, "invocations", port, 8, args.mixed_duration, tokenizer,
                              lambda rng: int(rng.choice(MIXED_TOKENS)), args.greedy)
            row["p99_8_ms"] = pct([r[1] for r in done if r[4] == 8], 99)
            out[scheduling] = row
            print(f"  mixed, {scheduling}: {row['req_s']:.1f} req/s, {row['tok_s']:.0f} tokens/s, "
                  f"{row['errors']} errors", flush=True)
        finally:
            server.stop()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="model preset for the shape (default tiny)")
    parser.add_argument("--clients", default="1,8", help="concurrent clients, comma-separated (default 1,8)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per client count")
    parser.add_argument("--new-tokens", type=int, default=16, help="new tokens per request (16)")
    parser.add_argument("--greedy", action="store_true", help="temperature 0 instead of each server's defaults")
    parser.add_argument("--mixed-duration", type=float, default=20.0,
                        help="seconds of the mixed workload per engine (0: skip it)")
    args = parser.parse_args(argv)

    from tfx_gpt2.text.bpe import load_tokenizer

    tokenizer = load_tokenizer()
    root = tempfile.mkdtemp(prefix="bench-serve-")
    rows = peer_comparison(args, tokenizer, root) if args.clients else []
    mixed = mixed_workload(args, tokenizer, root) if args.mixed_duration > 0 else None
    report(rows, mixed, args)
    return rows, mixed


def report(rows, mixed, args):
    settings = "greedy" if args.greedy else "each server's default sampling (temperature 1, top-k 40)"
    print(f"\nmodel: {args.model} shape, {os.cpu_count()} CPU cores, {args.duration:.0f} s per run, "
          f"{args.new_tokens} new tokens per request, {settings}, a new connection per request")
    print(f"{'server':>10} {'clients':>7} {'req/s':>8} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'TTFT p50':>9} "
          f"{'/ping p99':>10} {'errors':>7}")
    for r in rows:
        print(f"{r['server']:>10} {r['clients']:>7} {r['req_s']:>8.1f} {r['tok_s']:>8.1f} {r['p50_ms']:>8.0f} "
              f"{r['p99_ms']:>8.0f} {r['ttft_p50_ms']:>9.0f} {r['ping_p99_ms']:>10.1f} {r['errors']:>7}")
    by = {(r["server"], r["clients"]): r for r in rows}
    for clients in sorted({r["clients"] for r in rows}):
        mine, peer = by.get(("ours", clients)), by.get(("mlflow", clients))
        if mine and peer and peer["req_s"]:
            print(f"{clients:>3} clients: ours / MLflow = {mine['req_s'] / peer['req_s']:.2f}x req/s, "
                  f"{mine['tok_s'] / max(peer['tok_s'], 1e-9):.2f}x tokens/s")
    if rows:
        print("peer: mlflow models serve --env-manager local (MLflow's scoring server), same registered model")
    if mixed:
        c, s = mixed["continuous"], mixed["static"]
        print(f"\nmixed workload: 8 clients, {'/'.join(map(str, MIXED_TOKENS))} new tokens, "
              f"{args.mixed_duration:.0f} s per engine, context {MIXED_CONTEXT}")
        for name, r in (("continuous", c), ("static", s)):
            print(f"  {name:>10}: {r['req_s']:.1f} req/s, {r['tok_s']:.0f} tokens/s, p99 {r['p99_ms']:.0f} ms, "
                  f"8-token p99 {r['p99_8_ms']:.0f} ms, {r['errors']} errors")
        print(f"  continuous / static = {c['tok_s'] / max(s['tok_s'], 1e-9):.2f}x tokens/s, "
              f"{c['req_s'] / max(s['req_s'], 1e-9):.2f}x req/s")
        print(f"  8-token requests: p99 {c['p99_8_ms']:.0f} ms under the mixed load / {mixed['alone_p50_ms']:.0f} ms "
              f"alone = {c['p99_8_ms'] / mixed['alone_p50_ms']:.2f}x")


if __name__ == "__main__":
    main()
    sys.exit(0)
