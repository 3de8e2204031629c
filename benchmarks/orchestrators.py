"""Airflow against Beam: the same pipeline run by the Airflow DAG and by the Beam example.

    .venv/bin/python benchmarks/orchestrators.py                   # the bundled corpus, `tiny` preset
    .venv/bin/python benchmarks/orchestrators.py --max-steps 20    # a shorter run

    beam      `examples/beam-local-example.py` in a new process, whole-process wall time (it
              imports TFX, compiles and runs every component in one process): what `make run` does.
    airflow   `tools/airflow.sh` (airflow standalone on sqlite, PreloadedExecutor) in a temporary
              AIRFLOW_HOME; the run is triggered through the REST API once the executor's worker
              has imported TFX, and timed from the trigger to the run's success (Airflow's own
              start-up, with the pipeline's compilation by tools/airflow.sh and the worker's
              imports, is printed apart). The scheduler's health is polled all along.

Both train the same model on the same data, each in a fresh output folder. Printed: both wall
times and airflow / beam (target: at most 2x).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # airflow_helpers, mlflow_helpers
DAG_ID = "tfx-gpt2-bench"


def beam_seconds(out: str, env: dict) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, os.path.join(REPO, "examples", "beam-local-example.py"), "--output-dir", out],
                   env=env, check=True, capture_output=True)
    return time.monotonic() - start


def airflow_seconds(home: str, env: dict) -> dict:
    from airflow_helpers import Airflow
    from mlflow_helpers import free_port

    env = {**env, "AIRFLOW_HOME": home, "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(free_port()),
           "TFX_GPT2_PIPELINE_NAME": DAG_ID, "TFX_GPT2_OUTPUT_DIR": os.path.join(home, "out")}
    os.makedirs(home, exist_ok=True)
    start = time.monotonic()
    airflow = Airflow(home, env)
    try:
        airflow.wait_ready(DAG_ID)
        while "the task worker is ready" not in airflow.read_log() and time.monotonic() - start < 300:
            time.sleep(1)  # the executor's worker imports TFX once, after Airflow starts
        ready = time.monotonic() - start
        run = airflow.trigger(DAG_ID)
        start = time.monotonic()
        state, health = airflow.wait_for_run(DAG_ID, run["dag_run_id"])
        seconds = time.monotonic() - start
        log = airflow.read_log()
    finally:
        airflow.stop()
    if state != "success":
        raise RuntimeError(f"the Airflow run ended {state}:\n{log[-3000:]}")
    return {"seconds": seconds, "startup_seconds": ready, "health": sorted(set(health)),
            "processor_restarts": log.count("re-launching")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=0, help="training steps (0: the tiny preset's)")
    args = parser.parse_args(argv)
    env = {**os.environ, "TFX_GPT2_MAX_STEPS": str(args.max_steps)}
    env.pop("MLFLOW_TRACKING_URI", None)
    if args.max_steps:
        env["TFX_GPT2_BEAT_BASELINE"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        beam = beam_seconds(os.path.join(tmp, "beam"), env)
        airflow = airflow_seconds(os.path.join(tmp, "airflow"), env)
    result = {"beam_seconds": round(beam, 1), "airflow_seconds": round(airflow["seconds"], 1),
              "airflow_startup_seconds": round(airflow["startup_seconds"], 1),
              "scheduler_health": airflow["health"], "processor_restarts": airflow["processor_restarts"]}
    print(json.dumps(result))
    print(f"airflow run / beam example: {airflow['seconds'] / beam:.2f}x (target: <= 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
