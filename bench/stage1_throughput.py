"""
Stage 1 encoding throughput (file decoding in DataLoader workers included): images/s per precision and
batch size, on simulated spectrograms.

    python bench/stage1_throughput.py [--tokenizer full|demo|PATH] [--batch_sizes 8 32] [--precisions fp32 bf16]

`full` is the released VA-VAE architecture with random weights (same cost as the real file).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.vavae import AutoencoderKL, load_vavae  # noqa: E402
from pipeline.common import autocast, pick_device, pick_precision  # noqa: E402
from pipeline.extract import ImageFiles, _collate  # noqa: E402
from pipeline.images import find_classes  # noqa: E402
from pipeline.simulate import simulate_dataset  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--tokenizer", default="full")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--num_images", type=int, default=64)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 32])
    p.add_argument("--precisions", nargs="+", default=["auto"])
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = pick_device(args.device)
    if args.tokenizer == "full":
        tok = AutoencoderKL().to(device).eval().requires_grad_(False)
    else:
        tok = load_vavae(args.tokenizer, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        simulate_dataset(tmp, max(1, args.num_images // 5), size=args.image_size)
        files = [f for fs in find_classes(tmp).values() for f in fs]
        # stage 1's preprocessing decision for a plain grayscale set (prepare_data): no colour map, no value
        # range to map, the whole image as the plot area
        prep = dict(color="auto", colormap=None, value_range=None, boxes=[None] * len(files))
        for precision in args.precisions:
            dtype = pick_precision(precision, device)
            for bs in args.batch_sizes:
                loader = DataLoader(ImageFiles(files, list(range(len(files))), (args.image_size,) * 2, "stretch", prep),
                                    batch_size=bs, num_workers=args.num_workers, collate_fn=_collate)
                t = time.perf_counter()
                n = 0
                for items in loader:
                    if items[0]["error"]:
                        raise SystemExit(f"error: {files[items[0]['index']]}: {items[0]['error']}")
                    x = torch.stack([it["x"] for it in items]).to(device)
                    with torch.inference_mode(), autocast(device, dtype):
                        tok.encode(x).mean.float().cpu()
                    n += len(items)
                rate = n / (time.perf_counter() - t)
                print(json.dumps(dict(stage=1, tokenizer=args.tokenizer, precision=str(dtype or "fp32"), batch_size=bs,
                                      images_per_s=round(rate, 2), image_size=args.image_size,
                                      device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")))


if __name__ == "__main__":
    main()
