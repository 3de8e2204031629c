#!/usr/bin/env bash
# Creates or updates .venv with Python 3.10 and the pinned dependency set; prints nothing when
# everything is already up to date. Used by the Makefile; safe to run by hand.
#
#   PYTHON310=/path/to/python3.10 tools/bootstrap.sh    # to choose the interpreter yourself
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
LOCK=requirements/constraints-py310.txt
EXTRAS=${EXTRAS:-dev,airflow,kfp}
UV_VERSION=0.13.9

find_python310() {
  local candidates=()
  [ -n "${PYTHON310:-}" ] && candidates+=("$PYTHON310")
  candidates+=(python3.10)
  local roots=("${PYENV_ROOT:-}" "$HOME/.pyenv")
  if command -v pyenv >/dev/null 2>&1; then roots+=("$(pyenv root)"); fi
  for root in "${roots[@]}"; do
    [ -n "$root" ] || continue
    for p in "$root"/versions/3.10.*/bin/python3.10; do [ -x "$p" ] && candidates+=("$p"); done
  done
  candidates+=(/usr/bin/python3.10 /usr/local/bin/python3.10)
  for p in "${candidates[@]}"; do
    # pyenv's shim exists even when 3.10 is not selected, so run it rather than trusting `command -v`.
    if "$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
  done
  echo "error: Python 3.10 not found (TFX 1.16 needs it). Install it (e.g. 'pyenv install 3.10') or set PYTHON310=/path/to/python3.10." >&2
  return 1
}

stamp="$VENV/.tfx-gpt2-installed"
want=$(cat setup.py "$LOCK" "$0" | sha256sum | cut -d' ' -f1)-$EXTRAS
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  py=$(find_python310)
  echo "[bootstrap] creating $VENV with $py"
  "$py" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/uv" ] || [ "$("$VENV/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  echo "[bootstrap] installing uv $UV_VERSION"
  "$VENV/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
echo "[bootstrap] installing tfx-gpt2[$EXTRAS] with the versions pinned in $LOCK"
# --compile-bytecode: every package's .pyc written now, once, on every core. Without them each new
# process compiles what it imports (importing TFX and MLflow took 32 s instead of 12 s here), and
# where PYTHONDONTWRITEBYTECODE is set, as on our CI machines and in many images, it does so every time.
"$VENV/bin/uv" pip install --python "$VENV/bin/python" -q --compile-bytecode -c "$LOCK" -e ".[$EXTRAS]"
echo "$want" > "$stamp"
echo "[bootstrap] done: $("$VENV/bin/python" -V) in $VENV"
