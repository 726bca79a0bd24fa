"""
Stage 1's choice of the image size (`--image_size auto`, the default): the smallest of the images' own size,
3/4 of the tokenizer's usual 256 px (192) and 256 px at which the tokenizer keeps their class content.

The tokenizer keeps 32 values per 16x16 patch at any size, so enlarging small images keeps more of their detail,
and stage 2 pays for it with 4x the latent tokens per doubling. Which way is better depends on the data (quality
benchmark, bench/RESULTS.md, twelfth to fourteenth sessions; demo tokenizer, 128 px spectrograms):
- on two measured sets the evaluation recognised the round trips of held-out images 0.66 / 0.72 of the time at
  128 px and 0.86 / 0.87 at 256 px (the originals 0.87 / 0.89); stage 3's images trained a classifier to
  0.80 / 0.83 of real-data accuracy at 128 px, 0.83 / 0.88 at 192 px and 0.95 / 0.88 at 256 px, where a measured
  set took 9-10 minutes at 192 px and 18-22 at 256 px on 2 CPU cores (Tiny/2: 36 latent tokens against 64);
- on two smooth simulated sets the round trips lost nothing at 128 px, and at 256 px the same small model made
  worse images: adding them to the real images no longer helped on either, and on one tstr fell from 0.99 to
  0.74 of real-data accuracy.
So the choice is measured on the data (all of stage 1's images, held-out ones included: nothing trained here is
used after this decision): classifiers (pipeline.evaluate's) trained on part of the real images judge the
tokenizer's round trips of the others at each candidate size (FOLDS-fold, so that every probed image is judged),
each seen the way the evaluation reads a generated image (read_back_view). The smallest size whose round trips are
recognised at most LOSS_MARGIN less often than the 256 px ones is taken. Measured with these settings, stage 1
--seed 0 to 3 (the folds and the classifiers follow it): at 128 px the simulated sets lose -0.01 to 0.03 against
256 px, the measured ones 0.08 to 0.16; at 192 px the measured ones lose -0.01 to 0.02 (seeds 0 and 1;
bench/RESULTS.md, thirteenth and fourteenth sessions). Four sets are few, and the differences are noisy (single
30 % splits instead of the folds moved them by up to 0.09), so the margin sits between the two groups. The way of
seeing matters too: through a bilinear 64 px resize instead of the evaluation's bicubic one, one measured set's
difference fell to 0.04.

The round trips are necessary, not sufficient: at 160 px they lost only 0.01-0.06 on the measured sets, yet
stage 3's images there trained a classifier to 0.65 / 0.60 of real-data accuracy, worse than at 128 px. So no
size between the images' own and 192 px is offered (size_candidates).
"""

import torch

from pipeline.class_check import fit_class_check
from pipeline.common import autocast
from pipeline.evaluate import EVAL_SIZE, predict, read_back_view

DEFAULT_SIZE = 256                  # the released VA-VAE's training size
LOSS_MARGIN = 0.05                  # accuracy a size may lose against DEFAULT_SIZE and still be chosen
FOLDS = 3                           # every probed image is judged once, by classifiers trained on the other folds
PROBE_PER_CLASS = 150               # images per class probed at most (bounds the cost on large sets)
PROBE_SEEDS = (200, 201)            # classifier seeds per fold (not the evaluation's nor the class check's)
MIN_PER_CLASS = 15                  # fewer readable images in a class: too noisy to measure (10 per class flipped
                                    # a 64 px set's choice with the seed)


