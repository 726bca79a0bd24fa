#!/usr/bin/env bash
# Offline end-to-end demo on the CPU (about 4 minutes on 2 cores): simulated micro-Doppler data,
# the training-free demo tokenizer, a tiny LightningDiT, generation and evaluation -> demo_output/.
set -euo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-demo_output}
PY=${PYTHON:-$(command -v python || command -v python3)}
# Start from an empty output dir, but only ever delete a dir this demo made (it holds the marker file).
if [ -e "$OUT" ] && [ ! -f "$OUT/.microdoppler_demo_output" ]; then
    echo "error: OUT=$OUT exists and was not made by this demo; choose another OUT or remove it yourself" >&2
    exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT" && touch "$OUT/.microdoppler_demo_output"
echo "== 1/4 simulate 5 activities x 60 spectrograms (a small data set, as real measured ones are)"
$PY -m pipeline.simulate --out "$OUT/data" --per_class 60 --size 128 --seed 0
echo "== 2/4 stage 1: encode with the demo tokenizer"
$PY stage1_extract_features.py --data_dir "$OUT/data" --vavae_path demo --image_size 128 \
    --output_dir "$OUT/latents" --val_fraction 0.2 --num_workers 0
echo "== 3/4 stage 2: train LightningDiT-Tiny/2 on the CPU"
$PY stage2_train_dit.py --latent_dir "$OUT/latents" --output_dir "$OUT/run" --config configs/demo_cpu.yaml \
    --vavae_path demo
echo "== 4/4 stage 3: generate 40 per class and evaluate"
$PY stage3_inference.py --checkpoint "$OUT/run" --vavae_path demo --output_dir "$OUT/generated" \
    --num_per_class 40 --batch_size 50 --eval
$PY -m pipeline.demo --real "$OUT/data" --generated "$OUT/generated" --out "$OUT"
