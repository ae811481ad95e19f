#!/usr/bin/env bash
# The checks that need a GPU, as one short script for a lent GPU machine (never CI): the GPU kernels
# compiled for real against the oracle (tests/test_on_gpu.py, plus the interpret-mode kernel tests),
# the 2B model's train step and its MFU with the Triton and cuDNN attention, batch-1 decode of the
# weight formats, and attention memory and time vs length. Each part has its own time limit, so one
# that fails or hangs costs only its share. Results land in $OUT (default /tmp/gpu_checks): one JSON
# per benchmark, pytest's output and every part's stderr in checks.log.
#
#     OUT=/tmp/gpu bash benchmarks/gpu_checks.sh [tests] [train] [decode] [attention]   # default: all
#
# On an H200 (jax 0.11.2) the parts took: tests over 150 s (the three kernel tests pass in about a
# minute; the model-logits test did not finish inside the limit), train 60 + 67 s, decode 154 s,
# attention 46 s. All of them do not fit one 10-minute call: run tests alone, then the rest.
#
# A GPU image with JAX, Flax, Optax, Orbax and chex but without this project's other imports needs, for the
# parts here, grain, array_record, ml_collections, tensorboardX and portpicker: where it has no package index,
# bring them as wheels for its Python (`pip download --no-deps --only-binary=:all: --python-version ...`) and
# install them into a folder on PYTHONPATH before running this script.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu_checks}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/checks.log"

part() {  # part NAME SECONDS CMD...: stdout -> $out/NAME.json, stderr -> checks.log
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name: $*" | tee -a "$log"
  timeout "$limit" "$@" >"$out/$name.json" 2>>"$log"
  rc=$?
  echo "== $name: exit $rc after $(($(date +%s) - start)) s" | tee -a "$log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax, jaxlib, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
} 2>&1 | tee -a "$log"

parts="${*:-tests train decode attention}"
want() { [[ " $parts " == *" $1 "* ]]; }

if want tests; then
  start=$(date +%s)
  JAX_PLATFORMS=cuda timeout 300 python3 -m pytest -q -s -p no:cacheprovider --durations=0 tests/test_on_gpu.py \
    tests/test_attention_impls.py -k "not memory_grows" 2>&1 | tee -a "$log" | tail -25
  echo "== tests: $(($(date +%s) - start)) s" | tee -a "$log"
fi

if want train; then
  tt=(python3 benchmarks/train_throughput.py --configs 2b --dtype bfloat16 --seq 4096 --batch 4
      --max_patches 16384 --max_grids 512 --noloop --step_reps 5)
  part train_2b_gpu 150 "${tt[@]}" --attention_impl gpu
  part train_2b_cudnn 120 "${tt[@]}" --attention_impl cudnn
fi
want decode && part decode 200 python3 benchmarks/quantized_decode.py --configs 100m --reps 3 --copy_mib 2048
want attention && part attention 90 python3 benchmarks/attention.py --lengths 1024,4096,16384,32768 --heads 16 \
  --kv_heads 8 --head_dim 128 --contenders dense,xla_chunked,gpu,cudnn --dtype bfloat16 --dense_cap_mib 16384
exit 0
