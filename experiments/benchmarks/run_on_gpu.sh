#!/usr/bin/env bash
# The accelerator benchmark on a GPU machine without network, in one command:
#
#   bash experiments/benchmarks/run_on_gpu.sh [accelerator.py options]
#
# Makes a venv with --system-site-packages over the machine's Python (PYTHON, default python3: the one
# with jax+CUDA and PyTorch), installs the wheels of shared/wheels/ (made beforehand by gpu_wheels.sh
# on a machine with network) with pip --no-index, checks the imports and runs
# experiments.benchmarks.accelerator under a timeout (BENCH_TIMEOUT, default 470 s; the benchmark's
# own --time-budget is 440 s, and it rewrites its JSON after every part, so a stopped run keeps what it
# did), writing accelerator.json and accelerator.log to $OUT (default workdir/gpu_run). Exit status:
# the benchmark's, 124 when the timeout stopped it, 2 when the environment could not be set up.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-workdir/gpu_run}"
py="${PYTHON:-python3}"
wheels="${WHEELS:-shared/wheels}"
venv="${VENV:-/tmp/ib_attention_gpu_venv}"
limit="${BENCH_TIMEOUT:-470}"
mkdir -p "$out"

setup() {
  if [ ! -f "$wheels/requirements.txt" ]; then
    echo "no $wheels/requirements.txt: run experiments/benchmarks/gpu_wheels.sh first (on a machine with network)"
    return 2
  fi
  # No pip of its own (ensurepip may be missing there): the machine's pip runs in it through the .pth.
  "$py" -m venv --without-pip --system-site-packages "$venv" || return 2
  # A venv made by a venv's Python sees the base interpreter's packages, not that venv's: add them
  # after the new venv's own (which shadow them, as a --system-site-packages venv does).
  local outer
  outer=$("$py" -c 'import site; print("\n".join(site.getsitepackages()))') || return 2
  "$venv/bin/python" -c 'import pathlib, site, sys; pathlib.Path(site.getsitepackages()[0], "_outer_site.pth").write_text(sys.argv[1] + "\n")' "$outer" || return 2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --no-cache-dir \
    --find-links "$wheels" -r "$wheels/requirements.txt" || return 2
  "$venv/bin/python" -c '
import array_record, grain, jax, ml_collections, tensorflow_datasets
print("python", __import__("sys").version.split()[0], "jax", jax.__version__, "devices", jax.devices(),
      "grain", grain.__version__ if hasattr(grain, "__version__") else "?", "tfds", tensorflow_datasets.__version__)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except ImportError:
    print("torch: not installed (the PyTorch columns are skipped)")
' || return 2
}

{
  setup || exit 2
  echo "== accelerator benchmark (timeout ${limit} s)"
  PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false timeout --kill-after=15 "$limit" \
    "$venv/bin/python" -m experiments.benchmarks.accelerator --out "$out/accelerator.json" "$@"
} 2>&1 | tee "$out/accelerator.log"
exit "${PIPESTATUS[0]}"
