"""
Stage 3: generate spectrograms per class from a trained run (checkpoint file or run dir).

    python stage3_inference.py --checkpoint runs/exp1 --vavae_path pretrained/vavae-imagenet256-f16d32-dinov2.pt
"""

import argparse
import os

from pipeline.cli import (ShowDefaults, fraction, nonnegative_float, nonnegative_int, positive_int,
                          settings_defaults)
from pipeline.common import run_cli
from pipeline.inference import PRESETS, GenerateSettings, generate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                formatter_class=ShowDefaults)
    p.add_argument("--checkpoint", help="checkpoint file or run dir (default: newest run under runs/)")
    p.add_argument("--pick", choices=["best", "latest"],
                   help="with a run dir: best (held-out score, stage 2's choice) or latest checkpoint")
    p.add_argument("--vavae_path",
                   help="VA-VAE tokenizer, or 'demo' for the offline demo tokenizer")
    p.add_argument("--output_dir")
    p.add_argument("--num_per_class", type=positive_int)
    p.add_argument("--classes", nargs="+", help="class names or ids (default: all)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="fast: Heun 16 steps (within 1%% of Euler-250, see bench/RESULTS.md); quality: Euler 250")
    p.add_argument("--cfg_scale", type=nonnegative_float, help="default: the run's config")
    p.add_argument("--cfg_interval_start", type=fraction, help="guide only where t >= this")
    p.add_argument("--timestep_shift", type=nonnegative_float)
    p.add_argument("--start_t", type=fraction,
                   help="default: the run's choice (stage 2), else its config: each image is a variation of a "
                        "training image, the flow started at t = this from it; 0: from pure noise")
    p.add_argument("--copies", choices=["redraw", "keep"],
                   help="a variation that is a copy of a training image (pipeline.copies) is drawn again from an "
                        "earlier start (redraw), or kept")
    p.add_argument("--class_check", choices=["redraw", "keep"],
                   help="an image that classifiers trained on the run's training images assign to another class "
                        "(pipeline.class_check) is drawn again (redraw), or kept")
    p.add_argument("--steps", type=positive_int, help="ODE steps")
    p.add_argument("--method", choices=["euler", "heun"])
    p.add_argument("--seed", type=nonnegative_int)
    p.add_argument("--batch_size", type=positive_int)
    p.add_argument("--decode_chunk", type=positive_int, help="latents decoded at once (memory)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--original_size", action="store_true", help="resize to each class's most common original size")
    p.add_argument("--save_latents", action="store_true", help="also write latents.safetensors")
    p.add_argument("--archive", choices=["zip", "tar"], help="also pack the images into one file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace images generated with other settings (only files stage 3 wrote are removed)")
    p.add_argument("--eval", action="store_true", help="evaluate against the run's real data (writes eval.json)")
    p.add_argument("--device")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow checkpoint files that need arbitrary code to unpickle (only for sources you trust)")
    p.set_defaults(**settings_defaults(GenerateSettings))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    job = GenerateSettings(**dict(vars(args), classes=tuple(args.classes) if args.classes else None))
    result = generate(job)
    if result is None:
        return
    manifest, tokenizer = result
    s = manifest["settings"]
    total = sum(c["count"] for c in manifest["classes"].values())
    origin = f"variations of the training images from t={s['start_t']}" if s.get("start_t") else "from pure noise"
    print(f"{total} images ({len(manifest['classes'])} classes, {manifest['generated_this_run']} new) in "
          f"{args.output_dir} - {s['method']} {s['num_steps']} steps, cfg {s['cfg_scale']} (interval from "
          f"t={s['cfg_interval_start']}), {origin}, step {s['step']} ({manifest['checkpoint_picked']}); grid.png, "
          f"samples.json"
          + (f", {manifest['archive']}" if "archive" in manifest else ""))
    redrawn = manifest["redrawn_this_run"]
    if redrawn is not None:
        print(f"copies of training images drawn again from an earlier start: {sum(redrawn.values())} of "
              f"{manifest['generated_this_run']} new images (" + ", ".join(f"{n}: {v}" for n, v in redrawn.items()) + ")")
    class_redrawn, unrecognised = manifest["class_redrawn_this_run"], manifest["unrecognised_this_run"]
    if class_redrawn is not None:
        per_class = ", ".join(f"{n}: {v}/{unrecognised[n]}" for n, v in class_redrawn.items())
        print(f"class check: {sum(class_redrawn.values())} images drawn again, {sum(unrecognised.values())} still "
              f"not recognised after the last draw ({per_class})")
    if args.eval:
        from pipeline.evaluate import evaluate_run
        result = evaluate_run(manifest, args.output_dir, args.seed, tokenizer)
        print(f"eval (accuracies: mean of {result['classifier_seeds']} classifiers): generated_accuracy "
              f"{result['generated_accuracy']:.3f} (real held-out {result['real_accuracy']:.3f}), tstr "
              f"{result['tstr_accuracy']:.3f}, augmented {result['augmented_accuracy']:.3f} (real-only "
              f"{result['real_only_accuracy']:.3f}), precision {result['precision']:.3f}, recall {result['recall']:.3f}, "
              f"memorised {result['memorisation_fraction']:.3f} -> {os.path.join(args.output_dir, 'eval.json')}")


if __name__ == "__main__":
    run_cli(main)
