"""
Stage 2: train a class-conditional LightningDiT (rectified flow) on stage 1's latents; resumable,
on one GPU, several (torchrun --nproc_per_node=N), or the CPU.

    python stage2_train_dit.py --latent_dir latent_features --output_dir runs/exp1 [key=value ...]
"""

import argparse
import os
import time

from pipeline.cli import duration, nonnegative_int, positive_int
from pipeline.common import UsageError, run_cli
from pipeline.config import load_config
from pipeline.train import train


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--latent_dir", required=True, help="stage 1 output")
    p.add_argument("--output_dir", default=None, help="run dir (default runs/<timestamp>); reuse it to resume")
    p.add_argument("--config", default=None, help="YAML config (default configs/kaggle_b1.yaml)")
    p.add_argument("--model", default=None, help="registry name, e.g. LightningDiT-B/1, LightningDiT-XL/1")
    p.add_argument("--stats", choices=["auto", "micro_doppler", "imagenet"], default=None)
    p.add_argument("--max_steps", type=positive_int, default=None)
    p.add_argument("--batch_size", type=positive_int, default=None, help="global batch size")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ema_decay", type=float, default=None)
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--grad_checkpointing", action="store_true", default=None, help="less memory, ~30%% more time")
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint in --output_dir), none, or a checkpoint file")
    p.add_argument("--init_from", default=None, help="a released ImageNet LightningDiT checkpoint or one of ours")
    p.add_argument("--time_budget", type=duration, default=None, help="stop cleanly with a checkpoint, e.g. 11.5h")
    p.add_argument("--ckpt_every", type=positive_int, default=None)
    p.add_argument("--sample_every", type=positive_int, default=None)
    p.add_argument("--log_every", type=positive_int, default=None)
    p.add_argument("--vavae_path", default=None, help="tokenizer for decoded sample grids (optional)")
    p.add_argument("--seed", type=nonnegative_int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow checkpoint files that need arbitrary code to unpickle (only for sources you trust)")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. train.lr=1e-4")
    args = p.parse_args(argv)
    for name in ("lr", "ema_decay"):
        value = getattr(args, name)
        if value is not None and not (0 < value < 1):
            p.error(f"argument --{name}: expected a number in (0, 1), got {value}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.output_dir is None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError("under torchrun, pass --output_dir so every process uses the same run dir")
        args.output_dir = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if not os.path.isdir(args.latent_dir):
        raise UsageError(f"--latent_dir {args.latent_dir}: no such folder; run stage1_extract_features.py first")
    overrides = {"model.name": args.model, "data.stats": args.stats, "train.max_steps": args.max_steps,
                 "train.batch_size": args.batch_size, "train.lr": args.lr, "train.ema_decay": args.ema_decay,
                 "train.precision": args.precision, "train.compile": args.compile,
                 "train.grad_checkpointing": args.grad_checkpointing, "train.time_budget": args.time_budget,
                 "log.ckpt_every": args.ckpt_every, "log.sample_every": args.sample_every,
                 "log.log_every": args.log_every, "seed": args.seed}
    cfg = load_config(args.config, overrides, args.overrides)
    result = train(cfg, args)
    if result is not None and result.get("run_dir"):
        how = f"stopped early ({result['stopped']})" if result["stopped"] else "finished"
        print(f"{how} at step {result['step']}; run dir {result['run_dir']} (config.yaml, checkpoints/, log.jsonl, "
              f"loss.png, samples/); stats: {result['stats_source']}")


if __name__ == "__main__":
    run_cli(main)
