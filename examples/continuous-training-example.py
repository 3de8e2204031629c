"""The continuous-training loop, locally, with no external server: train, serve, collect feedback,
retrain, let the gate decide, and watch the server switch (or stay).

    .venv/bin/python examples/continuous-training-example.py [--output-dir DIR] [--max-steps N]
        [--users N]

1. `retrain --force` trains version 1 on the bundled corpus (span 0) and makes it the champion.
2. `tfx-gpt2 serve models:/NAME@champion` serves it with an API key per simulated user
   (`<output>/api-keys.txt`), recording every completion in the embedded feedback store
   (`<output>/feedback/feedback.db`) with the key's id.
3. Simulated users send prompts and rate the completions: thumbs up, or thumbs down with a
   corrected text taken from the corpus. Each uses its own key, so no one user's feedback is more
   than the rule's share of the new span (20%).
4. `retrain` finds enough new training documents, writes them as span 1 and runs the pipeline on
   spans 0 and 1, fine-tuning version 1 (a warm start from the champion, with its own learning
   rate schedule); the champion gate compares version 2 with version 1 on the same eval blocks.
5. When version 2 is blessed the server switches to it; otherwise it keeps version 1. Both
   perplexities are printed, then the lineage of a completion and of the new version.

Settings come from TFX_GPT2_* variables like every runner's (tfx_gpt2/config/settings.py).
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
PROMPTS = ["The list type", "A dictionary maps", "Exceptions are raised", "The for statement", "Strings are",
           "A module is", "Classes define", "The import system"]


def http(url, body=None, timeout=60, key=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_for(url, proc, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if http(url, timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def corpus_sentences(data_root, n):
    """Sentences from the corpus: what a user's corrections look like."""
    sentences = []
    for name in sorted(os.listdir(data_root)):
        with open(os.path.join(data_root, name), encoding="utf-8") as f:
            sentences += [s.strip() + "." for s in f.read().split(". ") if 40 < len(s.strip()) < 200]
    return sentences[:n]


def simulate_users(url, model, keys, sentences):
    """Each user (with its own key) sends a prompt; every other completion is rated up, the rest
    down with a correction."""
    ids = []
    for i, key in enumerate(keys):
        status, body = http(url + "/v1/completions", {"model": model, "prompt": PROMPTS[i % len(PROMPTS)],
                                                      "max_tokens": 16, "temperature": 0.8, "seed": i}, key=key)
        assert status == 200, body
        cid = body["id"]
        feedback = {"completion_id": cid, "rating": 1} if i % 2 == 0 else {
            "completion_id": cid, "rating": -1, "corrected_text": " " + sentences[i % len(sentences)]}
        status, answer = http(url + "/v1/feedback", feedback, key=key)
        assert status == 200 and answer["status"] == "recorded", answer
        ids.append(cid)
    return ids


def served_version(url):
    return http(url + "/v1/models")[1]["data"][0]["version"]


def user_keys(output_dir, users):
    """An API key per simulated user, written as the server's key file (`user<i>:<key>` lines)."""
    keys = [secrets.token_urlsafe(24) for _ in range(users)]
    path = os.path.join(output_dir, "api-keys.txt")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.writelines(f"user{i}:{key}\n" for i, key in enumerate(keys))
    return path, keys


