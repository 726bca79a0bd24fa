"""
Stage 2 training throughput: images/s, step time split into data / forward / backward / optimizer+EMA,
the overhead of the loop around them, peak memory, and model FLOP utilisation (model FLOPs per image
from the config, divided by this device's measured dense matmul rate in the same precision).

    python bench/stage2_throughput.py --model LightningDiT-B/1 --batch_size 32 --precision bf16 [--compile]
        [--grad_checkpointing] [--reference_repo PATH [--reference_compile]]

--reference_repo: a checkout of hustvl/LightningDiT (with timm and einops installed; bench/prepare_gpu_carry.sh
packs its model files): its training step is timed side by side in a subprocess, same model configuration,
batch and precision (autocast forward, loss, backward, clip, AdamW, EMA), eager or, with --reference_compile,
with its own torch.compile decorators. Both without gradient checkpointing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.lightningdit import RELEASE_FLAGS, LightningDiT_models, model_arch  # noqa: E402
from pipeline.common import pick_device, pick_precision  # noqa: E402
from pipeline.train import (batch_indices, ema_decay_at, ema_update, lr_at, make_grad_scaler,  # noqa: E402
                            make_optimizer, train_step)


def train_flops_per_image(name, input_size=16, channels=32):
    """Forward+backward FLOPs (3x forward) of one image: matmuls of every token plus attention."""
    depth, d, p, _ = model_arch(name)
    n = (input_size // p) ** 2
    hidden = int(2 / 3 * 4 * d)
    per_token = 2 * (3 * d * d + d * d + 2 * d * hidden + hidden * d)       # qkv, proj, w12, w3
    attention = 2 * 2 * n * n * d                                            # q k^T and attn v
    embed = 2 * n * (channels * p * p * d) * 2                              # patch embed + final linear
    forward = depth * (n * per_token + attention) + embed
    return 3 * forward


def matmul_rate(device, dtype, size=None, repeats=10):
    """Dense matmul FLOP/s measured here, in `dtype` (fp32 when None)."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    b = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - t)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args):
    device = pick_device(args.device)
    dtype = pick_precision(args.precision, device)
    torch.manual_seed(0)
    model = LightningDiT_models[args.model](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS).to(device)
    model.use_checkpoint = args.grad_checkpointing
    ema = LightningDiT_models[args.model](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS).to(device)
    ema.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    tcfg = dict(lr=2e-4, beta1=0.9, beta2=0.95, weight_decay=0.0, grad_clip=1.0, cos_loss_weight=1.0,
                warmup_steps=0, ema_decay=0.9999)
    opt = make_optimizer(params, tcfg)
    scaler = make_grad_scaler(device, dtype)
    fwd = torch.compile(model) if args.compile else model
    latents = torch.randn(args.num_latents, 32, 16, 16, device=device)
    labels = torch.randint(10, (args.num_latents,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(i, timed):
        """One training step as stage 2's loop runs it (the same train_step); with `timed`, synchronised time
        marks after the data, the optimizer step and the EMA update."""
        marks = [time.perf_counter()]

        def lap():
            if timed:
                sync(device)
                marks.append(time.perf_counter())

        idx = batch_indices(0, i, 0, len(latents), args.batch_size).to(device, non_blocking=True)
        x1, y = latents[idx], labels[idx]
        lap()
        train_step(fwd, params, opt, scaler, x1, y, lr_at(i, tcfg), tcfg, device, dtype)
        lap()
        ema_update(ema, model, ema_decay_at(i, tcfg["ema_decay"]))
        lap()
        return marks

    for i in range(args.warmup):
        step(i, False)
    sync(device)
    # 1) phases, with a sync between them
    phases = torch.zeros(3)
    for i in range(args.steps):
        m = step(i, True)
        phases += torch.tensor([m[1] - m[0], m[2] - m[1], m[3] - m[2]])
    phases /= args.steps
    # 2) the whole step as the training loop runs it: no syncs inside
    sync(device)
    t = time.perf_counter()
    for i in range(args.steps):
        step(i, False)
    sync(device)
    step_time = (time.perf_counter() - t) / args.steps
    images_per_s = args.batch_size / step_time
    rate = matmul_rate(device, dtype)
    flops = train_flops_per_image(args.model)
    core = float(phases[1] + phases[2])
    result = dict(model=args.model, batch_size=args.batch_size, precision=str(dtype or "fp32"), compile=args.compile,
                  grad_checkpointing=args.grad_checkpointing, device=_device_name(device),
                  images_per_s=round(images_per_s, 2), step_ms=round(1000 * step_time, 2),
                  phase_ms=dict(zip(("data", "forward_backward_optimizer", "ema"),
                                    [round(1000 * float(v), 2) for v in phases])),
                  loop_overhead_fraction=round(max(0.0, float(phases[0]) / float(phases.sum())), 4),
                  train_gflops_per_image=round(flops / 1e9, 2), matmul_tflops=round(rate / 1e12, 3),
                  mfu=round(flops * images_per_s / rate, 4),
                  peak_mem_gb=round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None)
    result["our_model_step_ms"] = round(1000 * core, 2)
    return result


REFERENCE_SNIPPET = r"""
import json, sys, time, torch
from models.lightningdit import LightningDiT_models
cfg = json.loads(sys.argv[1])
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["precision"])
torch.manual_seed(0)
def make():
    return LightningDiT_models[cfg["model"]](input_size=16, in_channels=32, num_classes=10, use_qknorm=False,
        use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False).to(dev)
m, ema = make(), make().requires_grad_(False)
opt = torch.optim.AdamW(m.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0)
x1 = torch.randn(cfg["batch_size"], 32, 16, 16, device=dev); y = torch.randint(10, (cfg["batch_size"],), device=dev)
def step():
    x0 = torch.randn_like(x1); t = torch.sigmoid(torch.randn(len(x1), device=dev)); tb = t.view(-1, 1, 1, 1)
    with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        v = m(tb * x1 + (1 - tb) * x0, t, y)
    u = x1 - x0; v = v.float()
    loss = ((v - u) ** 2).mean() + (1 - torch.nn.functional.cosine_similarity(v, u, dim=1)).mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    with torch.no_grad():   # the reference's update_ema: one parameter at a time
        for pe, p in zip(ema.parameters(), m.parameters()):
            pe.mul_(0.9999).add_(p.data, alpha=1e-4)
def sync():
    if dev.type == "cuda": torch.cuda.synchronize()
for _ in range(cfg["warmup"]): step()
sync(); t = time.perf_counter()
for _ in range(cfg["steps"]): step()
sync(); print(json.dumps({"step_ms": 1000 * (time.perf_counter() - t) / cfg["steps"]}))
"""


def reference_step(args, dtype):
    """Time the reference model's training step as its train.py runs it under `accelerate --mixed_precision`:
    autocast forward, cosine + MSE loss, backward, clip, AdamW, per-parameter EMA. Its own @torch.compile
    decorators run with --reference_compile and are disabled (eager) without it."""
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    cfg = json.dumps(dict(model=args.model, batch_size=args.batch_size, warmup=args.warmup, steps=args.steps,
                          precision=precision))
    paths = [args.reference_repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(os.path.abspath(p) for p in paths))   # it runs in the repo
    if not args.reference_compile:
        env["TORCHDYNAMO_DISABLE"] = "1"
    r = subprocess.run([sys.executable, "-c", REFERENCE_SNIPPET, cfg], cwd=args.reference_repo, env=env,
                       capture_output=True, text=True)
    if r.returncode:   # ours is still reported; the reason goes with it
        print(f"reference run failed: {r.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])["step_ms"]


def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--model", default="LightningDiT-B/1", choices=sorted(LightningDiT_models))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--grad_checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--num_latents", type=int, default=2048)
    p.add_argument("--device", default="auto")
    p.add_argument("--reference_repo", default=None)
    p.add_argument("--reference_compile", action="store_true",
                   help="keep the reference's own @torch.compile decorators (as it trains) instead of eager")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --reference_repo: alternate ours/reference this many times and compare medians")
    args = p.parse_args()
    runs, reference = [], []
    for _ in range(args.rounds if args.reference_repo else 1):
        runs.append(run(args))
        if args.reference_repo:
            reference.append(reference_step(args, pick_precision(args.precision, pick_device(args.device))))
    result = sorted(runs, key=lambda r: r["our_model_step_ms"])[len(runs) // 2]   # the median round
    if None in reference:
        result["reference"] = "failed (its error is printed above)"
    elif reference:
        ours = [r["our_model_step_ms"] for r in runs]
        result["reference"] = dict(step_ms_per_round=[round(v, 1) for v in reference],
                                   our_step_ms_per_round=ours, what="autocast forward, loss, backward, clip, AdamW, EMA; "
                                   + ("its own torch.compile decorators" if args.reference_compile else "eager"))
        result["speedup_vs_reference"] = round(statistics.median(reference) / statistics.median(ours), 3)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
