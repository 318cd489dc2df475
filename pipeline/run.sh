#!/bin/sh
# Run a stage entry point with the project's interpreter. dvc.yaml commands must not depend on
# how the user started `dvc` (`.venv/bin/dvc repro` does not put the venv on PATH), and the
# command text is part of dvc.lock, so the interpreter is chosen here, not in dvc.yaml:
#   $DNLREPRO_PYTHON, else <repo>/.venv/bin/python, else python3 on PATH.
root="${DVC_ROOT:-$(pwd)}"
if [ -n "$DNLREPRO_PYTHON" ]; then
  py="$DNLREPRO_PYTHON"
elif [ -x "$root/.venv/bin/python" ]; then
  py="$root/.venv/bin/python"
else
  py=python3
fi
exec "$py" "$@"
