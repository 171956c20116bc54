#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one run (budget: under 10 minutes on one GPU; the
# renderer's steps are compiled by torch.compile on their first calls, about 40 s on the CPU
# here, and cached on disk for the later parts):
#   synthesis: the batched renderer's crops/s on 240 px training windows (Sintel, SYNTHIA,
#     Middlebury, the motorcycle) at batches 3, 16 and 64, with its ops and syncs per crop,
#     the CUDA kernels it launches per crop, its first call's time (the compilation) and its
#     recompilations; per training step of 3 crops when rendering 1, 4 or 16 steps ahead (ms
#     per step);
#   dmenet syndof export --device cuda on the embedded source (images/s);
#   BDCS training-step samples/s in fp32 and bf16-mixed with the synthesis share, rendering 1
#     or 16 steps ahead (embedded source, and the shared Sintel sample when ../shared is there);
#   inference ms/MP in fp32, bf16 and fp16 (reference, reference channels_last, fast path).
# Usage (from the repository root, dmenet installed):  bash bench/gpu.sh [OUTDIR]
# A part that fails or runs past its time limit is reported and the next part still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench_gpu_out}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
status=0
run() {  # run SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  echo "== $name (at most ${limit} s)"
  local t0=$SECONDS
  if ! timeout "$limit" "$@"; then echo "!! $name failed or timed out" | tee -a "$out/failures.txt"; status=1; fi
  echo "== $name: $((SECONDS - t0)) s"
}
# (dynamo logs each recompilation of the renderer's compiled steps: at most 8 per step, then it
# runs them uncompiled; the count is among the results)
TORCH_LOGS=recompiles run 260 syndof python bench/bench_syndof.py --device cuda --gpu --out "$out/syndof.md" 2> >(tee "$out/syndof_log.txt" >&2)
run 60 export bash -c "rm -rf '$out/export' && /usr/bin/time -f '%e s wall for 16 images' python -m dmenet syndof export --source embedded:16 --size 480 640 --out '$out/export' --device cuda --mode reference 2>&1 | tail -2 | tee '$out/export.txt'"
sintel=../shared/data/rgbd_samples/sintel
source_args=(); [ -d "$sintel" ] && source_args=(--rgbd-source embedded "sintel:$sintel")
run 200 train python bench/bench_train.py --device cuda --configs BDCS --render-ahead 1 16 --precision 32-true bf16-mixed --steps 6 --warmup 2 "${source_args[@]}" --out "$out/train.md"
run 60 inference python bench/bench_gpu_inference.py --sizes 0.25 1 4 --repeats 5 --out "$out/inference_gpu.md"
echo; echo "==== results ===="
echo "renderer steps recompiled: $(grep -c 'Recompiling function' "$out/syndof_log.txt" 2>/dev/null) times (dynamo's limit: 8 per step)"
for f in "$out"/syndof.md "$out"/export.txt "$out"/train.md "$out"/inference_gpu.md; do echo; [ -f "$f" ] && cat "$f"; done
exit $status
