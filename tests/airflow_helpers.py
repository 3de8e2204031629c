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

from conftest import wait_until

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

    def stop(self) -> list:
        """SIGTERM to `tools/airflow.sh` alone (what `kill PID` does), which stops every process it
        started; returns the command lines of those that were still running (then killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        left = self.processes()
        for p in left:
            p.kill()
        return [" ".join(p.cmdline()[:3]) for p in left]

    def processes(self) -> list:
        """The processes running with this Airflow's AIRFLOW_HOME."""
        import psutil

        found = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get("AIRFLOW_HOME") == self.home:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def trigger(self, dag_id, unpause: bool = False) -> dict:
        """What the web UI's trigger button does: a new manual run of `dag_id` (on a paused DAG,
        the button unpauses it first)."""
        if unpause:
            self.set_paused(dag_id, False)
        status, run = self.call("POST", f"/api/v1/dags/{dag_id}/dagRuns", {"conf": {}})
        assert status == 200, run
        return run

    def set_paused(self, dag_id, paused: bool) -> None:
        """The DAG's toggle in the web UI."""
        status, dag = self.call("PATCH", f"/api/v1/dags/{dag_id}?update_mask=is_paused", {"is_paused": paused})
        assert status == 200 and dag["is_paused"] is paused, dag

    def mark_run(self, dag_id, run_id, state) -> None:
        """The web UI's "Mark failed" (or "Mark success") of a run."""
        status, run = self.call("PATCH", f"/api/v1/dags/{dag_id}/dagRuns/{run_id}", {"state": state})
        assert status == 200 and run["state"] == state, run

    def wait_until(self, what, condition, timeout=300):
        """`conftest.wait_until`, polling every second, failing with the end of Airflow's log."""
        return wait_until(condition, lambda: f"{what} did not happen in {timeout} s:\n{self.read_log()[-3000:]}",
                          timeout, interval=1)

    def runs(self, dag_id) -> list:
        return self.call("GET", f"/api/v1/dags/{dag_id}/dagRuns?order_by=execution_date")[1]["dag_runs"]

    def tasks(self, dag_id, run_id) -> dict:
        return {t["task_id"]: t["state"] for t in self.call(
            "GET", f"/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances")[1]["task_instances"]}

    def task_log(self, dag_id, run_id, task_id) -> str:
        """The log of the task's latest try (Airflow 2.10 counts a try when the task is scheduled,
        so the first one to run is not always try 1)."""
        path = f"/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        try_number = self.call("GET", path)[1]["try_number"]
        return self.call("GET", f"{path}/logs/{try_number}", accept="text/plain")[1]

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
