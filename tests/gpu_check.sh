#!/usr/bin/env bash
# GPU check of the ala-paper engine (issues 8, 20): each item asserts what a regression would break; figures and a
# JSON report (rewritten after every item) go to figures/gpu_check_<gpu>.json with the commit it ran on; the exit
# status is 1 when any check failed. Items that need CUDA (or two GPUs) are reported as `not run`, never as passed.
# Usage, from the repository root with the project installed (pip install -e .):  bash tests/gpu_check.sh
# Under 10 minutes on one GPU. A CPU smoke run of the same script (what CI does): bash tests/gpu_check.sh --device cpu --quick --out /tmp/r.json
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # ala_paper from this checkout, installed or not
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
exec timeout 600 "${PYTHON:-python3}" tests/gpu_check.py "$@"
