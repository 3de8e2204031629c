"""Runs a compiled Kubeflow Pipelines V2 PipelineJob JSON on this machine, task by task, as KFP would.

    .venv/bin/python tools/kfp_local_run.py tfx-gpt2-pipeline.json --pipeline-root /tmp/kfp-root

kfp 2.5 has no local runner, so this plays the part of KFP's driver and launcher for the
containers of the file written by `pipelines/kubeflow_runner.py`:

- the tasks run in an order that respects every `dependentTasks`;
- each task runs exactly the `command` and `args` of its executor's container, with `{{$}}`
  replaced by the ExecutorInput JSON the driver would build: input artifacts (uri, name, metadata,
  type) from the upstream tasks' ExecutorOutput, parameters from the task's constants (or the
  job's runtime config), output artifact URIs under the pipeline root, and the output file;
- the project's Python environment (`python` on `PATH`) stands in for the image; each task starts
  in an empty working directory, as in a pod, so a path that only exists in the repository fails;
- importer tasks produce their artifact from the spec's URI, as KFP's importer does.

What it does not do: KFP's cache (every task runs), container resources (the Trainer's GPU request
is checked by `tests/test_kubeflow.py`), and ML Metadata (KFP keeps it outside the containers).
Every task's log is `<pipeline root>/<run id>/<task>/log.txt`.
"""

import argparse
import json
import multiprocessing
import os
import runpy
import subprocess
import sys
import time
import uuid
from concurrent import futures
from typing import Dict, List, Optional

ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
PRELOAD = (ENTRYPOINT, "tfx_gpt2.components.trainer", "tfx_gpt2.components.mlflow_pusher")


class TaskFailed(RuntimeError):
    pass


def task_order(tasks: Dict[str, dict]) -> List[str]:
    """Task names in an order where every task comes after its `dependentTasks`."""
    order, done = [], set()
    pending = dict(sorted(tasks.items()))
    while pending:
        ready = [name for name, task in pending.items() if set(task.get("dependentTasks", [])) <= done]
        if not ready:
            raise ValueError(f"tasks {sorted(pending)} wait on each other or on a task that is not in the "
                             "pipeline: check their dependentTasks")
        for name in ready:
            order.append(name)
            done.add(name)
            del pending[name]
    return order


def parameter_value(name: str, spec: dict, runtime: dict) -> dict:
    """A task input parameter as an ExecutorInput `parameters` value (schema 2.0: intValue, ...)."""
    value = spec.get("runtimeValue", {})
    if "constantValue" in value:
        return value["constantValue"]
    if "constant" in value:
        return _old_style(value["constant"])
    if "componentInputParameter" in spec:
        key = spec["componentInputParameter"]
        if key in runtime.get("parameters", {}):
            return runtime["parameters"][key]
        if key in runtime.get("parameterValues", {}):
            return _old_style(runtime["parameterValues"][key])
        raise ValueError(f"parameter {name!r} takes the pipeline input {key!r}, which the job's runtimeConfig "
                         "does not set: add it to runtimeConfig.parameterValues")
    raise ValueError(f"parameter {name!r}: {json.dumps(spec)} is not a constant or a pipeline input; this "
                     "local runner supports only those")


def _old_style(value):
    if isinstance(value, bool):
        return {"intValue": str(int(value))}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": value if isinstance(value, str) else json.dumps(value)}


