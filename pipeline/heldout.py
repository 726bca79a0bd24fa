"""
Held-out quality of a model during stage 2: how close EMA samples are to held-out real latents the model
never trained on. Stage 2 uses it to pick `checkpoints/best.pt`, to stop early and to choose the sampling
settings (guidance scale and interval) that stage 3 uses by default.

Features are small and stable on a few dozen images: per latent channel, the spatial mean and std and
the mean profile along the Doppler (height) axis pooled to 4 bins, so (N, C, h, w) -> (N, 6C). They are
projected on the principal axes of the training latents' features (whitened), where two numbers are taken:

    fd      Fréchet distance between generated and held-out features (all classes together)
    tstr    accuracy on held-out latents of a nearest-class-mean classifier fitted on generated features
            (does each class's samples carry that class's information?)

score = fd * (2 - tstr): lower is better; a model whose samples match the held-out distribution and
separate the classes scores lowest. Memorised training copies do not score well: they cover only the
training images, so the held-out spread is missed (fd up) when a class has few of them. The score picks
the checkpoint (best.pt).

The guidance is chosen by recognisability. Guidance trades spread for class-typical samples, and fd alone
always prefers weak guidance; but the samples are made to train a classifier, which needs each sample to
look like its class. So for every setting of a small grid

    recognised   accuracy of a nearest-class-mean classifier fitted on the *training* latents, applied to
                 the generated ones (how often a sample is recognised as its class; the latent-space
                 counterpart of eval.json's generated_accuracy)

and the choice is the *weakest* guidance whose samples are recognised within RECOGNISED_MARGIN of the most
recognisable setting: recognisability rises with guidance and then saturates, and guidance past that point
only costs diversity. On the quality benchmark (bench/RESULTS.md) the image classifier of the evaluation
agrees: its generated accuracy rises with guidance up to about that point on every set, and on the measured
set its tstr falls past it. (The held-out score above, used for this choice before, picked cfg 2 on a
simulated set and cfg 3 on the measured one; cfg 4 gave higher generated accuracy, recall and augmented
accuracy on both.)

The variation start (stage 3's default: each image a variation of a training image, see pipeline.generate)
is chosen last, with the chosen guidance: the largest start_t of START_GRID at which at most MAX_REDRAWN of
the check's samples are copies that stage 3 would draw again (pipeline.copies: latent ratio below
REDRAW_RATIO on the tokenizer's scale). A later start keeps more of the training image: on the quality
benchmark tstr and augmented accuracy rise with it, and so does the share of copies; stage 3 redraws those
from an earlier start (on the benchmark and the demo the evaluation then counts 0-0.5 % copies). Until the
tenth session no copy at all was allowed here (the start then was the last before the first copy, 0.15 on
the measured sets); allowing stage 3 to redraw up to a quarter moves it to 0.35-0.4 there (bench/RESULTS.md,
tenth session).
"""

import numpy as np
import torch

from pipeline.copies import copy_share
from pipeline.generate import sample_jobs

PROFILE_BINS = 4
MAX_DIMS = 32


# --------------------------------------------------------------------------------
#                                   Features
# --------------------------------------------------------------------------------

def latent_features(z):
    """(N, C, h, w) -> (N, 6C) float64: channel means, stds and Doppler profiles (4 bins)."""
    z = z.double()
    n, c, h, w = z.shape
    profile = torch.nn.functional.adaptive_avg_pool2d(z, (PROFILE_BINS, 1)).reshape(n, c * PROFILE_BINS)
    return torch.cat([z.mean(dim=(2, 3)), z.std(dim=(2, 3)), profile], dim=1)


def fit_projection(train_features):
    """(mean, projection (D, k)) whitening the top principal axes of the training features."""
    mean = train_features.mean(0)
    x = train_features - mean
    u, s, vt = torch.linalg.svd(x, full_matrices=False)
    k = int(min(MAX_DIMS, max(2, (s > s[0] * 1e-6).sum().item()), len(train_features) - 1))
    scale = s[:k] / max(1.0, (len(x) - 1) ** 0.5)
    return mean, vt[:k].T / scale.clamp_min(1e-12)


def project(features, projection):
    mean, p = projection
    return (features - mean) @ p


# --------------------------------------------------------------------------------
#                                    Scores
# --------------------------------------------------------------------------------

def frechet_distance(a, b):
    """Fréchet distance between Gaussian fits of two feature sets (N, D), (M, D)."""
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ca, cb = np.atleast_2d(ca), np.atleast_2d(cb)
    # trace of sqrt(ca cb) from the eigenvalues of sqrt(ca) cb sqrt(ca): symmetric, so stable
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root_a @ cb @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def nearest_mean_accuracy(train_x, train_y, test_x, test_y, num_classes):
    """Accuracy of a nearest-class-mean classifier; classes absent from the training side never win."""
    means = torch.stack([train_x[train_y == c].mean(0) if (train_y == c).any() else
                         torch.full_like(train_x[0], float("inf")) for c in range(num_classes)])
    pred = torch.cdist(test_x, torch.nan_to_num(means, posinf=1e12)).argmin(1)
    return float((pred == test_y).double().mean())


