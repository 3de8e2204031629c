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
run's report: the registered version and where to open MLflow, TensorBoard and the model.
"""

import hashlib
import json
import logging
import os
import shlex
import sys
import time
from typing import Optional

from tfx_gpt2.settings import PipelineSettings

log = logging.getLogger("tfx_gpt2.airflow")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def dag_settings(environ=None) -> PipelineSettings:
    """The DAG's settings: `TFX_GPT2_*` (`tfx_gpt2.settings.from_env`); in the continuous-training
    layout (`TFX_GPT2_FEEDBACK_LOOP=1`) the data are the spans under the output directory."""
    from tfx_gpt2.settings import from_env

    settings = from_env(environ)
    if settings.feedback_loop:
        from tfx_gpt2.continuous import span_settings, training_data

        settings = span_settings(settings, training_data(settings).setup())
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

    from tfx_gpt2.local import metadata_config

    settings.layout.create()
    ir = compiler.Compiler().compile(settings.create_pipeline(metadata_config(settings.metadata_path)))
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


def run_node(plan_file: str, node_id: str, key: str, report: bool = False, run_id: Optional[str] = None, **_):
    """Airflow task: runs node `node_id` of the compiled pipeline as pipeline run `run_id`."""
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
    if report:
        log.info("%s", run_report(plan, run_id))
    else:
        log.info("%s done; the run's results are at the end of the log of the task that pushes the model",
                 node_id)


def run_report(plan: dict, run_id: str) -> str:
    """The local runner's report of run `run_id`, plus how to serve the registered model."""
    from tfx_gpt2.local import report, summarize
    from tfx_gpt2.pipeline_config import OutputLayout

    summary = summarize(OutputLayout(plan["output_dir"], plan["pipeline_name"]), run_id)
    serve = [os.path.join(os.path.dirname(sys.executable), "tfx-gpt2"), "serve",
             f"models:/{summary['registered_model_name']}@champion", "--port", "8080"]
    return "\n".join([report(summary), "Serve the champion:",
                      f"  MLFLOW_TRACKING_URI={shlex.quote(str(summary['tracking_uri']))} {shlex.join(serve)}"])



def main() -> int:
    """`python -m tfx_gpt2.airflow_dag`: compiles the DAG's pipeline for the current environment
    now (tools/airflow.sh does it before starting Airflow, so that no parse has to)."""
    settings = dag_settings()
    start = time.monotonic()
    plan = load_plan(settings)
    what = "compiled" if time.monotonic() - start > 2 else "up to date"
    print(f"pipeline {settings.pipeline_name!r}: {len(plan['nodes'])} tasks, {what} in {plan_path(settings)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
