"""A real `mlflow server` (sqlite store, artifacts proxied by the server) for tests, and tiny
tfx-gpt2 model directories to push to it."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refused_url():
    """`http://127.0.0.1:PORT` of a socket bound but never listening, while the block runs:
    connections are refused, and no other server can take the port meanwhile (a port that
    `free_port()` found free can be)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180, data=None, headers=None):
    """The response body of `url` once it answers 200, while `proc` runs."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}")
        try:
            request = urllib.request.Request(url, data=data, headers=headers or {})
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.read()
        except OSError as e:
            last = e
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout} s ({last})")


def get(url: str) -> tuple:
    """(status, body text) of a GET; 4xx/5xx are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post_json(url: str, body, headers=None, answer_headers: bool = False) -> tuple:
    """(status, parsed JSON or text) of a JSON POST (and the answer's headers, if asked); 4xx/5xx
    are returned, not raised."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            status, raw, head = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, head = e.code, e.read(), e.headers
    if answer_headers:
        return (status, _parsed(raw), head)
    return status, _parsed(raw)


def _parsed(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


class MlflowServer:
    """`mlflow server` on localhost with a sqlite store under `root`; `.uri` is its tracking URI."""

    def __init__(self, root: str, extra_args=(), env=None):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = os.path.join(root, "mlflow.db")
        argv = [os.path.join(BIN, "mlflow"), "server", "--backend-store-uri", "sqlite:///" + self.db,
                "--artifacts-destination", os.path.join(root, "artifacts"), "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", "1", *extra_args]
        self.log = open(os.path.join(root, "server.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        try:
            wait_http(self.uri + "/health", self.proc)
        except Exception:
            self.stop()
            with open(os.path.join(root, "server.log")) as f:
                print(f.read()[-3000:])
            raise

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(30)
        self.log.close()


def tiny_model_dir(path: str, seed: int = 0, n_ctx: int = 16, n_embd: int = 16, n_layer: int = 1,
                   n_head: int = 2) -> str:
    """A random GPT-2 (1 layer by default) with OpenAI's vocabulary, saved as a tfx-gpt2 model directory."""
    import keras

    from tfx_gpt2.config.model import GPT2Config
    from tfx_gpt2.model.gpt2 import GPT2
    from tfx_gpt2.model.io import save_model_dir

    keras.utils.set_random_seed(seed)
    return save_model_dir(GPT2(GPT2Config(n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_head=n_head)), path)


class OurServer:
    """`tfx-gpt2 serve MODEL_URI ARGS` on localhost, ready (its /health answered 200); `.url`, `.log_path`."""

    def __init__(self, model_uri: str, root: str, args=(), tracking_uri: str = "", env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(root, "serve.log")
        self.log = open(self.log_path, "w")
        env = {**os.environ, **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {}), **(env or {})}
        if not any(a in ("--feedback-dir", "--no-feedback") for a in args):
            args = [*args, "--feedback-dir", os.path.join(root, "feedback")]
        self.feedback_dir = os.path.join(root, "feedback")
        self.proc = subprocess.Popen([os.path.join(BIN, "tfx-gpt2"), "serve", model_uri, "--port", str(self.port),
                                      *args], stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        try:
            wait_http(self.url + "/health", self.proc)
        except Exception:
            self.stop()
            print(self.read_log()[-3000:])
            raise

    def read_log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(60)
        self.log.close()


def register_tiny(tracking_uri: str, path: str, name: str, key: str = "serve-1", seed: int = 0, **shape) -> str:
    """Registers a tiny random model (see `tiny_model_dir`) as a blessed version of `name`; its
    `models:/NAME@champion` URI."""
    from tfx_gpt2.registry.push import push_model

    model_dir = tiny_model_dir(path, seed=seed, **shape)
    push_model(tracking_uri=tracking_uri, experiment_name=name, registered_model_name=name, model_dir=model_dir,
               model_key=key, params={}, history=[], eval_metrics={}, blessed=True)
    return f"models:/{name}@champion"