def heldout_score(gen, gen_labels, heldout, heldout_labels, projection, num_classes, train=None):
    """dict(score, fd, tstr) of generated latents against held-out latents (both normalised, (N, C, h, w));
    with `train` = (projected features of the training latents, their labels) also `recognised`."""
    g = project(latent_features(gen), projection)
    r = project(latent_features(heldout), projection)
    fd = frechet_distance(g, r)
    tstr = nearest_mean_accuracy(g, gen_labels.cpu(), r, heldout_labels.cpu(), num_classes)
    result = dict(score=fd * (2.0 - tstr), fd=fd, tstr=tstr)
    if train is not None:
        result["recognised"] = nearest_mean_accuracy(train[0], train[1].cpu(), g, gen_labels.cpu(), num_classes)
    return result


# --------------------------------------------------------------------------------
#                          Sample and score one model
# --------------------------------------------------------------------------------

class HeldoutSet:
    """Held-out latents, their labels, the training latents and the feature projection fitted on them."""

    def __init__(self, train_latents, train_labels, heldout_latents, heldout_labels, num_classes, scale=None):
        """Latents normalised as the model sees them; `scale`: the std they were normalised with (per channel
        (C,) or one value), so that copies are judged on the tokenizer's own scale (None: 1)."""
        self.latents = heldout_latents.cpu()
        self.scale = torch.ones(1) if scale is None else torch.as_tensor(scale, dtype=torch.float32).cpu()
        self.labels = heldout_labels.cpu()
        self.num_classes = num_classes
        self.train_by_class = [train_latents.cpu()[train_labels.cpu() == c] for c in range(num_classes)]
        features = latent_features(train_latents.cpu())
        self.projection = fit_projection(features)
        self.train = (project(features, self.projection), train_labels.cpu())   # features computed once

    def sample(self, model, sampling, per_class, seed, latent_shape, device, dtype=None, batch_size=256):
        """`per_class` latents per class with fixed seeds (variations of training latents when
        sampling["start_t"] > 0, chosen as stage 3 chooses them): (latents (N, C, h, w), labels (N,))."""
        jobs = [(c, k) for c in range(self.num_classes) for k in range(per_class)]
        out = [sample_jobs(model, jobs[i:i + batch_size], seed + 7, latent_shape, sampling, device, dtype,
                           by_class=self.train_by_class)[0].cpu() for i in range(0, len(jobs), batch_size)]
        return torch.cat(out), torch.tensor([c for c, _ in jobs])

    def score_model(self, model, sampling, per_class, seed, latent_shape, device, dtype=None):
        """Sample `per_class` latents per class with fixed seeds and score them against the held-out set."""
        gen, labels = self.sample(model, sampling, per_class, seed, latent_shape, device, dtype)
        return heldout_score(gen, labels, self.latents, self.labels, self.projection, self.num_classes,
                             train=self.train)

    def memorised_fraction(self, model, sampling, per_class, seed, latent_shape, device, dtype=None):
        """Share of the samples that stage 3 would redraw as copies of a training latent (`copy_share`), before
        any redraw."""
        gen, _ = self.sample(model, sampling, per_class, seed, latent_shape, device, dtype)
        return copy_share(gen, torch.cat(self.train_by_class), self.scale)


GUIDANCE_GRID = ((1.0, 0.0), (1.5, 0.0), (2.0, 0.0), (2.0, 0.3), (3.0, 0.0), (3.0, 0.3), (4.0, 0.0), (4.0, 0.3),
                 (5.0, 0.0), (6.0, 0.0))   # (cfg scale, interval start); cfg 1 is no guidance
RECOGNISED_MARGIN = 0.05


def guidance_strength(sampling):
    """How hard a setting pulls towards its class: the guidance excess times the share of the path it acts on."""
    return (sampling["cfg_scale"] - 1.0) * (1.0 - sampling["cfg_interval_start"])


START_GRID = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
MAX_REDRAWN = 0.25   # share of the check's samples that stage 3 may have to redraw as copies


def choose_start(memorised_fn, grid=START_GRID, limit=MAX_REDRAWN):
    """The largest variation start of `grid` whose samples are copies for at most `limit` (0.0 when every start
    is over it). `memorised_fn(start_t) -> share of copies`. The share rises with the start (a later start keeps
    more of the training image), so the grid is walked downwards from its largest start and stops at the first
    one within the limit: usually the first (the largest start was chosen in 14 of 17 benchmark runs, where the
    upward walk used before sampled all seven). Returns (start_t, [(start_t, share)...] in the order tried)."""
    tried = []
    for start in sorted(grid, reverse=True):
        share = memorised_fn(start)
        tried.append((start, share))
        if share <= limit:
            return start, tried
    return 0.0, tried


def tune_sampling(score_fn, base, grid=GUIDANCE_GRID, margin=RECOGNISED_MARGIN):
    """The weakest guidance whose samples are recognised within `margin` of the most recognisable setting
    (ties: the lower held-out score). `score_fn(sampling) -> dict(recognised, score, ...)`.
    Returns (chosen sampling dict, [(sampling, result)...])."""
    settings = [dict(base, cfg_scale=float(scale), cfg_interval_start=float(start)) for scale, start in grid]
    tried = [(sampling, score_fn(sampling)) for sampling in settings]
    top = max(result["recognised"] for _, result in tried)
    enough = [item for item in tried if item[1]["recognised"] >= top - margin]
    best = min(enough, key=lambda item: (guidance_strength(item[0]), item[1]["score"]))[0]
    return best, tried
