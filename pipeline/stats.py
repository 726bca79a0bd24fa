"""
Latent channel statistics and the recommendation of which to normalise with.

Flow matching assumes unit-variance, centred inputs: the statistics set the signal-to-noise ratio
along t. We compute this data's exact channel mean/std (float64, every image) and judge the ImageNet
statistics on this data by the KL divergence between each normalised channel and N(0, 1).
"""

import os

import torch

from models.safe_load import CheckpointError, safe_torch_load

# Rule: use the ImageNet stats only if, normalised with them, this data's channels are already close to
# N(0, 1): mean KL per channel at most this (e.g. |mean| ~0.2 with std ~1.1 on every channel is ~0.03).
MAX_MEAN_KL_FOR_IMAGENET = 0.05


def channel_stats(latents):
    """Exact per-channel mean and (population) std over (N, H, W), accumulated in float64.
    latents: (N, C, H, W) -> {'mean': (1, C, 1, 1), 'std': (1, C, 1, 1)} float32."""
    x = latents.double()
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    count = 0
    for chunk in x.split(1024):  # bounded memory for large sets
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.pow(2).sum(dim=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / count
    var = (total_sq / count - mean.pow(2)).clamp_min(0)
    return {"mean": mean.float().view(1, -1, 1, 1), "std": var.sqrt().float().view(1, -1, 1, 1)}


def load_stats(path, channels=None, what="stats file"):
    """Read a latents_stats.pt ({'mean', 'std'} of shape (1, C, 1, 1)); check shape and positivity."""
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or "mean" not in obj or "std" not in obj:
        raise CheckpointError(f"{path}: not a {what} (expected a dict with 'mean' and 'std')")
    mean, std = obj["mean"].float().reshape(1, -1, 1, 1), obj["std"].float().reshape(1, -1, 1, 1)
    if mean.shape != std.shape:
        raise CheckpointError(f"{path}: 'mean' and 'std' differ in shape")
    if channels is not None and mean.shape[1] != channels:
        raise CheckpointError(f"{path}: {what} has {mean.shape[1]} channels but the latents have {channels}")
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError(f"{path}: {what} holds non-finite values or non-positive std")
    return {"mean": mean, "std": std}


def pooled_std(stats):
    """The same stats with one std for every channel, the root mean square of the channel stds: normalising
    then keeps the channels' relative scale (stage 2 `data.std_pooling=pooled`). (1, C, 1, 1) -> (1, C, 1, 1).

    Meant for the offline demo tokenizer, whose channels are the DCT coefficients of 16x16 blocks with stds
    from ~7 (block mean) down to ~0.1 (fine detail): unit variance per channel gives the fine detail as much
    loss as the block means, whose errors show as 16-pixel seams. Measured on the quality benchmark
    (bench/RESULTS.md): recall up on every set and one more target met on each of sim_hard_a and the measured
    set, but sim_hard_b's tstr down (0.73 -> 0.58 x real-only); so it is not the default."""
    std = stats["std"].pow(2).mean().sqrt().expand_as(stats["std"]).clone()
    return dict(stats, std=std)


def normalised_moments(data_stats, ref_stats):
    """Per-channel mean and std of this data after (x - ref_mean) / ref_std, and KL(N(m, s^2) || N(0, 1))."""
    m = ((data_stats["mean"] - ref_stats["mean"]) / ref_stats["std"]).flatten().double()
    s = (data_stats["std"] / ref_stats["std"]).flatten().double()
    kl = 0.5 * (s.pow(2) + m.pow(2) - 1 - torch.log(s.pow(2)))
    return m, s, kl


def recommend(data_stats, imagenet_stats):
    """Decision and numbers: {'recommendation', 'reason', 'rule', 'channels': [...], 'mean_kl', 'max_kl'}."""
    rule = (f"use the ImageNet stats only if, after normalising this data with them, the mean per-channel "
            f"KL(N(mean, std^2) || N(0, 1)) is at most {MAX_MEAN_KL_FOR_IMAGENET}; otherwise use this data's own "
            f"stats (micro_doppler). Exception: when fine-tuning a model trained with ImageNet stats "
            f"(stage 2 --init_from), keep the stats it was trained with (stage 2 --stats auto does this).")
    channels = [{"channel": c, "data_mean": float(data_stats["mean"].flatten()[c]),
                 "data_std": float(data_stats["std"].flatten()[c])} for c in range(data_stats["mean"].shape[1])]
    if imagenet_stats is None:
        return {"recommendation": "micro_doppler", "rule": rule, "channels": channels, "mean_kl": None, "max_kl": None,
                "reason": "no ImageNet stats were given (--imagenet_stats), so they could not be compared; "
                          "this data's own stats are the safe choice."}
    m, s, kl = normalised_moments(data_stats, imagenet_stats)
    for c, row in enumerate(channels):
        row.update(imagenet_norm_mean=float(m[c]), imagenet_norm_std=float(s[c]), kl=float(kl[c]))
    mean_kl, max_kl = float(kl.mean()), float(kl.max())
    worst = int(kl.argmax())
    if mean_kl <= MAX_MEAN_KL_FOR_IMAGENET:
        choice = "imagenet"
        reason = (f"normalised with the ImageNet stats this data is already close to N(0, 1) "
                  f"(mean KL {mean_kl:.3f} <= {MAX_MEAN_KL_FOR_IMAGENET}), so the ImageNet stats can be kept.")
    else:
        choice = "micro_doppler"
        reason = (f"normalised with the ImageNet stats this data is far from N(0, 1) (mean KL {mean_kl:.3f} > "
                  f"{MAX_MEAN_KL_FOR_IMAGENET}; worst channel {worst}: mean {m[worst]:.2f}, std {s[worst]:.2f}), "
                  f"so its own stats give flow matching the unit-variance inputs it assumes.")
    return {"recommendation": choice, "rule": rule, "channels": channels, "mean_kl": mean_kl, "max_kl": max_kl,
            "reason": reason}


def format_recommendation(report):
    """The text of stats_recommendation.txt: decision on the first line, then rule, table and reason."""
    lines = [f"recommendation: {report['recommendation']}", "", f"rule: {report['rule']}", ""]
    compared = report["mean_kl"] is not None
    header = f"{'ch':>3} {'data_mean':>10} {'data_std':>9}"
    if compared:
        header += f" {'in_mean':>8} {'in_std':>7} {'kl':>7}   (in_*: this data normalised with the ImageNet stats)"
    lines.append(header)
    for row in report["channels"]:
        line = f"{row['channel']:>3} {row['data_mean']:>10.4f} {row['data_std']:>9.4f}"
        if compared:
            line += f" {row['imagenet_norm_mean']:>8.3f} {row['imagenet_norm_std']:>7.3f} {row['kl']:>7.4f}"
        lines.append(line)
    if compared:
        lines.append(f"mean KL {report['mean_kl']:.4f}, max KL {report['max_kl']:.4f}")
    lines += ["", f"reason: {report['reason']}"]
    return "\n".join(lines) + "\n"


def read_recommendation(latent_dir):
    """'micro_doppler' or 'imagenet' from the first line of stats_recommendation.txt, or None."""
    path = os.path.join(latent_dir, "stats_recommendation.txt")
    if not os.path.isfile(path):
        return None
    first = open(path).readline().strip()
    choice = first.split(":", 1)[-1].strip()
    return choice if choice in ("micro_doppler", "imagenet") else None


def psnr(a, b):
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2): (B, C, H, W) -> (B,)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def ssim(a, b, window=7):
    """Mean SSIM of the channel-mean images in [-1, 1] mapped to [0, 1], uniform window: (B,)."""
    a = ((a.float().mean(1, keepdim=True) + 1) / 2)
    b = ((b.float().mean(1, keepdim=True) + 1) / 2)
    pool = lambda x: torch.nn.functional.avg_pool2d(x, window, stride=1)  # noqa: E731
    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a ** 2
    var_b = pool(b * b) - mu_b ** 2
    cov = pool(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
