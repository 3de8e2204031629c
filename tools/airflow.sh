#!/usr/bin/env bash
# Airflow for the tfx-gpt2 DAGs, from the repository's .venv: `tools/airflow.sh` runs
# `airflow standalone` (scheduler, web server on http://localhost:8080, triggerer; the admin
# password is printed and kept in $AIRFLOW_HOME/standalone_admin_password.txt); any other
# arguments are an airflow command, e.g. `tools/airflow.sh dags list`. Ctrl-C, or SIGTERM to this
# script (`kill PID`), stops every process it started.
#
# Defaults, each kept if already set: AIRFLOW_HOME=./airflow_home (sqlite), the DAGs of dags/,
# TFX_GPT2_OUTPUT_DIR=./tfx_gpt2_airflow, on sqlite tfx-gpt2's PreloadedExecutor (one task at a
# time, forked with TFX already imported), one web server worker, and the REST API open to
# the web UI's users with basic auth (curl -u admin:PASSWORD ...). See docs/orchestrators.md.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$REPO/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$REPO/airflow_home}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$REPO/dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
# The first parse after a change of the settings or the code compiles the pipeline (~20 s).
export AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="${AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT:-120}"
export AIRFLOW__WEBSERVER__WORKERS="${AIRFLOW__WEBSERVER__WORKERS:-1}"
export AIRFLOW__API__AUTH_BACKENDS="${AIRFLOW__API__AUTH_BACKENDS:-airflow.api.auth.backend.basic_auth,airflow.api.auth.backend.session}"
export TFX_GPT2_OUTPUT_DIR="${TFX_GPT2_OUTPUT_DIR:-$REPO/tfx_gpt2_airflow}"
if [[ "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite}" == sqlite* ]]; then
  export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-tfx_gpt2.orchestration.airflow_executor.PreloadedExecutor}"
else
  export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
fi
"$REPO/tools/bootstrap.sh"   # creates or updates .venv; quiet when it is up to date
if [[ $# -eq 0 ]]; then
  set -- standalone
fi
if [[ "$1" == standalone || "$1" == scheduler ]]; then
  # Compile the pipeline DAG's plan now (~20 s), so that the scheduler's first parse only reads it.
  python -m tfx_gpt2.orchestration.airflow_dag
fi
case "$1" in
  standalone|scheduler|webserver|triggerer) ;;
  *) exec airflow "$@" ;;
esac
# A long-running Airflow goes in a process group of its own, which Ctrl-C or SIGTERM to this script
# stops whole: scheduler, web server and its workers, triggerer (`airflow standalone` alone
# leaves them running). After 60 s, what is left is killed.
setsid airflow "$@" &
group=$!
stop_airflow() {
  trap - INT TERM
  echo "[airflow.sh] stopping Airflow (process group $group)" >&2
  kill -TERM -- "-$group" 2>/dev/null || true
  for _ in $(seq 60); do
    kill -0 -- "-$group" 2>/dev/null || exit 0
    sleep 1
  done
  kill -KILL -- "-$group" 2>/dev/null || true
  exit 0
}
trap stop_airflow INT TERM
status=0
wait "$group" || status=$?
kill -TERM -- "-$group" 2>/dev/null || true   # what the command left behind
exit "$status"
