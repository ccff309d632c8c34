#!/usr/bin/env bash
# One prepared GPU check for issues 14 and 15, about 8 minutes on one H100/H200 (its timeouts cap it at 11):
#   1. bench_methods on full-size random-weight LLaDA-8B, batch 1 and 8, gen 256, every preset,
#      eager vs compiled (CUDA graphs for the fixed-shape block passes) alternated, 5 timed repeats;
#   2. the GPU tests: CUDA-graph parity (tests/test_compile.py) and DyLLM's Triton kernel against its PyTorch
#      path, unit and whole generations (tests/test_dyllm.py), all marked gpu;
#   3. bench_official for Fast-dLLM dual on a shared random-weight checkpoint, when FAST_DLLM points to
#      a Fast-dLLM checkout (default: .gpu/Fast-dLLM) and the official pins (transformers==4.46.2, einops)
#      are importable: from the wheels in .gpu/wheels, installed for this step alone, when they are there.
# Writes JSON/Markdown under $OUT (default results/bench/gpu). Run from the repository root:
#   OUT=/tmp/out FAST_DLLM=/path/to/Fast-dLLM bash experiments/gpu_check.sh
# A lent GPU machine receives only the checkout: run experiments/gpu_prepare.sh here first. SMOKE=1 rehearses
# every step on the CPU at tiny sizes (a copy of what travels, the wheels for the local Python).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-results/bench/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0
"$PY" -c "from dllm_accel.paths import tiny_checkpoint as t; assert (t('llada') / 'config.json').is_file(), t('llada')" \
    || { echo "no shared fixtures beside or inside the checkout: run experiments/gpu_prepare.sh first"; exit 2; }
if [ -n "${SMOKE:-}" ]; then
    device=cpu
    methods=(--smoke)
    official=(--d-model 64 --layers 2 --heads 4 --mlp 128 --prompt 32 --gen 32 --block 8 --repeats 1)
else
    device=cuda
    methods=(--dtype bfloat16 --batch 1 8 --gen 256 --prompt 256 --repeats 5 --compile both --time-budget 300)
    official=(--d-model 4096 --layers 8 --heads 32 --mlp 12288 --prompt 256 --gen 256 --block 32 --repeats 3)
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true

# 1. ~5 minutes: the budget skips (and records) points whose warm-up says they would not fit
timeout 330 "$PY" experiments/bench_methods.py --device "$device" --models llada_8b "${methods[@]}" \
    --out-dir "$OUT" --tag llada8b_eager_vs_compiled || status=1

# 2. ~1-2 minutes: compiled/CUDA-graph block passes equal eager; DyLLM's Triton kernel on the GPU
timeout 180 "$PY" -m pytest tests/test_compile.py tests/test_dyllm.py -m gpu -q -p no:cacheprovider -rs \
    > "$OUT/tests_gpu.txt" 2>&1 || status=1

# 3. ~1 minute: ours vs official Fast-dLLM dual (and vanilla for the speed-up), LLaDA-8B-shaped layers
FAST_DLLM=${FAST_DLLM:-$([ -d .gpu/Fast-dLLM ] && echo .gpu/Fast-dLLM)}
official_path=$PYTHONPATH
if compgen -G ".gpu/wheels/*.whl" > /dev/null; then
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu/wheels/*.whl || status=1
    official_path=$site:$PYTHONPATH
fi
if [ -n "$FAST_DLLM" ]; then
    PYTHONPATH=$official_path timeout 150 "$PY" experiments/bench_official.py --fast-dllm "$FAST_DLLM" \
        --presets fast_dllm_dual "${official[@]}" --device "$device" --out "$OUT/official_fast_dllm_dual" || status=1
else
    echo "FAST_DLLM not set: bench_official skipped" > "$OUT/official_skipped.txt"
fi
exit $status
