#!/usr/bin/env bash
# The prepared one-call GPU check, for a session lent a GPU machine: it measures the GPU figures of
# benchmarks/RESULTS.md in a single command. resnet56, 10,000 CIFAR-sized images, 5x5 grid, this
# suite against the naive DataLoader loop, and each GPU lever side by side; then the memory of GPT-2
# surfaces per --dir_mode (bench_memory.py). About 7 minutes on one H100 (not yet measured with the memory part).
#
#   bash benchmarks/gpu_check.sh            # uses python3 (PyTorch, h5py, tqdm ... installed); installs
#                                           # the checkout's package into it (pip -e, no dependencies) if missing
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# Writes bench_surface_gpu.json (and the printed table, gpu_check.log) to $OUT, or benchmarks/out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${OUT:-benchmarks/out}
mkdir -p "$DEST"
# The benchmarks import the losslandscape package: a bare machine gets the checkout's (pip -e, no
# dependencies, offline), or, where its setuptools cannot build it, the checkout on PYTHONPATH.
if ! "$PY" -c 'import losslandscape' 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  # "": the defaults (the configuration timed on this GPU); " --amp": the same in bf16 autocast. Then
  # each lever alone over the plain configuration: bigger batches suit a GPU; --points_per_call
  # batches grid points with vmap; the row's "rel. change" is what each does to the numbers.
  P="--compute_config plain"
  "$PY" benchmarks/bench_surface.py --cuda --model resnet56 --num_images 10000 --grid 5 --repeats 2 \
      --levers "" " --amp" "$P" "$P --batch_size 1024" "$P --batch_size 1024 --channels_last" \
               "$P --batch_size 1024 --channels_last --amp" "$P --batch_size 1024 --fold_bn" \
               "$P --batch_size 256 --points_per_call 4" \
      --json "$DEST/bench_surface_gpu.json"
} 2>&1 | grep -v 'grid points' | tee "$DEST/gpu_check.log"
# Memory of a GPT-2 surface on the GPU (peak allocated / model bytes) for each --dir_mode, and the
# model spread by --device_map auto (issue 29: at most 2.5 under stream and seed, 4.5 resident).
"$PY" benchmarks/bench_memory.py --cuda --device_map --sizes 124M 355M 2>&1 | grep -v 'Writing\|Loading' | tee -a "$DEST/gpu_check.log"
