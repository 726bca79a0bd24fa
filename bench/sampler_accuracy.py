"""
Sampler accuracy per step count: Euler and Heun at 4..250 steps (with and without timestep shift and
guidance) against a 1000-step Heun solution from the same noise, on a small LightningDiT trained on a
toy latent distribution (two classes, each a mixture of two modes, so the flow is curved).

    python bench/sampler_accuracy.py [--train_steps 400] [--out bench/sampler_accuracy.png]
    python bench/sampler_accuracy.py --plot_only     # redraw the PNG from the JSON beside it

Error = RMS(x - x_ref) / RMS(x_ref). "Within 1 % of Euler-250" means error <= error(Euler-250) + 0.01.
Prints a table, the cheapest such setting (by model evaluations) and writes a JSON beside the plot.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import stage2_train_dit as stage2  # noqa: E402
from models.transport import sample  # noqa: E402
from pipeline.inference import load_run  # noqa: E402
from pipeline.plot import COLORS, line_plot  # noqa: E402
from pipeline.checkpoint import latest_checkpoint  # noqa: E402
from pipeline.latents import (DATASET_FILE, read_dataset, shard_path, write_record, write_shard,  # noqa: E402
                              write_synthetic_latent_dir)

STEPS = (4, 6, 8, 12, 16, 24, 32, 50, 64, 100, 128, 250)


def toy_latents(path):
    """Two classes, each a 50/50 mixture of two modes (+-1.5 on alternating channels) with small noise."""
    a = torch.tensor([1.5, -1.5, 1.5, -1.5]).view(4, 1, 1)
    write_synthetic_latent_dir(path, [a, -a, a.flip(0), -a.flip(0)], n_per_class=64, noise=0.3)
    # classes 0/2 and 1/3 are the two modes of class A and class B: relabel to two classes
    from safetensors.torch import load_file
    data = load_file(shard_path(path, 0, 0))
    data["labels"] = data["labels"] % 2
    write_shard(shard_path(path, 0, 0), data, {"indices": list(range(len(data["labels"])))})
    manifest = read_dataset(path)
    manifest["classes"] = manifest["classes"][:2]
    write_record(path, DATASET_FILE, manifest)


def plot_results(results, out):
    """The error of each sampler setting against its step count: one colour per variant, solid Euler and dashed
    Heun, log-log."""
    series, styles, variants = {}, {}, list(dict.fromkeys(r["variant"] for r in results.values()))
    for i, vname in enumerate(variants):
        for method in ("euler", "heun"):
            rows = sorted((r for r in results.values() if r["variant"] == vname and r["method"] == method),
                          key=lambda r: r["steps"])
            series[f"{method}, {vname}"] = ([r["steps"] for r in rows], [r["error"] for r in rows])
            styles[f"{method}, {vname}"] = dict(color=COLORS[i], linestyle="-" if method == "euler" else "--")
    line_plot(series, out, title="sampler error vs a 1000-step Heun solution from the same noise",
              xlabel="sampling steps", ylabel="relative RMS error", log_y=True, log_x=True, styles=styles)


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--train_steps", type=int, default=400)
    p.add_argument("--num_samples", type=int, default=64)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "sampler_accuracy.png"))
    p.add_argument("--plot_only", action="store_true", help="redraw --out from the JSON beside it, no measuring")
    args = p.parse_args()
    if args.plot_only:
        with open(os.path.splitext(args.out)[0] + ".json") as f:
            plot_results(json.load(f)["results"], args.out)
        return
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        toy_latents(tmp / "lat")
        stage2.main(["--latent_dir", str(tmp / "lat"), "--output_dir", str(tmp / "run"), "--model",
                     "LightningDiT-Tiny/2", "--max_steps", str(args.train_steps), "--batch_size", "64",
                     "--log_every", "100", "--sample_every", "100000", "--ckpt_every", "100000", "--device", "cpu",
                     "train.lr=2e-3", "train.ema_decay=0.99"])
        model, _ = load_run(latest_checkpoint(tmp / "run"))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.num_samples, 4, 4, 4, generator=g)
    y = torch.arange(args.num_samples) % 2
    variants = {"plain": dict(), "shift 3": dict(timestep_shift=3.0), "cfg 2": dict(cfg_scale=2.0),
                "cfg 2, interval 0.3": dict(cfg_scale=2.0, cfg_interval_start=0.3)}
    results = {}
    for vname, kw in variants.items():
        ref = sample(model, z, y, 1000, method="heun", **kw)
        scale = ref.pow(2).mean().sqrt()
        for method in ("euler", "heun"):
            for n in STEPS:
                t0 = time.time()
                x = sample(model, z, y, n, method=method, **kw)
                err = float((x - ref).pow(2).mean().sqrt() / scale)
                nfe = n * (2 if method == "heun" else 1) * (2 if kw.get("cfg_scale", 1.0) != 1.0 else 1)
                results[f"{vname} | {method} {n}"] = dict(variant=vname, method=method, steps=n, nfe=nfe, error=err,
                                                          seconds=round(time.time() - t0, 3))
    plot_results(results, args.out)
    print(f"{'setting':<34} {'nfe':>5} {'error':>9}")
    for k, r in results.items():
        print(f"{k:<34} {r['nfe']:>5} {r['error']:>9.5f}")
    summary = {}
    for vname in variants:
        target = results[f"{vname} | euler 250"]["error"] + 0.01
        ok = [r for r in results.values() if r["variant"] == vname and r["error"] <= target]
        best = min(ok, key=lambda r: (r["nfe"], r["error"]))
        summary[vname] = dict(best=f"{best['method']} {best['steps']}", nfe=best["nfe"], error=best["error"],
                              euler250_error=target - 0.01, speedup_vs_euler250=results[f"{vname} | euler 250"]["nfe"] / best["nfe"])
        print(f"{vname}: cheapest within 1% of Euler-250: {best['method']} {best['steps']} steps "
              f"({best['nfe']} model evaluations, {summary[vname]['speedup_vs_euler250']:.1f}x fewer than Euler-250)")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(dict(results=results, summary=summary), f, indent=1)


if __name__ == "__main__":
    main()
