"""
Training memory of LightningDiT on 32x16x16 latents: the largest batch that fits a 16 GB card
(T4/P100 class) with fp16 autocast, with and without gradient checkpointing.

    python bench/memory.py                 # computed (analytic model below), any machine
    python bench/memory.py --measure       # measured peaks on this CUDA GPU, extrapolated linearly

Computed model, bytes:
  states      = 20 * params   (fp32 weights 4 + grads 4 + AdamW m, v 8 + EMA 4)
  activations = batch * depth * tokens * hidden * 80      without checkpointing
                (what autograd keeps per block and token under fp16 autocast: fp32 residual and RMSNorm
                 inputs, fp16 copies for the matmuls, q/k/v and rotary products, SDPA output, SwiGLU's
                 2 x 8/3 hidden wide intermediates; counted per tensor, about 80 bytes per hidden unit)
              = batch * tokens * hidden * (4 * depth + 80)   with checkpointing (block inputs in fp32,
                 plus one block's activations while it is recomputed)
  usable      = 15.0 GiB - 0.5 GiB CUDA context and allocator slack
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.lightningdit import RELEASE_FLAGS, LightningDiT_models, model_arch  # noqa: E402

USABLE = (15.0 - 0.5) * 2 ** 30
MODELS = ("LightningDiT-B/1", "LightningDiT-XL/1")


def params_of(name):
    with torch.device("meta"):
        m = LightningDiT_models[name](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS)
    return sum(p.numel() for p in m.parameters())


def computed(name, checkpointing):
    depth, hidden, patch, _ = model_arch(name)
    tokens = (16 // patch) ** 2
    states = 20 * params_of(name)
    per_sample = tokens * hidden * ((4 * depth + 80) if checkpointing else 80 * depth)
    return dict(model=name, grad_checkpointing=checkpointing, basis="computed", states_gb=round(states / 2 ** 30, 2),
                activations_mb_per_sample=round(per_sample / 2 ** 20, 1),
                max_batch_16gb=max(0, int((USABLE - states) // per_sample)))


def measured(name, checkpointing, batches=(4, 8, 16)):
    from models.transport import training_losses
    dev = torch.device("cuda")
    peaks = []
    for b in batches:
        torch.cuda.empty_cache()
        m = LightningDiT_models[name](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS).to(dev)
        m.use_checkpoint = checkpointing
        ema = LightningDiT_models[name](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS).to(dev)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
        scaler = torch.amp.GradScaler("cuda")
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            x1, y = torch.randn(b, 32, 16, 16, device=dev), torch.randint(10, (b,), device=dev)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = training_losses(m, x1, y)["loss"].mean()
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        peaks.append(torch.cuda.max_memory_allocated())
        del m, ema, opt
    slope = (peaks[-1] - peaks[0]) / (batches[-1] - batches[0])
    base = peaks[0] - slope * batches[0]
    return dict(model=name, grad_checkpointing=checkpointing, basis=f"measured on {torch.cuda.get_device_name()}",
                peaks_gb={b: round(p / 2 ** 30, 2) for b, p in zip(batches, peaks)},
                activations_mb_per_sample=round(slope / 2 ** 20, 1),
                max_batch_16gb=max(0, int((USABLE - base) // slope)))


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--measure", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = [computed(n, c) for n in MODELS for c in (False, True)]
    if args.measure:
        rows += [measured(n, c) for n in MODELS for c in (False, True)]
    for r in rows:
        print(json.dumps(r))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
