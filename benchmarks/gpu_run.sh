#!/usr/bin/env bash
# The GPU checks of issue 4 as one prepared run, for a machine with an accelerator and JAX installed
# (no install step: nnjax is imported from this checkout). At most ~9 minutes (each part's limit):
#   1. the GPU section: a small Transformer LM in bfloat16, tokens/s and MFU (benchmarks/lm_throughput.py);
#   2. the anchor workloads for nnjax and hand-written JAX on the accelerator (benchmarks/anchors.py);
#   2b. deep models (issue 25): the zoo GPT's compile time and program size stacked vs unrolled by depth, peak
#      temporary memory per remat policy, step time (benchmarks/deep_models.py, --size small);
#   3. the tests of the code paths that differ off CPU (the generic kernels: batch-major recurrent scans,
#      hoisted input projections, JAX's convolution VJP, reduce_window pools; bfloat16 policies) on the
#      accelerator, and tests/test_kernels.py: the CPU kernels still agree with them there.
# Every part has its own time limit, so one that hangs leaves the others their time.
#
# Run: bash benchmarks/gpu_run.sh [OUT_DIR]       (default: $OUT, else /tmp/nnjax-gpu)
#      LM_SIZE=tiny DEEP_SIZE=tiny bash benchmarks/gpu_run.sh   (a quick try of the script itself, e.g. on CPU)
# GPU_RUN_TESTS overrides the test files (space-separated).
set -u
out=${1:-${OUT:-/tmp/nnjax-gpu}}
py=${PYTHON:-python3}
case $py in */*) py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") ;; esac  # a path: made absolute
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."  # the repository root
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: none"
  "$py" -c "import jax, optax, flax; print('jax', jax.__version__, 'optax', optax.__version__, 'flax', flax.__version__); print(jax.devices())"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

timeout 200 "$py" benchmarks/lm_throughput.py --size "${LM_SIZE:-small}" --out "$out/results-gpu-lm.md" \
  >"$out/lm.log" 2>&1
echo "lm_throughput: exit $?"; tail -n 25 "$out/lm.log"

timeout 240 "$py" benchmarks/deep_models.py --size "${DEEP_SIZE:-small}" --out "$out/results-gpu-deep-models.md" \
  >"$out/deep_models.log" 2>&1
echo "deep_models: exit $?"; tail -n 25 "$out/deep_models.log"

timeout 150 "$py" benchmarks/anchors.py --only peak,tiny,mlp,cnn,lstm,ensemble --impls 'nnjax*' \
  --out "$out/results-gpu-anchors.md" >"$out/anchors.log" 2>&1
echo "anchors: exit $?"; grep -A 14 '^## targets' "$out/anchors.log" || tail -n 20 "$out/anchors.log"

# Four pytest-xdist workers, one test file each; without preallocation they share the accelerator's memory.
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 "$py" -m pytest -q -p no:cacheprovider -n 4 --dist loadfile \
  ${GPU_RUN_TESTS:-tests/test_kernels.py tests/test_recurrent.py tests/test_conv.py tests/test_pooling.py tests/test_precision.py tests/test_train.py} \
  >"$out/tests.log" 2>&1
echo "tests: exit $?"; tail -n 5 "$out/tests.log"
