#!/usr/bin/env bash
# The GPU check in one command: install what is missing, then benchmarks/gpu_check.py (docs/benchmarks.md).
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--out PATH] [--ref-venv DIR] [--dry-run]
#
#   --wheels DIR   install offline from a folder of wheels, made on a machine with internet by
#                  `pip download -r requirements.txt yolov5==7.0.14 "setuptools<80" -d DIR`
#   --out PATH     results prefix (default benchmarks/results/gpu_check -> .json and .md)
#   --ref-venv DIR venv for the reference PyPI yolov5 (default $TMPDIR/gpu_check_refenv; shares our torch)
#   --dry-run      CPU, tiny sizes, 1 step, no reference and no installs: the plumbing check of the test suite
# Without the reference (no index, no wheel) ours is measured alone and the output says so.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS=""
DRY_RUN=0
OUT="$ROOT/benchmarks/results/gpu_check"
REF_VENV="${TMPDIR:-/tmp}/gpu_check_refenv"
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
    --out) OUT="${2:?--out needs a path}"; shift 2 ;;
    --ref-venv) REF_VENV="${2:?--ref-venv needs a folder}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then
  echo "gpu_check.sh: --wheels $WHEELS is not a folder" >&2
  exit 2
fi
if [ "$DRY_RUN" = 1 ]; then
  exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" --dry-run --out "$OUT"
fi
# Offline from the wheels when given; otherwise the index, failing fast when it cannot be reached.
PIP_SOURCE=(--retries 1 --timeout 10)
if [ -n "$WHEELS" ]; then
  PIP_SOURCE=(--no-index --find-links "$WHEELS")
fi

# 1. Our requirements, only where an import is missing (a fresh machine).
if ! "$PYTHON" -c "import torch, torchvision, cv2, yaml, numpy, pandas, matplotlib, tqdm, thop" 2>/dev/null; then
  echo "gpu_check.sh: installing requirements.txt" >&2
  "$PYTHON" -m pip install -q "${PIP_SOURCE[@]}" -r "$ROOT/requirements.txt"
fi

# 2. The reference: PyPI yolov5 7.0.14 in its own venv on top of our torch; skipped with a note if it cannot install.
ARGS=(--out "$OUT")
if [ -x "$REF_VENV/bin/python" ] && "$REF_VENV/bin/python" -c "import yolov5" 2>/dev/null; then
  ARGS+=(--ref-python "$REF_VENV/bin/python")
elif "$PYTHON" -m venv --system-site-packages "$REF_VENV" \
    && "$REF_VENV/bin/python" -m pip install -q "${PIP_SOURCE[@]}" "yolov5==7.0.14" "setuptools<80"; then
  ARGS+=(--ref-python "$REF_VENV/bin/python")
else
  echo "gpu_check.sh: NOTE: the reference yolov5==7.0.14 could not be installed (offline? pass --wheels DIR);" \
       "measuring ours only" >&2
fi
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "${ARGS[@]}"
