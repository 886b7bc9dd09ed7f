#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv on first use (CPU torch 2.13.0 + ndcam in editable mode), then
#   bash dev.sh demo [ARGS]   runs the main job (ndcam demo)
#   bash dev.sh test [ARGS]   runs the test suite (pytest), the command CI runs
#   bash dev.sh bench [ARGS]  runs the speed/memory benchmarks (writes benchmarks/RESULTS.md)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import ndcam, pytest, hypothesis, zarr, tqdm, soundfile, pydicom, png, skimage" >/dev/null 2>&1; then
    echo "[dev.sh] setting up .venv (first run only)" >&2
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q "torch>=2.1"
    .venv/bin/python -m pip install -q -e ".[dev]"
    # MONAI as an optional oracle for the agreement tests (pure Python; its import needs only torch and numpy)
    .venv/bin/python -m pip install -q --no-deps "monai>=1.3" >/dev/null 2>&1 || echo "[dev.sh] monai not installed: its agreement tests will skip" >&2
    # pytorch-grad-cam as an optional oracle (tests/test_peers_pgc.py), without its torchvision/torch requirements
    # (--no-deps: torch stays the CPU build); OpenCV, scikit-learn and ttach are what its map code really uses
    .venv/bin/python -m pip install -q --no-deps "grad-cam==1.5.7" opencv-python-headless scikit-learn ttach threadpoolctl \
        joblib cloudpickle narwhals >/dev/null 2>&1 || echo "[dev.sh] pytorch-grad-cam not installed: its agreement tests will skip" >&2
    # torchvision's model code for tests/test_real_architectures.py, unpacked beside the venv (never into it: every
    # torchvision wheel pins a torch release); the tests put .peers/torchvision on sys.path themselves
    .venv/bin/python -m pip install -q --no-deps --target .peers/torchvision "torchvision==0.28.0" >/dev/null 2>&1 \
        || echo "[dev.sh] torchvision not unpacked: the real-architecture tests will skip" >&2
    # torch-cam likewise (tests/test_peers_new.py); its methods need nothing beyond torch
    .venv/bin/python -m pip install -q --no-deps "torchcam==0.5.0" >/dev/null 2>&1 || echo "[dev.sh] torch-cam not installed: its agreement tests will skip" >&2
fi
cmd=${1:-test}
shift || true
case "$cmd" in
    test)  exec .venv/bin/python -m pytest "$@" ;;
    demo)  exec .venv/bin/python -m ndcam demo "$@" ;;
    bench) exec .venv/bin/python benchmarks/run_all.py "$@" ;;
    *) echo "usage: bash dev.sh {demo|test|bench} [ARGS]" >&2; exit 2 ;;
esac
