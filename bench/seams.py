"""
Block seams in spectrogram images: the mean intensity jump across the edges of 16x16 blocks divided by the
mean jump between neighbouring pixels inside the blocks (1.0: no seams). The demo tokenizer codes each
16x16 block on its own, so a model that gets the block means wrong shows edges at multiples of 16 pixels.

    python bench/seams.py DIR [DIR ...] [--round_trip] [--limit 100]

Each DIR is searched recursively for .png files (grid.png, eval.png and memorisation.png are skipped);
images are read as gray and resized to 128x128. With --round_trip, each image is first encoded and decoded
by the demo tokenizer (the tokenizer's own seams, a reference for generated images).
"""

import argparse
import glob
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.vavae import DCTDemoTokenizer  # noqa: E402

BLOCK = 16
SKIP = ("grid.png", "eval.png", "memorisation.png")


def seam_ratio(x, block=BLOCK):
    """(H, W) float image -> mean |jump| across block edges / mean |jump| inside blocks, both axes."""
    dh, dv = np.abs(np.diff(x, axis=1)), np.abs(np.diff(x, axis=0))
    edge_h = np.zeros(dh.shape[1], bool)
    edge_h[block - 1::block] = True
    edge_v = np.zeros(dv.shape[0], bool)
    edge_v[block - 1::block] = True
    across = (dh[:, edge_h].mean() + dv[edge_v, :].mean()) / 2
    inside = (dh[:, ~edge_h].mean() + dv[~edge_v, :].mean()) / 2
    return across / max(inside, 1e-9)


def round_trip(x, tokenizer):
    """Gray image in [0, 255] through the demo tokenizer and back."""
    t = torch.tensor(x / 127.5 - 1, dtype=torch.float32)[None, None].expand(1, 3, *x.shape)
    y = tokenizer.decode(tokenizer.encode(t).mean)[0, 0].numpy()
    return np.clip((y + 1) * 127.5, 0, 255).round()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--round_trip", action="store_true", help="measure the demo tokenizer's round trips instead")
    p.add_argument("--limit", type=int, default=100, help="images per dir (sorted by path)")
    args = p.parse_args(argv)
    tokenizer = DCTDemoTokenizer() if args.round_trip else None
    for d in args.dirs:
        paths = sorted(f for f in glob.glob(os.path.join(d, "**", "*.png"), recursive=True)
                       if os.path.basename(f) not in SKIP)[:args.limit]
        if not paths:
            print(f"{d}: no .png files")
            continue
        ratios = []
        for path in paths:
            x = np.asarray(Image.open(path).convert("L").resize((128, 128)), dtype=np.float64)
            ratios.append(seam_ratio(round_trip(x, tokenizer) if tokenizer else x))
        print(f"{d}: {len(paths)} images, seam ratio {np.mean(ratios):.2f}" + (" (round trips)" if tokenizer else ""))


if __name__ == "__main__":
    main()
