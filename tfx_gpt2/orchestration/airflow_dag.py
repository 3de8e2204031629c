"""The pipeline as an Airflow DAG whose parsing does not import TFX.

Airflow's scheduler parses every DAG file again and again (every 30 s by default), and each
task process parses it once more. TFX's `AirflowDagRunner` builds the DAG from the TFX pipeline,
so each parse imported TFX and TensorFlow (tens of seconds of CPU): the scheduler idled at ~40%
of a core, a slow parse restarted the DAG processor, and every task paid the import twice.

Here the pipeline is compiled once to TFX's intermediate representation (IR), cached in
`<output_dir>/airflow/<pipeline>.json` under a key made of the settings and the source of
`tfx_gpt2`; a parse with an unchanged key only reads that file. Each Airflow task runs one node
of the IR with TFX's portable launcher (what `LocalDagRunner` does for each node), as pipeline
run `<Airflow run id>` in ML Metadata. The task that pushes the model ends its log with the
run's report (the registered version and where to open MLflow, TensorBoard and the model), writes
the version and the MLflow run's link as the DAG run's note (shown on the run in the web UI's grid)
and returns them as its XCom (`model_uri`, `model_version`, `blessed`, `mlflow_run_url`).
"""

import hashlib
import json
import logging
import os
import shlex
import sys
import time
from typing import Optional

from tfx_gpt2.config.settings import PipelineSettings

log = logging.getLogger("tfx_gpt2.airflow")
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tfx_gpt2/


def dag_settings(environ=None) -> PipelineSettings:
    """The DAG's settings: `TFX_GPT2_*` (`tfx_gpt2.config.settings.from_env`); in the continuous-training
    layout (`TFX_GPT2_FEEDBACK_LOOP=1`) the data are the spans under the output directory, and each
    run fine-tunes the champion (unless `TFX_GPT2_WARM_START=0`)."""
    from tfx_gpt2.config.settings import from_env

    settings = from_env(environ)
    if settings.feedback_loop:
        from tfx_gpt2.orchestration.continuous import span_settings, training_data, with_loop_defaults

        settings = span_settings(with_loop_defaults(settings, environ), training_data(settings).setup())
    return settings


def source_fingerprint(root: str = PACKAGE_DIR) -> str:
    """A hash of every Python file of the package: a changed component compiles the IR again."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + f.read())
    return digest.hexdigest()


def plan_key(settings: PipelineSettings) -> str:
    import dataclasses

    fields = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)
    return hashlib.sha256((fields + source_fingerprint()).encode()).hexdigest()[:16]


def plan_path(settings: PipelineSettings) -> str:
    return os.path.join(settings.layout.output_dir, "airflow", f"{settings.pipeline_name}.json")


def load_plan(settings: PipelineSettings) -> dict:
    """The compiled pipeline of `settings` (nodes, upstream nodes, IR), from the cache when its key
    matches, else compiled now (this one parse imports TFX) and cached."""
    path, key = plan_path(settings), plan_key(settings)
    try:
        with open(path) as f:
            plan = json.load(f)
        if plan.get("key") == key:
            return plan
    except (OSError, ValueError):
        pass
    plan = compile_plan(settings, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(plan, f)
    os.replace(path + ".tmp", path)
    log.info("compiled pipeline %r to %s", settings.pipeline_name, path)
    return plan


def compile_plan(settings: PipelineSettings, key: str) -> dict:
    from google.protobuf import json_format
    from tfx.dsl.compiler import compiler

    from tfx_gpt2.orchestration.mlmd_runs import metadata_config
    from tfx_gpt2.pipeline import pipeline_from_settings

    settings.layout.create()
    ir = compiler.Compiler().compile(pipeline_from_settings(settings, metadata_config(settings.metadata_path)))
    nodes = []
    for node in ir.nodes:
        n = node.pipeline_node
        types = {spec.artifact_spec.type.name for spec in n.outputs.outputs.values()}
        nodes.append({"id": n.node_info.id, "upstream": sorted(n.upstream_nodes), "pushes": "PushedModel" in types})
    return {"key": key, "pipeline_name": settings.pipeline_name, "output_dir": settings.layout.output_dir,
            "nodes": nodes, "ir": json_format.MessageToJson(ir)}


def airflow_dag(settings: PipelineSettings, **dag_args):
    """The Airflow DAG of `settings` (id: the pipeline name), one PythonOperator per pipeline node."""
    from airflow import DAG
    from airflow.operators.python import PythonOperator

    plan = load_plan(settings)
    path = plan_path(settings)
    with DAG(dag_id=settings.pipeline_name, **dag_args) as dag:
        tasks = {n["id"]: PythonOperator(task_id=n["id"], python_callable=run_node,
                                         op_kwargs={"plan_file": path, "node_id": n["id"], "key": plan["key"],
                                                    "report": n["pushes"]})
                 for n in plan["nodes"]}
        for n in plan["nodes"]:
            for upstream in n["upstream"]:
                tasks[upstream] >> tasks[n["id"]]
    return dag


def read_ir(plan_file: str, key: str):
    from google.protobuf import json_format
    from tfx.proto.orchestration import pipeline_pb2

    with open(plan_file) as f:
        plan = json.load(f)
    if plan["key"] != key:
        raise RuntimeError(f"{plan_file} was compiled again (settings or code changed) after this DAG run was "
                           "created; trigger a new run")
    return plan, json_format.Parse(plan["ir"], pipeline_pb2.Pipeline())


def run_node(plan_file: str, node_id: str, key: str, report: bool = False, run_id: Optional[str] = None,
             dag_run=None, **_):
    """Airflow task: runs node `node_id` of the compiled pipeline as pipeline run `run_id`; the
    pushing node's task also notes the results on the DAG run and returns them (its XCom)."""
    from tfx.dsl.compiler import constants
    from tfx.orchestration import metadata
    from tfx.orchestration.local import runner_utils
    from tfx.orchestration.portable import launcher, runtime_parameter_utils

    plan, ir = read_ir(plan_file, key)
    runtime_parameter_utils.substitute_runtime_parameter(ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: run_id})
    deployment = runner_utils.extract_local_deployment_config(ir)
    connection = deployment.metadata_connection_config
    connection = getattr(connection, connection.WhichOneof("connection_config"))
    (node,) = [n.pipeline_node for n in ir.nodes if n.pipeline_node.node_info.id == node_id]
    launcher.Launcher(
        pipeline_node=node, mlmd_connection=metadata.Metadata(connection), pipeline_info=ir.pipeline_info,
        pipeline_runtime_spec=ir.runtime_spec, executor_spec=runner_utils.extract_executor_spec(deployment, node_id),
        custom_driver_spec=runner_utils.extract_custom_driver_spec(deployment, node_id)).launch()
    if not report:
        log.info("%s done; the run's results are at the end of the log of the task that pushes the model",
                 node_id)
        return None
    summary = run_summary(plan, run_id)
    log.info("%s", run_report(summary))
    results = {"model_uri": f"models:/{summary['registered_model_name']}/{summary['model_version']}",
               "model_version": summary["model_version"], "blessed": bool(summary["blessed"]),
               "aliases": summary.get("aliases", ""), "mlflow_run_id": summary["mlflow_run_id"],
               "mlflow_run_url": mlflow_run_url(str(summary["tracking_uri"]), summary["mlflow_run_id"])}
    if dag_run is not None:
        note_results(dag_run, results)
    return results


