#!/usr/bin/env bash
# The GPU checks of this wave in one call (sized for at most ~8 minutes on one H100/H200):
#   1. python -m experiments.loop_throughput --real: the loop's ceiling from prepared data and a
#      folder, and DCGAN 64 (d=128, batch 128) one-/two-stage alone vs through main;
#   2. gradcheck's verdict and its default-precision report on the GPU (TF32).
# Usage (repo root, missing packages carried as wheels in .whl/):
#   OUT=/tmp/out bash experiments/device_check.sh
# Results: $OUT/loop_throughput.json, $OUT/loop.log, $OUT/gradcheck.jsonl, $OUT/gpu.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
source experiments/device_env.sh || exit 1
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, grain, ml_collections, tensorboardX; print('jax', jax.__version__, jax.devices())" \
  | tee -a "$OUT/gpu.txt" || exit 1

timeout 60 bash -c 'for loss in non_saturating; do
  python3 -m osgan_jax.gradcheck --loss $loss --disc conv; done' > "$OUT/gradcheck.jsonl" 2>"$OUT/gradcheck.err"
echo "gradcheck exit $? ($(wc -l < "$OUT/gradcheck.jsonl") lines)"

# LOOP_ARGS: extra flags (later ones win), e.g. tiny sizes for a dry run on a CPU.
timeout 420 python3 -m experiments.loop_throughput --real --real_steps 1000 --rounds 15 \
  --out "$OUT" --work /tmp/loop_work ${LOOP_ARGS:-} 2>&1 | grep -v '^[IW][0-9]' | tee "$OUT/loop.log" | tail -25
echo "--- gradcheck"; cut -c1-400 "$OUT/gradcheck.jsonl"
