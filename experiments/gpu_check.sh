#!/usr/bin/env bash
# One prepared GPU check for issues 14 and 15, about 8 minutes on one H100/H200 (its timeouts cap it at 11):
#   1. bench_methods on full-size random-weight LLaDA-8B, batch 1 and 8, gen 256, every preset,
#      eager vs compiled (CUDA graphs for the fixed-shape block passes) alternated, 5 timed repeats;
#   2. the GPU tests: CUDA-graph parity (tests/test_compile.py) and DyLLM's Triton kernel against its PyTorch
#      path, unit and whole generations (tests/test_dyllm.py), all marked gpu;
#   3. bench_official for Fast-dLLM dual on a shared random-weight checkpoint, when FAST_DLLM points to
#      a Fast-dLLM checkout and the Python has the official pins (transformers==4.46.2, einops).
# Writes JSON/Markdown under $OUT (default results/bench/gpu). Run from the repository root:
#   OUT=/tmp/out FAST_DLLM=/path/to/Fast-dLLM bash experiments/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-results/bench/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true

# 1. ~5 minutes: the budget skips (and records) points whose warm-up says they would not fit
timeout 330 "$PY" experiments/bench_methods.py --device cuda --dtype bfloat16 --models llada_8b \
    --batch 1 8 --gen 256 --prompt 256 --repeats 5 --compile both --time-budget 300 \
    --out-dir "$OUT" --tag llada8b_eager_vs_compiled || status=1

# 2. ~1-2 minutes: compiled/CUDA-graph block passes equal eager; DyLLM's Triton kernel on the GPU
timeout 180 "$PY" -m pytest tests/test_compile.py tests/test_dyllm.py -m gpu -q -p no:cacheprovider -rs \
    > "$OUT/tests_gpu.txt" 2>&1 || status=1

# 3. ~1 minute: ours vs official Fast-dLLM dual (and vanilla for the speed-up), LLaDA-8B-shaped layers
if [ -n "${FAST_DLLM:-}" ]; then
    timeout 150 "$PY" experiments/bench_official.py --fast-dllm "$FAST_DLLM" --presets fast_dllm_dual \
        --d-model 4096 --layers 8 --heads 32 --mlp 12288 --prompt 256 --gen 256 --block 32 --repeats 3 \
        --device cuda --out "$OUT/official_fast_dllm_dual" || status=1
else
    echo "FAST_DLLM not set: bench_official skipped" > "$OUT/official_skipped.txt"
fi
exit $status
