"""An Airflow executor for sqlite (the quick start) whose tasks start with TFX already imported.

    AIRFLOW__CORE__EXECUTOR=tfx_gpt2.orchestration.airflow_executor.PreloadedExecutor airflow standalone

Airflow's SequentialExecutor, the only one it allows on sqlite, runs each task as a new
`airflow tasks run` process and waits for it inside the scheduler's loop: every task of the
pipeline imported TFX and TensorFlow again (15-20 s of CPU each here), and the scheduler sent no
heartbeat while a task ran, so the web UI said "The scheduler does not appear to be running".

This executor is single-threaded too (one task at a time, which is what sqlite allows), but:
- its tasks are forked from a worker process that imported the heavy modules once
  (`TFX_GPT2_AIRFLOW_PRELOAD`, default `PRELOAD`), as Airflow's LocalExecutor forks its tasks;
- the scheduler's loop does not wait for a task: it polls the worker, and keeps its heartbeat.

On PostgreSQL or MySQL use Airflow's LocalExecutor (docs/orchestrators.md).
"""

import importlib
import logging
import multiprocessing
import os
import signal
from collections import deque
from typing import Optional

from airflow.executors.base_executor import BaseExecutor

PRELOAD = ("tfx_gpt2.pipeline", "tfx_gpt2.components.trainer", "tfx_gpt2.training.loop", "tfx_gpt2.registry.push",
           "tfx.orchestration.portable.launcher", "tfx.orchestration.local.runner_utils", "mlflow",
           "airflow.cli.cli_parser", "airflow.operators.python")
log = logging.getLogger("tfx_gpt2.airflow_executor")


def preload_modules() -> tuple:
    names = os.environ.get("TFX_GPT2_AIRFLOW_PRELOAD")
    return tuple(n for n in names.replace(",", " ").split() if n) if names is not None else PRELOAD


def worker_main(conn, modules) -> None:
    """The worker: imports `modules`, then for each command received forks a child that runs it
    (an `airflow tasks run ...` argv) and sends back the child's exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the scheduler's Ctrl-C stops it through the executor
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a task that needs it will fail with the real error
            log.warning("could not preload %s: %s", name, e)
    conn.send("ready")
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        pid = os.fork()
        if pid == 0:
            run_command_in_child(command)
        _, status = os.waitpid(pid, 0)
        conn.send(os.waitstatus_to_exitcode(status))


def run_command_in_child(command) -> None:
    """In the forked child: runs `airflow tasks run ...` in this process (as LocalExecutor does), exits."""
    code = 1
    try:
        os.setpgid(0, 0)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        from airflow import settings
        from airflow.cli.cli_parser import get_parser

        settings.engine.dispose(close=False)  # the worker's connections belong to the worker
        args = get_parser().parse_args(command[1:])
        args.shut_down_logging = False
        args.func(args)
        code = 0
    except BaseException:  # noqa: BLE001 - the exit code reports it; the task log has the traceback
        log.exception("task command %s failed", command)
    finally:
        logging.shutdown()
        os._exit(code)


class PreloadedExecutor(BaseExecutor):
    """One task at a time, forked from a worker that preloaded TFX; never blocks the scheduler."""

    is_local = True
    is_single_threaded = True
    is_production = False
    serve_logs = True

    def __init__(self):
        super().__init__()
        self.pending: deque = deque()
        self.current: Optional[tuple] = None
        self.process = None
        self.conn = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child, preload_modules()),
                                       name="tfx-gpt2-airflow-worker", daemon=True)
        self.process.start()
        child.close()
        log.info("started the task worker (pid %d), preloading %s", self.process.pid, ", ".join(preload_modules()))

    def execute_async(self, key, command, queue=None, executor_config=None) -> None:
        self.validate_airflow_tasks_run_command(command)
        self.pending.append((key, command))

    def sync(self) -> None:
        while self.conn.poll():
            message = self.conn.recv()
            if message == "ready":
                log.info("the task worker is ready")
                continue
            key, self.current = self.current[0], None
            if message == 0:
                self.success(key)
            else:
                self.fail(key)
        if self.current is None and self.pending:
            self.current = self.pending.popleft()
            self.conn.send(self.current[1])
        if self.process is not None and not self.process.is_alive():
            raise RuntimeError(f"the task worker died (exit code {self.process.exitcode}); see the scheduler's log")

    def end(self) -> None:
        """Waits for the queued tasks to finish, then stops the worker."""
        while self.current is not None or self.pending:
            self.sync()
            if self.current is not None:
                self.conn.poll(1.0)
        self.terminate()

    def terminate(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.conn.close()
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
        self.process = None
