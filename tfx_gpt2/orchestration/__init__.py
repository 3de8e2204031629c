"""How the pipeline is run (the layer above `tfx_gpt2.pipeline`; nothing below imports it): locally
with Beam (`beam_local`, with `mlmd_runs` and `run_report`), the Beam arguments of each runner
(`beam_args`), under Airflow (`airflow_dag`, `airflow_executor`, `airflow_timetable`), and the
continuous-training loop that runs it again on new feedback (`continuous`). Kubeflow's runner is
`pipelines/kubeflow_runner.py`."""
