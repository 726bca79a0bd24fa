"""
Sampling and decoding shared by stage 2 (sample grids) and stage 3 (generation).

Reproducibility: the noise of image k of class c is drawn from its own generator seeded by
(seed, c, k), so an image does not depend on batch size, rank count or what was generated before.

Variations (sampling["start_t"] = s > 0, stage 3's default): image k of class c starts at t = s from a
training latent of its class on the straight path, s * x1 + (1 - s) * noise, and follows the model's flow
from there to t = 1. The noise erases the detail of x1 and keeps its coarse layout, so the image is a new
spectrogram near a real one. On a few hundred training images this covers each class far better than
sampling from pure noise (s = 0), where a small model draws mostly class-typical images (bench/RESULTS.md).
Which training latent: `variation_source(seed, c, k, n)`, a per-class permutation cycled over k, so every
training image is used equally often and the choice is as stateless as the noise.

Copies (`sample_jobs` with `copy_ratios`, stage 3's default): a variation that is still a copy of a training
image by pipeline.copies' rule is drawn again from the same training image with fresh noise
(`redraw_seed(seed, c, k, attempt)`) and a start REDRAW_STEP earlier each time, down to pure noise at the end.
So stage 2 can choose a later start (more of each training image kept, better class coverage) and the few
copies it brings are replaced, and image k still depends only on (seed, c, k) and the settings.
"""

import hashlib
import math

import torch

from models.transport import sample
from pipeline.common import autocast
from pipeline.copies import REDRAW_RATIO

REDRAW_STEP = 0.05   # each redraw of a copy starts this much earlier (START_GRID's spacing)


def image_seed(seed, class_id, k):
    """A 63-bit seed for image k of class `class_id`, well separated for nearby arguments."""
    digest = hashlib.sha256(f"{seed}/{class_id}/{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def redraw_seed(seed, class_id, k, attempt, draw=0):
    """The seed of image k's copy redraw `attempt` (0: the first try) in its `draw`-th drawing (0: the first;
    stage 3 draws an image again when the class check does not recognise it, pipeline.class_check).
    Draw 0, attempt 0 is image_seed itself."""
    key = k if draw == 0 else f"{k}/draw{draw}"
    return image_seed(seed, class_id, key if attempt == 0 else f"{key}/redraw{attempt}")


def redraw_start(start_t, attempt):
    """The start of the attempt-th draw of a variation: REDRAW_STEP earlier per attempt, 0 (pure noise) last."""
    return max(0.0, round(start_t - attempt * REDRAW_STEP, 6))


def initial_noise(seeds, shape):
    """(len(seeds), *shape) float32 N(0, I) noise, one CPU generator per image seed."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def variation_source(seed, class_id, k, n):
    """Index (into the n training latents of class `class_id`) that image k of that class is a variation of:
    position k mod n of a permutation drawn from (seed, class_id), so each latent serves every n-th image."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(image_seed(seed, class_id, "sources")))
    return int(order[k % n])


def variation_sources(by_class, seed, jobs):
    """(B, C, h, w): for each (class c, image k) of `jobs`, the training latent it is a variation of;
    `by_class[c]` holds class c's normalised training latents (n_c, C, h, w)."""
    return torch.stack([by_class[c][variation_source(seed, c, k, len(by_class[c]))] for c, k in jobs])


def sample_latents(model, labels, seeds, latent_shape, sampling, device, dtype=None, sources=None):
    """Normalised latents (B, C, h, w) at t=1 for labels (B,) from per-image seeds.
    `sampling`: dict with num_steps, method, cfg_scale, cfg_interval_start, timestep_shift and optionally
    start_t (default 0: from pure noise). With start_t = s > 0, `sources` (B, C, h, w) are the normalised
    training latents the images are variations of; the path starts at s * sources + (1 - s) * noise."""
    z = initial_noise(seeds, latent_shape).to(device)
    start = float(sampling.get("start_t", 0.0))
    if start > 0:
        if sources is None:
            raise ValueError("sampling with start_t > 0 needs the training latents the images start from (sources)")
        z = start * sources.to(device=device, dtype=z.dtype) + (1.0 - start) * z
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    with autocast(device, dtype):
        return sample(model, z, y, num_steps=int(sampling["num_steps"]), method=sampling["method"],
                      cfg_scale=float(sampling["cfg_scale"]), cfg_interval_start=float(sampling["cfg_interval_start"]),
                      timestep_shift=float(sampling["timestep_shift"]), t_start=start).float()


def sample_jobs(model, jobs, seed, latent_shape, sampling, device, dtype=None, by_class=None, copy_ratios=None,
                draw=0):
    """Normalised latents (B, C, h, w) for `jobs` [(class c, image k)], and how often each was redrawn (B,).
    `draw` > 0: the images' draw-th drawing (new seeds, the same sources; see redraw_seed).
    With sampling["start_t"] > 0 the images are variations of `by_class[c]` (class c's normalised training
    latents (n_c, C, h, w)); with `copy_ratios` too (pipeline.copies.copy_ratios_against the training latents)
    every variation that copies a training latent (ratio below REDRAW_RATIO on the tokenizer's scale) is drawn
    again, REDRAW_STEP earlier each time, until it is none or starts from pure noise."""
    labels = [c for c, _ in jobs]
    start = float(sampling.get("start_t", 0.0))
    sources = variation_sources(by_class, seed, jobs) if start > 0 else None
    z = sample_latents(model, labels, [redraw_seed(seed, c, k, 0, draw) for c, k in jobs], latent_shape, sampling,
                       device, dtype, sources=sources)
    redraws = torch.zeros(len(jobs), dtype=torch.long)
    if start == 0 or copy_ratios is None:
        return z, redraws
    todo = torch.arange(len(jobs))
    for attempt in range(1, math.ceil(round(start / REDRAW_STEP, 6)) + 1):   # the last one starts at 0
        todo = todo[copy_ratios(z[todo]) < REDRAW_RATIO]
        if len(todo) == 0:
            break
        t = redraw_start(start, attempt)
        part = [jobs[i] for i in todo.tolist()]
        z[todo.to(z.device)] = sample_latents(model, [c for c, _ in part],
                                              [redraw_seed(seed, c, k, attempt, draw) for c, k in part], latent_shape,
                                              dict(sampling, start_t=t), device, dtype,
                                              sources=sources[todo] if t > 0 else None)
        redraws[todo] = attempt
    return z, redraws


def normalise(x, stats):
    """Stage 2's (x - mean) / std with the stats stored in the checkpoint."""
    return (x - stats["mean"].to(x.device)) / stats["std"].to(x.device)


def denormalise(z, stats):
    """Undo stage 2's (x - mean) / std with the stats stored in the checkpoint."""
    return z * stats["std"].to(z.device) + stats["mean"].to(z.device)


@torch.inference_mode()
def decode_latents(tokenizer, z, device, dtype=None, chunk=16):
    """Tokenizer-space latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1] on the CPU, decoded in chunks."""
    out = []
    for part in z.split(chunk):
        with autocast(device, dtype):
            out.append(tokenizer.decode(part.to(device)).float().clamp(-1, 1).cpu())
    return torch.cat(out)


def latent_maps(z):
    """Without a tokenizer: the first latent channel of each sample as a grey image in [-1, 1], upsampled x4."""
    x = z[:, :1].float()
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1
    return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest").expand(-1, 3, -1, -1)
