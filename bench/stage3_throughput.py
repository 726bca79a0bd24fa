"""
Stage 3 throughput: sampling (LightningDiT, guidance batched) + VA-VAE decoding, images/s per precision
and batch size, with random weights of the real architectures.

    python bench/stage3_throughput.py [--model LightningDiT-B/1] [--steps 50 | --preset fast] [--batch_sizes 8 32]
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.lightningdit import RELEASE_FLAGS, LightningDiT_models  # noqa: E402
from models.vavae import AutoencoderKL  # noqa: E402
from pipeline.common import pick_device, pick_precision  # noqa: E402
from pipeline.generate import decode_latents, sample_latents  # noqa: E402
from pipeline.inference import PRESETS  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--model", default="LightningDiT-B/1")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--method", default="euler")
    p.add_argument("--preset", choices=sorted(PRESETS), help="stage 3's --preset (sets --method and --steps)")
    p.add_argument("--cfg_scale", type=float, default=2.0)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--precisions", nargs="+", default=["auto"])
    p.add_argument("--no_decode", action="store_true")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if args.preset:
        args.method, args.steps = PRESETS[args.preset]["method"], PRESETS[args.preset]["num_steps"]
    device = pick_device(args.device)
    model = LightningDiT_models[args.model](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS)
    model = model.to(device).eval().requires_grad_(False)
    vae = None if args.no_decode else AutoencoderKL().to(device).eval().requires_grad_(False)
    sampling = dict(num_steps=args.steps, method=args.method, cfg_scale=args.cfg_scale, cfg_interval_start=0.0,
                    timestep_shift=0.0)
    for precision in args.precisions:
        dtype = pick_precision(precision, device)
        for bs in args.batch_sizes:
            labels, seeds = [i % 10 for i in range(bs)], list(range(bs))
            sample_latents(model, labels[:2], seeds[:2], [32, 16, 16], dict(sampling, num_steps=1), device, dtype)
            sync(device)
            t = time.perf_counter()
            z = sample_latents(model, labels, seeds, [32, 16, 16], sampling, device, dtype)
            sync(device)
            t_sample = time.perf_counter() - t
            t = time.perf_counter()
            if vae is not None:
                decode_latents(vae, z, device, dtype, chunk=16)
            sync(device)
            t_decode = time.perf_counter() - t
            print(json.dumps(dict(stage=3, model=args.model, preset=args.preset, steps=args.steps, method=args.method,
                                  cfg_scale=args.cfg_scale, precision=str(dtype or "fp32"), batch_size=bs,
                                  sample_images_per_s=round(bs / t_sample, 3),
                                  decode_images_per_s=round(bs / t_decode, 3) if vae is not None else None,
                                  total_images_per_s=round(bs / (t_sample + t_decode), 3),
                                  device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")))


if __name__ == "__main__":
    main()
