"""
Copies of training images: one rule for the evaluation (eval.json's memorisation_fraction), stage 2's choice
of the variation start and stage 3's redraw of copies.

The rule: a generated sample copies the training set when its distance to the nearest training sample is
below MEMORISATION_THRESHOLD times that training sample's own distance to its nearest training neighbour (the
local spacing of the real data there). A copy scores ~0, a new sample from the same distribution ~1.

The evaluation applies it to the images (64 px). Stages 2 and 3 apply it to latents on the tokenizer's own
scale (the normalised latents times the std they were normalised with): per-channel normalisation gives the
faint fine-detail channels as much weight as the coarse layout, and a variation redraws exactly that detail, so
on normalised latents a variation whose image is a copy looked new. On the tokenizer's scale the latent ratio
follows the image ratio closely (correlation 0.98-0.99 on the measured set at 128 and 256 px) but lies a
little higher at 256 px, so latents are flagged at the stricter REDRAW_RATIO: on 2,000 variations of the
measured set (starts 0.3-0.45, 128 and 256 px) every image copy had a latent ratio below 0.54
(bench/RESULTS.md, tenth session).
"""

import torch

MEMORISATION_THRESHOLD = 0.5   # the evaluation's rule on images
REDRAW_RATIO = 0.6             # the same rule on latents, with a margin for what it under-counts at 256 px


def memorisation(gen, train):
    """Per generated sample (N, ...): distance to its nearest training sample (M, ...) divided by that training
    sample's nearest-neighbour distance among the training samples. Returns (ratios (N,), nearest index (N,))."""
    g, t = gen.flatten(1), train.flatten(1)
    nearest, which = torch.cdist(g, t).min(dim=1)
    used, slot = torch.unique(which, return_inverse=True)   # only the training samples that are someone's nearest:
    d_ut = torch.cdist(t[used], t)                           # (U, M), not (M, M), for large training sets
    d_ut[torch.arange(len(used)), used] = float("inf")
    spacing = d_ut.min(dim=1).values.clamp_min(1e-8)
    return nearest / spacing[slot], which


def copy_ratios_against(train, scale):
    """A function: normalised latents (N, C, h, w) -> their memorisation() ratios (N,) against the normalised
    training latents `train` (M, C, h, w), both multiplied by `scale` (the std they were normalised with: per
    channel (C,) or one value) first, so that distances follow the image's coarse structure. The training side is
    scaled once here, not on every call (stage 3 calls it for every batch)."""
    s = torch.as_tensor(scale, dtype=torch.float32).reshape(1, -1, 1, 1)
    reference = train.float().cpu() * s
    return lambda gen: memorisation(gen.float().cpu() * s, reference)[0]


def latent_copy_ratios(gen, train, scale):
    """copy_ratios_against(train, scale) applied to `gen` once."""
    return copy_ratios_against(train, scale)(gen)


def copy_share(gen, train, scale, ratio=REDRAW_RATIO):
    """Share of `gen` that stage 3 would redraw as copies of `train` (latent_copy_ratios below `ratio`)."""
    return float((latent_copy_ratios(gen, train, scale) < ratio).double().mean())
