"""`tools/airflow.sh` (airflow standalone: scheduler, web server, triggerer) in a given AIRFLOW_HOME,
driven through the REST API the web UI uses, with the standalone admin's basic auth. Used by
tests/test_airflow.py and benchmarks/orchestrators.py."""

import base64
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Airflow:
    """`tools/airflow.sh` (airflow standalone) in a temporary AIRFLOW_HOME; REST calls with basic auth."""

    def __init__(self, home, env):
        self.home, self.env = str(home), env
        self.url = f"http://127.0.0.1:{env['AIRFLOW__WEBSERVER__WEB_SERVER_PORT']}"
        self.log_path = os.path.join(self.home, "standalone.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([os.path.join(REPO, "tools", "airflow.sh")], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.auth = None

    def wait_ready(self, dag_id, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.read_log()[-3000:]
            password = os.path.join(self.home, "standalone_admin_password.txt")
            if os.path.exists(password) and self.auth is None:
                with open(password) as f:
                    self.auth = "Basic " + base64.b64encode(b"admin:" + f.read().strip().encode()).decode()
            try:
                if self.auth and self.call("GET", f"/api/v1/dags/{dag_id}")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"Airflow did not list {dag_id} in {timeout} s:\n{self.read_log()[-3000:]}")

    def call(self, method, path, body=None, accept="application/json"):
        request = urllib.request.Request(self.url + path, method=method, data=None if body is None else
                                         json.dumps(body).encode(), headers={
                                             "Authorization": self.auth, "Content-Type": "application/json",
                                             "Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                status, raw = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read().decode()
        return status, (json.loads(raw) if accept == "application/json" and raw.startswith(("{", "[")) else raw)

    def read_log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def trigger(self, dag_id) -> dict:
        """What the web UI's trigger button does: a new manual run of `dag_id`."""
        status, run = self.call("POST", f"/api/v1/dags/{dag_id}/dagRuns", {"conf": {}})
        assert status == 200, run
        return run

    def wait_for_run(self, dag_id, run_id, timeout=900):
        """The run's final state, and the scheduler's health as the web UI saw it at each poll."""
        health, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            scheduler = self.call("GET", "/api/v1/health")[1]["scheduler"]
            health.append(scheduler["status"])
            if scheduler["status"] != "healthy":
                print(f"{time.strftime('%H:%M:%S')} scheduler {scheduler}", flush=True)
            state = self.call("GET", f"/api/v1/dags/{dag_id}/dagRuns/{run_id}")[1]["state"]
            if state in ("success", "failed"):
                return state, health
            time.sleep(3)
        raise TimeoutError(f"run {run_id} still running after {timeout} s:\n{self.read_log()[-3000:]}")
