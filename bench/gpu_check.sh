#!/usr/bin/env bash
# One prepared GPU check (at most ~8 minutes on one CUDA GPU): CUDA-only tests, a short stage 2 run with
# checkpoint + resume, stage 3 sampling, and the throughput/memory benchmarks. Everything goes to
# ${OUT:-bench/out}/gpu_results.jsonl and gpu_check.log; copy the numbers into bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"; RES="$OUT/gpu_results.jsonl"
: > "$RES"
exec > >(tee -a "$LOG") 2>&1
echo "== $(date -u) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== 1. CUDA-only tests"
timeout 150 python -m pytest -q bench/gpu_tests.py

echo "== 2. stage 2 (B/1, 200 steps, checkpoint, resume to 300) and stage 3"
python - <<'PY'
from pathlib import Path
import torch
from tests.helpers import make_latent_dir
make_latent_dir(Path("bench/out/gpu_latents"), [torch.randn(32, 1, 1) for _ in range(4)], n_per_class=256,
                shape=(32, 16, 16), noise=0.5)
PY
rm -rf "$OUT/gpu_run" "$OUT/gpu_gen"
timeout 120 python stage2_train_dit.py --latent_dir "$OUT/gpu_latents" --output_dir "$OUT/gpu_run" \
    --model LightningDiT-B/1 --max_steps 200 --batch_size 128 --ckpt_every 100 --sample_every 100 --log_every 50
timeout 60 python stage2_train_dit.py --latent_dir "$OUT/gpu_latents" --output_dir "$OUT/gpu_run" \
    --model LightningDiT-B/1 --max_steps 300 --batch_size 128 --ckpt_every 100 --sample_every 100 --log_every 50
tail -n 2 "$OUT/gpu_run/log.jsonl"
timeout 60 python stage3_inference.py --checkpoint "$OUT/gpu_run" --vavae_path demo --output_dir "$OUT/gpu_gen" \
    --num_per_class 16 --batch_size 64

echo "== 3. throughput and memory"
for args in "--precision bf16 --batch_size 256" "--precision bf16 --batch_size 256 --compile" \
            "--precision fp16 --batch_size 256" "--precision bf16 --batch_size 256 --grad_checkpointing"; do
  timeout 120 python bench/stage2_throughput.py --model LightningDiT-B/1 $args --steps 20 --json "$RES"
done
timeout 90 python bench/stage2_throughput.py --model LightningDiT-XL/1 --precision bf16 --batch_size 64 --steps 10 --json "$RES"
timeout 60 python bench/memory.py --measure --json "$RES"
timeout 60 python bench/stage1_throughput.py --batch_sizes 32 --precisions bf16 fp16 --num_images 128 >> "$RES"
timeout 60 python bench/stage3_throughput.py --batch_sizes 64 --precisions bf16 >> "$RES"
echo "== done: $RES"
