"""
Stage 2: train a class-conditional LightningDiT (rectified flow) on stage 1's latents; resumable,
on one GPU, several (torchrun --nproc_per_node=N), or the CPU.

    python stage2_train_dit.py --latent_dir latent_features --output_dir runs/exp1 [key=value ...]
"""

import argparse
import os
import time

from pipeline.cli import duration
from pipeline.common import UsageError, run_cli
from pipeline.config import load_config
from pipeline.train import RunSettings, train

# Flags that set a config key; their values are typed and range-checked by the config schema.
CONFIG_FLAGS = {
    "model": ("model.name", "registry name, e.g. LightningDiT-B/1, LightningDiT-XL/1"),
    "stats": ("data.stats", "auto | micro_doppler | imagenet"),
    "max_steps": ("train.max_steps", "fixed number of steps (default: train.epochs over the training images)"),
    "epochs": ("train.epochs", "passes over the training images when --max_steps is not given"),
    "batch_size": ("train.batch_size", "global batch size"),
    "lr": ("train.lr", None),
    "ema_decay": ("train.ema_decay", None),
    "precision": ("train.precision", "auto | fp32 | fp16 | bf16"),
    "patience": ("monitor.patience", "held-out checks without improvement before stopping (0: never)"),
    "ckpt_every": ("log.ckpt_every", None),
    "sample_every": ("log.sample_every", None),
    "log_every": ("log.log_every", None),
    "seed": ("seed", None),
}
SWITCHES = {"compile": ("train.compile", "torch.compile the model"),
            "grad_checkpointing": ("train.grad_checkpointing", "less memory, ~30%% more time")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--latent_dir", required=True, help="stage 1 output")
    p.add_argument("--output_dir", default=None, help="run dir (default runs/<timestamp>); reuse it to resume")
    p.add_argument("--config", default=None, help="YAML config (default configs/kaggle_b1.yaml)")
    for flag, (key, help_text) in CONFIG_FLAGS.items():
        p.add_argument(f"--{flag}", default=None, help=f"{help_text or ''} (config key {key})".strip())
    for flag, (key, help_text) in SWITCHES.items():
        p.add_argument(f"--{flag}", action="store_true", default=None, help=f"{help_text} (config key {key})")
    p.add_argument("--time_budget", type=duration, default=None, help="stop cleanly with a checkpoint, e.g. 11.5h")
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint in --output_dir), none, or a checkpoint file")
    p.add_argument("--init_from", default=None, help="a released ImageNet LightningDiT checkpoint or one of ours")
    p.add_argument("--vavae_path", default=None, help="tokenizer for decoded sample grids (optional)")
    p.add_argument("--device", default="auto")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow checkpoint files that need arbitrary code to unpickle (only for sources you trust)")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. train.lr=1e-4")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.output_dir is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("under torchrun, pass --output_dir so every process uses the same run dir")
        args.output_dir = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if not os.path.isdir(args.latent_dir):
        raise UsageError(f"--latent_dir {args.latent_dir}: no such folder; run stage1_extract_features.py first")
    overrides = {key: getattr(args, flag) for flag, (key, _) in {**CONFIG_FLAGS, **SWITCHES}.items()}
    overrides["train.time_budget"] = args.time_budget
    cfg = load_config(args.config, overrides, args.overrides)
    settings = RunSettings(latent_dir=args.latent_dir, output_dir=args.output_dir, resume=args.resume,
                           init_from=args.init_from, vavae_path=args.vavae_path, device=args.device,
                           trust_checkpoint=args.trust_checkpoint)
    result = train(cfg, settings)
    if result is not None and result.get("run_dir"):
        how = f"stopped early ({result['stopped']})" if result["stopped"] else "finished"
        best = (f"; stage 3 uses checkpoints/best.pt (step {result['best_step']})" if result["best_step"] is not None
                else "; stage 3 uses the last checkpoint (no held-out images)")
        print(f"{how} at step {result['step']}; run dir {result['run_dir']} ({', '.join(result['outputs'])}); "
              f"stats: {result['stats_source']}{best}")


if __name__ == "__main__":
    run_cli(main)
