#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): attention numerics, throughput / MFU of small and base,
# training through `accelerate launch` with a checkpoint and an exact resume. Writes OUT/gpu_check.json
# and OUT/gpu_check.md (OUT: --out, default runs/gpu_check).
#
#   bash bench/gpu_check.sh --wheels .whl --tag-data .gpucheck/tag-data --out "$OUT"   # on the GPU machine
#   bash bench/gpu_check.sh --dry-run --out /tmp/gpu_check                             # on CPU, < 1 minute
#
# --wheels DIR: wheels to install first (datasets and what it needs beyond the machine's packages;
# docs/training.md, "GPU check", says how to prepare DIR with `pip download` where there is internet). They go to
# a private folder put first on PYTHONPATH; the repository itself is imported from its source tree.
# Every other flag goes to bench/gpu_check.py (see `python bench/gpu_check.py --help`).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
ARGS=()
WHEELS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
if [ -n "$WHEELS" ]; then
    SITE="${TMPDIR:-/tmp}/booru-embed-gpu-check-site"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
"$PYTHON" -c "import datasets" 2>/dev/null || {
    echo "gpu_check.sh: the datasets package is missing: pass --wheels DIR (see docs/training.md, GPU check)" >&2; exit 2; }
exec "$PYTHON" "$REPO/bench/gpu_check.py" "${ARGS[@]}"