class LocalJob:
    """One run of a PipelineJob dict: `run()` executes it; `.outputs[task][key]` are the artifacts."""

    def __init__(self, job: dict, pipeline_root: str = "", env: Optional[dict] = None, run_id: str = "",
                 preload: bool = False):
        self.spec = job["pipelineSpec"]
        self.runtime = job.get("runtimeConfig", {})
        self.root = (pipeline_root or self.runtime.get("gcsOutputDirectory", "")).rstrip("/")
        if not self.root:
            raise ValueError("no pipeline root: give --pipeline-root, or compile with --pipeline-root")
        self.run_id = run_id or f"{self.spec['pipelineInfo']['name']}-{time.strftime('%Y%m%d%H%M%S')}"
        self.env = dict(os.environ if env is None else env)
        self.outputs: Dict[str, Dict[str, dict]] = {}
        self.seconds: Dict[str, float] = {}
        self.preload = None
        if preload:
            self.preload = multiprocessing.get_context("forkserver")
            self.preload.set_forkserver_preload(list(PRELOAD))

    def task_dir(self, task: str) -> str:
        return os.path.join(self.root, self.run_id, task)

    def run(self, log=print, parallel: int = 2) -> Dict[str, Dict[str, dict]]:
        """Runs every task once its dependentTasks are done, up to `parallel` at a time (as KFP runs
        independent pods side by side); stops at the first failure, after the tasks already running."""
        tasks = self.spec["root"]["dag"]["tasks"]
        order = task_order(tasks)  # refuses cycles before anything runs
        running: Dict[futures.Future, str] = {}
        with futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            failure = None
            while True:
                if failure is None:
                    for name in self.ready(order, tasks, set(running.values())):
                        if len(running) < parallel:
                            log(f"[{name}] running")
                            running[pool.submit(self.timed_task, name, tasks[name])] = name
                if not running:
                    break
                done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    try:
                        self.outputs[name] = future.result()
                        log(f"[{name}] done in {self.seconds[name]:.1f} s")
                    except Exception as e:  # noqa: BLE001 - reported once the running tasks end
                        failure = failure or e
            if failure is not None:
                raise failure
        return self.outputs

    def ready(self, order: List[str], tasks: Dict[str, dict], running: set) -> List[str]:
        """The tasks of `order` not run yet whose dependentTasks are all done."""
        return [name for name in order if name not in self.outputs and name not in running
                and set(tasks[name].get("dependentTasks", [])) <= set(self.outputs)]

    def timed_task(self, name: str, task: dict) -> Dict[str, dict]:
        start = time.monotonic()
        try:
            return self.run_task(name, task)
        finally:
            self.seconds[name] = time.monotonic() - start

    def run_task(self, name: str, task: dict) -> Dict[str, dict]:
        component = self.spec["components"][task["componentRef"]["name"]]
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        if "importer" in executor:
            return self.run_importer(name, component, executor["importer"])
        if "container" not in executor:
            raise ValueError(f"task {name!r}: executor {component['executorLabel']!r} is neither a container "
                             "nor an importer")
        executor_input = self.executor_input(name, task, component)
        asks = requested_resources(executor["container"])
        if asks:
            print(f"[{name}] the spec asks for {asks} (not enforced here)", flush=True)
        self.run_container(name, executor["container"], executor_input)
        return self.read_outputs(name, component, executor_input)

    def executor_input(self, name: str, task: dict, component: dict) -> dict:
        inputs = task.get("inputs", {})
        artifacts = {key: {"artifacts": [self.upstream_artifact(name, key, spec, component)]}
                     for key, spec in inputs.get("artifacts", {}).items()}
        parameters = {key: parameter_value(key, spec, self.runtime)
                      for key, spec in inputs.get("parameters", {}).items()}
        outputs = {key: {"artifacts": [{
            "name": self.artifact_name(name, key), "uri": os.path.join(self.task_dir(name), key),
            "type": spec["artifactType"], "metadata": {}}]}
            for key, spec in component.get("outputDefinitions", {}).get("artifacts", {}).items()}
        return {"inputs": {"artifacts": artifacts, "parameters": parameters},
                "outputs": {"artifacts": outputs, "outputFile": os.path.join(self.task_dir(name), "executor_output.json")}}

    def upstream_artifact(self, name: str, key: str, spec: dict, component: dict) -> dict:
        source = spec.get("taskOutputArtifact")
        if not source:
            raise ValueError(f"task {name!r} input {key!r}: {json.dumps(spec)} is not another task's output; this "
                             "local runner supports only those")
        produced = self.outputs[source["producerTask"]][source["outputArtifactKey"]]
        artifact_type = component["inputDefinitions"]["artifacts"][key]["artifactType"]
        return {**produced, "type": artifact_type}

    def artifact_name(self, task: str, key: str) -> str:
        return f"local/{self.run_id}/{task}/{key}"

    def run_container(self, name: str, container: dict, executor_input: dict):
        argv = [*container["command"], *[arg.replace("{{$}}", json.dumps(executor_input)) for arg in container["args"]]]
        unresolved = [arg for arg in argv if "{{$" in arg]
        if unresolved:
            raise ValueError(f"task {name!r}: placeholders {unresolved} are not supported by this local runner")
        workdir = os.path.join(self.task_dir(name), "workdir")
        for path in (workdir, *[os.path.dirname(a["artifacts"][0]["uri"])
                                for a in executor_input["outputs"]["artifacts"].values()]):
            os.makedirs(path, exist_ok=True)
        log_path = os.path.join(self.task_dir(name), "log.txt")
        code = self.launch(argv, workdir, log_path)
        if code != 0:
            with open(log_path) as f:
                tail = f.read()[-4000:]
            raise TaskFailed(f"task {name!r} exited with {code}; its log is {log_path}:\n{tail}")

    def launch(self, argv: List[str], workdir: str, log_path: str) -> int:
        """Runs `argv` in `workdir`, output to `log_path`: a new process, or with `preload` a
        process forked from one that imported TFX's entrypoint already (`python -m MODULE ARGS`
        run by runpy, as `python -m` does)."""
        if self.preload is None or argv[:2] != ["python", "-m"]:
            with open(log_path, "w") as log:
                return subprocess.run(argv, cwd=workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT).returncode
        process = self.preload.Process(target=run_module, args=(argv[2:], workdir, self.env, log_path))
        process.start()
        process.join()
        return process.exitcode

    def read_outputs(self, name: str, component: dict, executor_input: dict) -> Dict[str, dict]:
        """The task's output artifacts: those of its input, updated by its ExecutorOutput file."""
        path = executor_input["outputs"]["outputFile"]
        if not os.path.exists(path):
            raise TaskFailed(f"task {name!r} exited 0 but wrote no ExecutorOutput to {path}")
        with open(path) as f:
            written = json.load(f).get("artifacts", {})
        outputs = {}
        for key, declared in executor_input["outputs"]["artifacts"].items():
            artifact = dict(declared["artifacts"][0])
            if key in written:
                artifact.update({k: v for k, v in written[key]["artifacts"][0].items() if k in ("uri", "metadata")})
            outputs[key] = artifact
        return outputs

    def run_importer(self, name: str, component: dict, importer: dict) -> Dict[str, dict]:
        uri = importer["artifactUri"].get("constantValue", {}).get("stringValue") or \
            importer["artifactUri"].get("constant")
        if not uri:
            raise ValueError(f"importer task {name!r}: only a constant artifactUri is supported")
        (key,) = component["outputDefinitions"]["artifacts"]
        return {key: {"name": self.artifact_name(name, key), "uri": uri, "type": importer["typeSchema"],
                      "metadata": importer.get("metadata", {})}}