def whole_size(largest, downsample):
    """The smallest square --image_size that keeps images of side `largest` px whole and gives an even number
    of latents per side (so that patch-2 models such as demo_cpu.yaml's Tiny/2 can cut them): a multiple of
    2 x downsample, at least 2x2 latents."""
    step = 2 * downsample
    return max(step, -(-largest // step) * step)


def enlarged(largest, target, downsample):
    """Whether every image (longest side `largest` px, None when unknown) is enlarged to at least 1.5x at `target`
    px, with a smaller size (whole_size) that keeps them whole: when a size is worth choosing, or warning about."""
    return largest is not None and largest * 1.5 <= target and whole_size(largest, downsample) < target


def size_candidates(largest, downsample, default=DEFAULT_SIZE):
    """Sizes worth comparing, ascending: [default] alone unless every image (longest side `largest`, None when
    unknown) would be enlarged to at least 1.5x; then whole_size, 3/4 of default (rounded to a multiple of
    2 x downsample) when that lies between them, and default (e.g. 128 px images: [128, 192, 256]). No size
    between whole_size and 3/4 of default: 160 px passed the round trips but failed the samples (module docstring)."""
    if not enlarged(largest, default, downsample):
        return [default]
    own, step = whole_size(largest, downsample), 2 * downsample
    middle = round(default * 3 / 4 / step) * step
    return [own] + ([middle] if own < middle < default else []) + [default]


def pick_size(accuracies, margin=LOSS_MARGIN):
    """{size: round-trip accuracy} -> the smallest size that loses at most `margin` against the largest."""
    top = max(accuracies)
    return min(s for s, acc in accuracies.items() if acc >= accuracies[top] - margin)


def probe_folds(labels, seed):
    """Fold (0..FOLDS-1) of every image, -1 for one left out: per class, up to PROBE_PER_CLASS images in a
    seeded order are dealt round the folds."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    folds = torch.full((len(labels),), -1, dtype=torch.long)
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)][:PROBE_PER_CLASS]
        folds[idx] = torch.arange(len(idx)) % FOLDS
    return folds


@torch.no_grad()
def round_trip_views(load, indices, size, tokenizer, device, dtype, gray, chunk=16):
    """The tokenizer's round trips of images `indices` at `size`, as the evaluation reads them: (N, 3, 64, 64).
    load(i, (H, W)) -> (3, H, W) in [-1, 1]."""
    views = []
    for start in range(0, len(indices), chunk):
        x = torch.stack([load(i, (size, size)) for i in indices[start:start + chunk]]).to(device)
        with autocast(device, dtype):
            rec = tokenizer.decode(tokenizer.encode(x).mean)
        views.append(read_back_view(rec.float().cpu(), gray))
    return torch.cat(views)


def measure_sizes(load, labels, num_classes, sizes, tokenizer, device, dtype, gray, seed=0):
    """How often classifiers trained on real images recognise other real images ('real') and their round trips
    at each size: FOLDS-fold, every probed image judged once per seed in PROBE_SEEDS, accuracies averaged over
    the seeds. Returns (dict, number of images judged), or (None, count) when a class has fewer than
    MIN_PER_CLASS readable images (or there is one class). load(i, (H, W)) -> image i as (3, H, W) in [-1, 1]; labels: a class index
    per image."""
    folds = probe_folds(labels, seed)
    views = {}
    for i in torch.nonzero(folds >= 0).flatten().tolist():
        try:
            views[i] = (load(i, EVAL_SIZE) + 1) / 2
        except Exception:  # noqa: BLE001 - an unreadable file is left out here as it is skipped at encoding
            folds[i] = -1
    judged = sorted(views)                                       # the probed images, in file order
    y = torch.tensor([labels[i] for i in judged], dtype=torch.long)
    if num_classes < 2 or min(int((y == c).sum()) for c in range(num_classes)) < MIN_PER_CLASS:
        return None, len(judged)
    real, fold = torch.stack([views[i] for i in judged]), folds[judged]
    seen = {"real": real}
    for s in sizes:
        seen[s] = round_trip_views(load, judged, s, tokenizer, device, dtype, gray)
    correct = {k: 0 for k in seen}
    for f in range(FOLDS):
        fit, test = fold != f, fold == f
        for clf in fit_class_check(real[fit], y[fit], num_classes, device, PROBE_SEEDS):
            for k, v in seen.items():
                correct[k] += int((predict(clf, v[test])[0] == y[test]).sum())
    return {k: c / (len(judged) * len(PROBE_SEEDS)) for k, c in correct.items()}, len(judged)


def choose_image_size(load, labels, num_classes, largest, tokenizer, device, dtype, gray, seed=0):
    """--image_size auto: (size, record for dataset.json). `largest`: the largest side that is resized, in px
    (the long side; with --resize center_crop the short one, which the crop keeps)."""
    sizes = size_candidates(largest, tokenizer.downsample_factor)
    record = dict(mode="auto", candidates=sizes, margin=LOSS_MARGIN)
    if len(sizes) == 1:
        why = "no readable image" if largest is None else f"the largest image is {largest} px, over 2/3 of {sizes[0]}"
        return sizes[0], dict(record, chosen=sizes[0], reason=f"{why}: no smaller size to compare")
    result, judged = measure_sizes(load, labels, num_classes, sizes, tokenizer, device, dtype, gray, seed)
    record["images_judged"] = judged
    if result is None:
        why = "one class only" if num_classes < 2 else f"a class has fewer than {MIN_PER_CLASS} readable images"
        return sizes[-1], dict(record, chosen=sizes[-1], measured=False,
                               reason=f"{why}: too few to compare {sizes[0]} to {sizes[-1]} px reliably, so "
                                      f"the tokenizer's usual size (--image_size {sizes[0]} would give "
                                      f"{(sizes[-1] // sizes[0]) ** 2}x fewer latent tokens)")
    chosen = pick_size({s: result[s] for s in sizes})
    record.update(real_accuracy=result["real"], round_trip_accuracy={str(s): result[s] for s in sizes},
                  chosen=chosen, measured=True)
    top = sizes[-1]
    seen = ", ".join(f"{result[s]:.3f} at {s}" for s in sizes)
    loss = result[top] - result[chosen]
    record["reason"] = (f"classifiers trained on other real images recognised the tokenizer's round trips {seen} px "
                        f"(the images themselves {result['real']:.3f}): "
                        + (f"{chosen} px is the smallest that loses at most {LOSS_MARGIN} against {top} px "
                           f"({loss:.3f})" if chosen != top
                           else f"every smaller size loses more than {LOSS_MARGIN} against {top} px"))
    return chosen, record


def describe(record):
    """One line for stage 1's report."""
    size = record["chosen"]
    if record["mode"] != "auto":
        return f"image size {size}x{size} (--image_size)"
    return f"image size {size}x{size} (--image_size auto: {record['reason']})"
