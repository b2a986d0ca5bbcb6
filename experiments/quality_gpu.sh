#!/usr/bin/env bash
# The GPU-size quality study on one H100/H200 machine that has no network and
# takes at most 64 MiB with each call: Fashion-MNIST (31 MB), the wheels (5 MB) and
# the Inception weights (42 MiB in float16) do not fit one call, so they go in two
# calls on the same warm machine (ignored folders stay there between calls).
#
#   bash experiments/quality_gpu.sh pack     # here: .inception/, .quality_data/, .whl/
#   device call 1, carry [".inception"]:             bash experiments/quality_gpu.sh upload
#   device call 2, carry [".whl", ".quality_data"]:  bash experiments/quality_gpu.sh run
#
# Call 2 must follow call 1 within the machine's warm time (30 s). Without the weights
# there (a fresh machine), `run` trains and evaluates with the classifier alone. Rows
# already in experiments/results/quality/gpu.jsonl are kept and not recomputed, so a
# later session's call 2 goes on where this one stopped. Results: $OUT/quality/
# (gpu.jsonl, gpu.md, the two PNGs, commands.txt) and $OUT/quality.log; copy them to
# experiments/results/quality/. Settings: STOP_AFTER_MIN (6: no run starts later),
# BUDGET_S (530: then SIGTERM, every worker checkpoints and stops), QUALITY_ARGS (extra
# experiments.compare_quality flags; later ones win, e.g. `--tiny` for a dry run),
# CLASSIFIER (pack: a trained FID classifier to carry, e.g. the CPU study's, so both
# sizes use the same features; default: trained there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/quality_gpu}
LIMIT=$((64 * 1024 * 1024))

FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte
  t10k-labels-idx1-ubyte)

tree_bytes() {  # what every call carries anyway: tracked and untracked-not-ignored files
  { git ls-files -z; git ls-files -z -o --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null \
    | awk '$2 == "total" {s += $1} END {print s + 0}'
}

carry_check() {  # name, paths...: the call's size against the limit
  local name=$1 size
  shift
  size=$(($(tree_bytes) + $(du -cb "$@" | tail -1 | cut -f1)))
  awk -v n="$name" -v p="$*" -v s="$size" \
    'BEGIN {printf "%s carries %s + the working tree: %.1f MiB of 64\n", n, p, s / 1048576}'
  [ "$size" -le "$LIMIT" ] || { echo "$name is over the device's 64 MiB limit" >&2; return 1; }
}

case "${1:-}" in
pack)
  src=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
  for f in "${FILES[@]}"; do
    [ -f "$src/$f.gz" ] || {
      echo "no $src/$f.gz: apt-get install dataset-fashion-mnist, or set FASHION_MNIST" >&2
      exit 1
    }
  done
  if [ -n "${CLASSIFIER:-}" ] && [ ! -f "$CLASSIFIER/config.json" ]; then
    echo "no $CLASSIFIER/config.json: CLASSIFIER must be a trained classifier's workdir" >&2
    exit 1
  fi
  mkdir -p .inception .quality_data/fashion-mnist
  for f in "${FILES[@]}"; do cp "$src/$f.gz" .quality_data/fashion-mnist/ || exit 1; done
  if [ -n "${CLASSIFIER:-}" ]; then
    rm -rf .quality_data/classifier && cp -r "$CLASSIFIER" .quality_data/classifier || exit 1
    rm -f .quality_data/classifier/events.out.tfevents.*
  fi
  python3 -m osgan_jax.metrics.inception_weights .inception/inception_fp16.npz || exit 1
  if ! ls .whl/ml_collections-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d .whl ml-collections==1.1.0 grain==0.2.18 \
      array-record portpicker tensorboardX==2.6.5 || exit 1
  fi
  carry_check 'call 1 (upload)' .inception || exit 1
  carry_check 'call 2 (run)' .whl .quality_data || exit 1
  ;;
upload)
  [ -f .inception/inception_fp16.npz ] \
    || { echo "no .inception/inception_fp16.npz: carry .inception (pack first)" >&2; exit 1; }
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import numpy as np; z = np.load('.inception/inception_fp16.npz'); \
print(len(z.files), 'Inception arrays,', sum(z[k].nbytes for k in z.files) >> 20, 'MiB')" \
    || exit 1
  ;;
run)
  # What this call carries, checked before anything that can fail for another reason.
  for f in "${FILES[@]}"; do
    [ -f ".quality_data/fashion-mnist/$f.gz" ] || {
      echo "no .quality_data/fashion-mnist/$f.gz: carry .quality_data (pack first)" >&2
      exit 1
    }
  done
  mkdir -p "$OUT/quality"
  source experiments/device_env.sh || exit 1
  args=(--size gpu --out "$OUT/quality" --workdir /tmp/quality
    --data-path .quality_data/fashion-mnist --stop-after "${STOP_AFTER_MIN:-6}")
  [ -d .quality_data/classifier ] && args+=(--classifier-workdir .quality_data/classifier)
  if [ -f .inception/inception_fp16.npz ]; then
    export OSGAN_JAX_INCEPTION_WEIGHTS=$PWD/.inception/inception_fp16.npz
  else
    echo "no .inception/inception_fp16.npz here (call 1 on this machine?): no Inception FID"
    args+=(--inception-samples 0)
  fi
  for f in gpu.jsonl commands.txt; do
    [ -f "experiments/results/quality/$f" ] && cp "experiments/results/quality/$f" "$OUT/quality/"
  done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  # shellcheck disable=SC2086  # QUALITY_ARGS: words on purpose
  timeout -s TERM "${BUDGET_S:-530}" python3 -m experiments.compare_quality "${args[@]}" \
    ${QUALITY_ARGS:-} 2>&1 | grep --line-buffered -v '^[IW][0-9]' | tee "$OUT/quality.log"
  code=${PIPESTATUS[0]}
  echo "compare_quality exit $code"
  if [ "$code" -ne 0 ]; then  # stopped (BUDGET_S) or failed: the table of the rows so far
    # shellcheck disable=SC2086
    python3 -m experiments.compare_quality --render --out "$OUT/quality" --size gpu \
      ${QUALITY_ARGS:-} | tail -n 30
  fi
  ;;
*)
  sed -n '2,20p' "$0"
  exit 2
  ;;
esac