def run_summary(plan: dict, run_id: str) -> dict:
    from tfx_gpt2.config.pipeline import OutputLayout
    from tfx_gpt2.orchestration.run_report import summarize

    return summarize(OutputLayout(plan["output_dir"], plan["pipeline_name"]), run_id)


def run_report(summary: dict) -> str:
    """The local runner's report of a run, plus how to serve the registered model (on a free port:
    not 8080, Airflow's own web server's)."""
    from tfx_gpt2.orchestration.run_report import report

    serve = [os.path.join(os.path.dirname(sys.executable), "tfx-gpt2"), "serve",
             f"models:/{summary['registered_model_name']}@champion", "--port", str(free_port())]
    return "\n".join([report(summary), "Serve the champion:",
                      f"  MLFLOW_TRACKING_URI={shlex.quote(str(summary['tracking_uri']))} {shlex.join(serve)}"])


def free_port(first: int = 8000, last: int = 8999) -> int:
    """The first port from `first` that nothing listens on here (and is not Airflow's web server's)."""
    import socket

    taken = {int(os.environ.get("AIRFLOW__WEBSERVER__WEB_SERVER_PORT", "8080"))}
    for port in range(first, last + 1):
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{last}; pick one for `tfx-gpt2 serve --port`")


def mlflow_run_url(tracking_uri: str, run_id: str) -> Optional[str]:
    """The MLflow UI's page of the run when the tracking URI is a server (None for a local store)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"


def note_results(dag_run, results: dict) -> None:
    """Writes the results as the DAG run's note (Markdown, shown on the run in the web UI)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    state = "blessed" if results["blessed"] else "not blessed"
    run = (f"[MLflow run {results['mlflow_run_id']}]({results['mlflow_run_url']})" if results["mlflow_run_url"]
           else f"MLflow run {results['mlflow_run_id']} (local store: see the MlflowPusher log for `mlflow ui`)")
    note = (f"Registered **{results['model_uri']}** ({state}; aliases: {results['aliases'] or 'none'}). {run}.")
    with create_session() as session:
        session.query(DagRun).filter(DagRun.dag_id == dag_run.dag_id, DagRun.run_id == dag_run.run_id).one().note = note
    log.info("DAG run note: %s", note)



def main() -> int:
    """`python -m tfx_gpt2.orchestration.airflow_dag`: compiles the DAG's pipeline for the current environment
    now (tools/airflow.sh does it before starting Airflow, so that no parse has to)."""
    settings = dag_settings()
    start = time.monotonic()
    plan = load_plan(settings)
    what = "compiled" if time.monotonic() - start > 2 else "up to date"
    print(f"pipeline {settings.pipeline_name!r}: {len(plan['nodes'])} tasks, {what} in {plan_path(settings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
