#!/usr/bin/env bash
# Downloads into shared/wheels/ the wheels that the GPU machine (Python 3.12, x86-64 Linux, no network;
# jax with CUDA, flax, optax, chex, orbax, numpy, pyarrow, PyTorch preinstalled) lacks to run the
# project: grain, tensorflow-datasets, ml_collections, array_record and what they need, at the versions
# of requirements.txt. Run it on a machine that reaches PyPI; run_on_gpu.sh installs them there.
#
#   bash experiments/benchmarks/gpu_wheels.sh            # PYTHON=python3.12 ... to choose the pip
#
# The whole dependency closure is resolved for CPython 3.12 manylinux x86-64 (binary wheels only), then
# the large wheels the GPU image already has (numpy, pyarrow) are dropped: the small ones stay, so pip
# there can still use them where the image's version does not satisfy a requirement. promise (needed by
# tensorflow-datasets) is published as a source archive only: its pure-Python wheel is built here.
# shared/wheels/requirements.txt lists what run_on_gpu.sh installs.
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${PYTHON:-python3}"
dest="${WHEELS:-shared/wheels}"
top="tensorflow-datasets grain array_record ml_collections importlib_resources dill"
image_has="numpy pyarrow"  # large, and on the GPU image

pins=()
for name in $top; do
  pin=$(grep -i -E "^${name}==" requirements.txt || true)
  if [ -z "$pin" ]; then
    echo "requirements.txt pins no ${name}==VERSION; pin it there first" >&2
    exit 2
  fi
  pins+=("$pin")
done
pins+=("promise==2.3")

mkdir -p "$dest"
rm -f "$dest"/*.whl
printf '%s\n' "${pins[@]}" > "$dest/requirements.txt"
"$py" -m pip wheel --quiet --no-deps --no-binary=promise -w "$dest" "promise==2.3"
"$py" -m pip download --quiet --dest "$dest" --find-links "$dest" --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform any -r "$dest/requirements.txt"
for name in $image_has; do
  rm -f "$dest/$name"-*.whl
done
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest:"
ls "$dest"
