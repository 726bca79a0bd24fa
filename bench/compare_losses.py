"""
Compare the loss curves of two stage 2 runs of the same data, seed and model that differ in one setting (e.g.
bf16 against fp16 + grad scaler): are they within noise of each other, and did either skip steps?

    python bench/compare_losses.py RUN_A RUN_B [--json FILE]

Noise is the scatter of one run's logged training loss around its own running trend (the standard deviation
of the differences between consecutive log rows, over sqrt 2). The training curves count as "within noise"
when the mean absolute difference between the runs at the same steps is at most twice that noise. The
held-out loss at fixed t (val_loss, the same latents and noise at every check) is compared as a ratio.
Log rows in which either run skipped a step (non-finite gradients) are counted, not compared.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_log(run_dir):
    """The rows of RUN/log.jsonl: training rows (with `loss`) and held-out rows (with `val_loss`), by step."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} not found: give a stage 2 run dir (--output_dir of stage2_train_dit.py)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = {r["step"]: r for r in rows if "loss" in r}
    heldout = {r["step"]: r for r in rows if "val_loss" in r}
    return train, heldout


def scatter(values):
    """Noise of a logged curve: std of consecutive differences / sqrt(2) (a slow trend cancels out)."""
    diffs = [b - a for a, b in zip(values, values[1:])]
    return statistics.pstdev(diffs) / 2 ** 0.5 if len(diffs) > 1 else float("nan")


def compare(run_a, run_b):
    (train_a, held_a), (train_b, held_b) = read_log(run_a), read_log(run_b)
    # rows where either run skipped a step compare different amounts of training; they are left out
    steps = sorted(s for s in set(train_a) & set(train_b)
                   if not train_a[s].get("skipped_steps") and not train_b[s].get("skipped_steps"))
    if len(steps) < 3:
        sys.exit(f"error: {run_a} and {run_b} share {len(steps)} logged steps without skipped steps; need 3 or more "
                 f"(same --log_every)")
    loss_a = [train_a[s]["loss"] for s in steps]
    loss_b = [train_b[s]["loss"] for s in steps]
    noise = max(scatter(loss_a), scatter(loss_b))
    mean_abs_diff = statistics.fmean(abs(a - b) for a, b in zip(loss_a, loss_b))
    held_steps = sorted(set(held_a) & set(held_b))
    result = dict(runs=[str(run_a), str(run_b)], compared_log_rows=len(steps), last_step=steps[-1],
                  final_loss=[round(loss_a[-1], 4), round(loss_b[-1], 4)],
                  mean_abs_loss_diff=round(mean_abs_diff, 4), loss_noise=round(noise, 4),
                  within_noise=bool(mean_abs_diff <= 2 * noise),
                  skipped_steps=[sum(train_a[s].get("skipped_steps", 0) for s in train_a),
                                 sum(train_b[s].get("skipped_steps", 0) for s in train_b)])
    if held_steps:
        last = held_steps[-1]
        result["heldout_val_loss_at_last_check"] = dict(step=last, values=[round(held_a[last]["val_loss"], 4),
                                                                           round(held_b[last]["val_loss"], 4)],
                                                        ratio=round(held_b[last]["val_loss"] / held_a[last]["val_loss"], 4))
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = p.parse_args()
    result = compare(args.run_a, args.run_b)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