def start_server(settings, feedback_dir, keys_file):
    """`tfx-gpt2 serve models:/NAME@champion`, recording in the embedded store, checking the alias every 2 s."""
    port = int(os.environ.get("TFX_GPT2_LOOP_PORT", "8765"))
    log = open(os.path.join(settings.output_dir, "serve.log"), "w")
    server = subprocess.Popen([os.path.join(BIN, "tfx-gpt2"), "serve", f"models:/{settings.pipeline_name}@champion",
                               "--port", str(port), "--poll-seconds", "2", "--feedback-dir", feedback_dir,
                               "--tracking-uri", settings.tracking_uri, "--api-keys-file", keys_file],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/health", server)
    return server, url, log


def follow(url, settings, first, second, key):
    """Waits for the server to serve the version the gate chose, and shows its answer."""
    expected = str(second["model_version"]) if second["blessed"] else str(first["model_version"])
    deadline = time.monotonic() + 600
    while served_version(url) != expected and time.monotonic() < deadline:
        time.sleep(1)
    _, body = http(url + "/v1/completions", {"model": settings.pipeline_name, "prompt": PROMPTS[0], "max_tokens": 8,
                                             "temperature": 0}, key=key)
    print(f"the server answers with version {served_version(url)} "
          f"({'switched to' if second['blessed'] else 'kept'} version {expected}): {body['choices'][0]['text']!r}",
          flush=True)


def main(argv=None) -> int:
    from tfx_gpt2.config.settings import DEFAULT_OUTPUT_DIR

    sys.path.insert(0, REPO)
    from tfx_gpt2.config.settings import from_env
    from tfx_gpt2.feedback.lineage_report import completion_lineage, version_lineage
    from tfx_gpt2.feedback.records import FeedbackRule
    from tfx_gpt2.feedback.retrain import RetrainPolicy
    from tfx_gpt2.feedback.store import open_store
    from tfx_gpt2.orchestration.continuous import retrain, with_loop_defaults

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", default=os.path.join(DEFAULT_OUTPUT_DIR, "loop-example"))
    p.add_argument("--max-steps", type=int, default=0, help="training steps per run (0: the preset's)")
    p.add_argument("--users", type=int, default=24, help="simulated users, 5 or more (a prompt and a rating each)")
    args = p.parse_args(argv)
    if args.users < 5:
        p.error(f"--users {args.users}: give 5 or more; the retrain rule keeps at most 20% of a span from any one "
                "user's key")
    settings = with_loop_defaults(from_env(pipeline_name="tfx-gpt2-loop", output_dir=args.output_dir,
                                           **({"max_steps": args.max_steps} if args.max_steps else {})))
    feedback_dir = os.path.join(settings.output_dir, "feedback")
    rule, policy = FeedbackRule(), RetrainPolicy(min_new_documents=args.users // 2)

    print("== 1. version 1: the corpus alone", flush=True)
    first = retrain(settings, open_store(feedback_dir), policy, rule, force=True)
    print(f"version {first['model_version']} (aliases: {first['aliases']}), eval perplexity "
          f"{first['eval_perplexity']:.3f}", flush=True)
    print(f"== 2. serving models:/{settings.pipeline_name}@champion", flush=True)
    keys_file, keys = user_keys(settings.output_dir, args.users)
    server, url, log = start_server(settings, feedback_dir, keys_file)
    try:
        print(f"serving version {served_version(url)} at {url}", flush=True)
        print(f"== 3. {args.users} simulated users: prompts and ratings", flush=True)
        ids = simulate_users(url, settings.pipeline_name, keys, corpus_sentences(settings.data_root, args.users))
        print(f"{len(ids)} completions rated", flush=True)
        print("== 4. retrain: are the conditions met?", flush=True)
        second = retrain(settings, open_store(feedback_dir), policy, rule)
        if second is None:
            raise SystemExit("the retrain condition did not fire")
        print(f"version {second['model_version']}: eval perplexity {second['eval_perplexity']:.3f}; the champion "
              f"(version {first['model_version']}) on the same eval blocks: {second.get('champion_eval_perplexity')}",
              flush=True)
        print(f"blessed: {second['blessed']} ({second['reason']})", flush=True)
        print("== 5. the server", flush=True)
        follow(url, settings, first, second, keys[0])
        print("== 6. lineage", flush=True)
        print(completion_lineage(settings.tracking_uri, open_store(feedback_dir), ids[1]))
        print(version_lineage(settings.tracking_uri, f"models:/{settings.pipeline_name}/{second['model_version']}"))
    finally:
        server.terminate()
        server.wait(60)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
