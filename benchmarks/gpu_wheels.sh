#!/usr/bin/env bash
# Prepares what benchmarks/gpu_suite.sh needs on a GPU host whose Python lacks packages and
# cannot reach a package index: wheels in .whl/ and the prepared bench224 data in .gpu_data/.
#
#   benchmarks/gpu_wheels.sh            # wheels + data (data needs TensorFlow here, as `make demo` does)
#   benchmarks/gpu_wheels.sh --no-data  # wheels only
#
# Both folders are git-ignored through .git/info/exclude (never committed). The host installs
# the wheels with (gpu_suite.sh does this itself when ml_collections is missing):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/fognet_site .whl/*.whl && export PYTHONPATH=/tmp/fognet_site
#
# Wheels: the target is CPython 3.12 on x86-64 Linux (the GPU image's python3; PYVER=3.11
# etc. for another). The image already has jax, flax, optax, orbax, einops, torch, transformers,
# numpy, protobuf, pyarrow, psutil, requests, tqdm, wrapt, etils, fsspec, zipp, PyYAML, six,
# regex, pillow, tensorboard. Missing, with the versions this project is tested with:
#   ml_collections                 configs (needed by every benchmark)
#   tensorflow-datasets and its    the input pipeline of the end-to-end run
#   missing dependencies
#   grain, cloudpickle, portpicker the input pipeline's loader
# `promise` has no wheel on PyPI (sdist only): it is built here into a pure-Python wheel.
# TensorFlow itself (~250 MB+) does not fit the 64 MiB a device call may carry: see
# gpu_suite.sh for what the end-to-end part then needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYVER=${PYVER:-3.12}
WITH_DATA=1
[[ "${1:-}" == "--no-data" ]] && WITH_DATA=0

for d in /.whl/ /.gpu_data/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
mkdir -p .whl

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
WHEELS=(
  ml_collections==1.1.0
  tensorflow-datasets==4.9.10
  array_record==0.8.6
  dm-tree==0.1.10
  immutabledict==4.3.1
  simple-parsing==0.1.9
  docstring-parser==0.18.0
  tensorflow-metadata==1.21.0
  googleapis-common-protos==1.76.0
  termcolor==3.3.0
  toml==0.10.2
  importlib_resources==7.1.0
  grain==0.2.18
  cloudpickle==3.1.3
  portpicker==1.6.0
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
"$PY" -m pip wheel -q --no-deps -w .whl promise==2.3
ls -la .whl
du -sh .whl

if [[ $WITH_DATA == 1 ]]; then
  # bench224 (224x224, 16 frames, 56 train / 56 test clips). Only the ArrayRecord copy and the
  # metadata travel: the input pipeline reads nothing else (about 12 MB).
  rm -rf .gpu_data/build
  TF_CPP_MIN_LOG_LEVEL=2 "$PY" -m tfds_fogact.common synthetic_fog_act/bench224 \
      --data_dir=.gpu_data/build
  rm -rf .gpu_data/tfds && mkdir -p .gpu_data
  mv .gpu_data/build .gpu_data/tfds
  find .gpu_data/tfds -name '*.tfrecord-*' -delete
  rm -rf .gpu_data/tfds/downloads
  du -sh .gpu_data
fi
