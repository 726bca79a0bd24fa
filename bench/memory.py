"""
Training memory of LightningDiT on 32x16x16 latents: the largest batch that fits a 16 GB card
(T4/P100 class) with fp16 autocast, with and without gradient checkpointing.

    python bench/memory.py                 # computed (analytic model below), any machine
    python bench/memory.py --measure       # also measured on this CUDA GPU: peaks at batch 4/8/16 (a linear
                                           # fit) and at the computed 16 GB batch, against the computed peak

Computed model, bytes (constants fitted to peaks measured on an H200, PyTorch 2.11, at the computed batch
sizes: within 4 % for B/1 and XL/1, with and without checkpointing; bench/RESULTS.md, GPU):
  states      = 22 * params + 0.25 GiB   (fp32 weights 4 + grads 4 + AdamW m, v 8 + EMA 4, plus the fp16
                copies of the weights that autocast keeps through the step 2; cuBLAS/cuDNN workspaces)
  activations = batch * depth * tokens * hidden * 70      without checkpointing
                (what autograd keeps per block and token under fp16 autocast: residual and RMSNorm inputs,
                 fp16 copies for the matmuls, q/k/v and rotary products, SDPA output, SwiGLU's 2 x 8/3 hidden
                 wide intermediates)
              = batch * tokens * hidden * (2 * depth + 90)   with checkpointing (the fp16 block inputs, plus
                 one block's activations while it is recomputed)
  usable      = (14.75 GiB a T4 reports - 0.5 GiB CUDA context) x 0.95 allocator slack = 13.5 GiB allocated
                (not measured on a T4: the context and the slack there are estimates)
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.lightningdit import RELEASE_FLAGS, LightningDiT_models, model_arch  # noqa: E402

# what a "16 GB" T4 reports (torch: 14.75 GiB total), less the CUDA context (~0.5 GiB, not counted in
# max_memory_allocated), less 5 % for the caching allocator's reserved-but-unallocated slack
USABLE = (14.75 - 0.5) * 0.95 * 2 ** 30
MODELS = ("LightningDiT-B/1", "LightningDiT-XL/1")


def params_of(name):
    with torch.device("meta"):
        m = LightningDiT_models[name](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS)
    return sum(p.numel() for p in m.parameters())


def computed(name, checkpointing):
    depth, hidden, patch, _ = model_arch(name)
    tokens = (16 // patch) ** 2
    states = 22 * params_of(name) + 0.25 * 2 ** 30
    per_sample = tokens * hidden * ((2 * depth + 90) if checkpointing else 70 * depth)
    return dict(model=name, grad_checkpointing=checkpointing, basis="computed", states_gb=round(states / 2 ** 30, 2),
                activations_mb_per_sample=round(per_sample / 2 ** 20, 1),
                max_batch_16gb=max(0, int((USABLE - states) // per_sample)))


def peak_bytes(name, checkpointing, batch, device):
    """Peak allocated bytes of two fp16-autocast steps of stage 2's own training step (model, EMA, fused AdamW,
    grad scaler, gradient clipping), with the default training settings."""
    from dataclasses import asdict
    from pipeline.config import TrainConfig
    from pipeline.train import make_grad_scaler, make_optimizer, train_step
    torch.cuda.empty_cache()
    tcfg = asdict(TrainConfig())
    m = LightningDiT_models[name](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS).to(device)
    m.use_checkpoint = checkpointing
    ema = LightningDiT_models[name](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS).to(device)
    params = list(m.parameters())
    opt, scaler = make_optimizer(params, tcfg), make_grad_scaler(device, torch.float16)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        x1, y = torch.randn(batch, 32, 16, 16, device=device), torch.randint(10, (batch,), device=device)
        train_step(m, params, opt, scaler, x1, y, tcfg["lr"], tcfg, device, torch.float16)
    peak = torch.cuda.max_memory_allocated(device)
    del m, ema, opt, params
    return peak


def measured(name, checkpointing, batches=(4, 8, 16)):
    """Peaks at small batches (a linear fit: states + per-sample activations) and at the batch that the
    computed model gives for 16 GB, against that model's own prediction for it."""
    dev = torch.device("cuda")
    plan = computed(name, checkpointing)
    batch = plan["max_batch_16gb"]
    peaks = [peak_bytes(name, checkpointing, b, dev) for b in batches]
    slope = (peaks[-1] - peaks[0]) / (batches[-1] - batches[0])
    base = peaks[0] - slope * batches[0]
    predicted = plan["states_gb"] * 2 ** 30 + batch * plan["activations_mb_per_sample"] * 2 ** 20
    at_batch = peak_bytes(name, checkpointing, batch, dev) if batch else None
    return dict(model=name, grad_checkpointing=checkpointing, basis=f"measured on {torch.cuda.get_device_name()}",
                peaks_gb={b: round(p / 2 ** 30, 2) for b, p in zip(batches, peaks)},
                states_gb=round(base / 2 ** 30, 2), activations_mb_per_sample=round(slope / 2 ** 20, 1),
                max_batch_16gb=max(0, int((USABLE - base) // slope)),
                computed_batch=batch, peak_gb_at_computed_batch=round(at_batch / 2 ** 30, 2) if at_batch else None,
                computed_peak_gb=round(predicted / 2 ** 30, 2),
                measured_over_computed=round(at_batch / predicted, 3) if at_batch else None)


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
