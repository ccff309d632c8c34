#!/usr/bin/env bash
# Gathers, here, what gpu_check.sh needs on a lent GPU machine, which receives the checkout alone (64 MiB in
# all, no network; its image has torch, triton and transformers 5 but not this project's evaluation stack):
#   shared/fixtures/   the tiny checkpoints and cases the GPU tests load (dllm_accel.paths finds a shared/
#                      inside the checkout when none is beside it; data/ and specs/ stay behind);
#   .gpu/Fast-dLLM/    the official Fast-dLLM llada/ code that step 3 imports;
#   .gpu/wheels/       the official pins for Python 3.12 (transformers 4.46.2 and the two it needs that the
#                      image has too new), installed there into a folder of their own for step 3 only.
# Both folders are git-ignored. Then, with the device tool:
#   run(command="OUT=$OUT/gpu bash experiments/gpu_check.sh", carry=["shared", ".gpu"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
FAST_DLLM=${FAST_DLLM:-../official/Fast-dLLM}
PY=${PYTHON:-python3}
WHEELS_FOR=${WHEELS_FOR:-3.12}  # the GPU image's Python (device KINDS.md); the local one for a SMOKE=1 rehearsal

mkdir -p shared .gpu/Fast-dLLM .gpu/wheels
cp -r "$SHARED/fixtures" shared/
cp -r "$FAST_DLLM/llada" .gpu/Fast-dLLM/
# the commit, for bench_official's report (the copy is no git checkout)
cat "$FAST_DLLM/.official_commit" 2>/dev/null > .gpu/Fast-dLLM/.official_commit \
    || git -C "$FAST_DLLM" rev-parse HEAD > .gpu/Fast-dLLM/.official_commit
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$WHEELS_FOR" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels transformers==4.46.2 tokenizers==0.20.3 huggingface_hub==0.26.5
tracked=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
extra=$(du -cb shared .gpu | tail -1 | cut -f1)
echo "what travels: $(( (tracked + extra) / 1048576 )) MiB of the 64 allowed"
