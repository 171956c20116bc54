#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one run (about 5 minutes on one H100):
#   synthesis crops/s and s/MP against the per-layer loop (CPU and GPU),
#   training-step samples/s for B and BDCS in fp32 and bf16-mixed with the synthesis share,
#   inference ms/MP in fp32 and bf16.
# Usage (from the repository root, dmenet installed):  bash bench/gpu.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench_gpu_out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 200 python bench/bench_syndof.py --repeats 2 --out "$out/syndof.md"
timeout 200 python bench/bench_train.py --device cuda --precision 32-true bf16-mixed --steps 10 --warmup 3 --out "$out/train.md"
timeout 100 python bench/bench_gpu_inference.py --sizes 0.25 1 4 --out "$out/inference_gpu.md"
echo; echo "==== results ===="
for f in "$out"/syndof.md "$out"/train.md "$out"/inference_gpu.md; do echo; cat "$f"; done
