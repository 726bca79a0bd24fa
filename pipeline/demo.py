"""Summary of the offline demo: real-vs-generated grid (two rows per class) and the headline numbers.

    python -m pipeline.demo --real demo_output/data --generated demo_output/generated --out demo_output
"""

import argparse
import glob
import json
import os
import shutil

import torch

from pipeline.common import read_json
from pipeline.images import IMAGE_EXTENSIONS, find_classes, load_for_tokenizer, safe_name
from pipeline.plot import labelled_grid


def real_vs_generated_grid(real_dir, generated_dir, path, per_row=8):
    """For each class: a row of real images, then a row of generated ones; each row labelled with its class and
    with 'real' or 'generated'."""
    rows, names = [], []
    record = os.path.join(generated_dir, "samples.json")
    folders = {n: c["folder"] for n, c in read_json(record)["classes"].items()} if os.path.isfile(record) else {}
    for name, files in find_classes(real_dir).items():
        gen = sorted(p for p in glob.glob(os.path.join(generated_dir, folders.get(name, safe_name(name)), "*"))
                     if p.lower().endswith(IMAGE_EXTENSIONS))[:per_row]
        real = files[:per_row]
        size = load_for_tokenizer(real[0], (128, 128))[0].shape[-2:]
        rows.append([load_for_tokenizer(p, tuple(size))[0] for p in real])
        rows.append([load_for_tokenizer(p, tuple(size))[0] for p in gen] or [torch.zeros(3, *size)])
        names += [name, name]
    labelled_grid(rows, path, names, gray=True, row_kinds=["real", "generated"] * (len(rows) // 2),
                  title="real vs generated, two rows per class")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", required=True)
    p.add_argument("--generated", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    grid = os.path.join(args.out, "grid.png")
    real_vs_generated_grid(args.real, args.generated, grid)
    shutil.copyfile(os.path.join(args.generated, "eval.json"), os.path.join(args.out, "eval.json"))
    with open(os.path.join(args.out, "eval.json")) as f:
        result = json.load(f)
    print(f"\ndemo done.\n  {grid}: real (odd rows) and generated (even rows), one pair of rows per class\n"
          f"  {os.path.join(args.out, 'eval.json')}: all metrics (README, 'Evaluation')\n"
          f"  generated_accuracy {result['generated_accuracy']:.3f} (classifier trained on real; real held-out "
          f"accuracy {result['real_accuracy']:.3f}), precision {result['precision']:.3f}, recall {result['recall']:.3f}, "
          f"FD {result['fd_classifier']:.2f}, memorised {result['memorisation_fraction']:.3f}")


if __name__ == "__main__":
    main()