def run_module(argv: List[str], workdir: str, env: dict, log_path: str) -> None:
    """In a forked process: `python -m argv[0] argv[1:]` in `workdir` with `env`, output to `log_path`."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(workdir)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [argv[0], *argv[1:]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


def requested_resources(container: dict) -> str:
    """What a task's pod would ask the cluster for: CPU, memory, accelerators."""
    resources = container.get("resources", {})
    parts = [f"{resources['cpuLimit']:g} CPU" if "cpuLimit" in resources else "",
             f"{resources['memoryLimit']:g} GB" if "memoryLimit" in resources else ""]
    accelerator = resources.get("accelerator", {})
    if accelerator:
        parts.append(f"{accelerator.get('count', 1)} x {accelerator.get('type', '?')}")
    return ", ".join(p for p in parts if p)


def python_env(python: str = sys.executable) -> dict:
    """The environment of a task: this one, with `python` resolving to `python`'s environment."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")
    return env


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", help="the PipelineJob JSON written by pipelines/kubeflow_runner.py")
    parser.add_argument("--pipeline-root", default="", help="where outputs go (default: the job's own root)")
    parser.add_argument("--run-id", default="", help="the run's folder under the root (default: a random id)")
    parser.add_argument("--parallel", type=int, default=2, help="tasks run side by side at most (default: 2)")
    parser.add_argument("--preload", action="store_true",
                        help="fork each task from a process that imported TFX once (same module and arguments; "
                             "saves ~15 s of imports per task)")
    args = parser.parse_args(argv)
    with open(args.job) as f:
        job = LocalJob(json.load(f), args.pipeline_root, python_env(), args.run_id or uuid.uuid4().hex[:12],
                       preload=args.preload)
    try:
        job.run(parallel=args.parallel)
    except TaskFailed as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps({"run": os.path.join(job.root, job.run_id), "seconds": job.seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
