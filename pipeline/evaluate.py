"""
Evaluation of generated spectrograms against real ones: class correctness, fidelity/diversity,
memorisation and spectrogram statistics.

    python -m pipeline.evaluate --real DIR --generated DIR --out eval.json

`--real` is a class-folder tree (split here into train/held-out, deterministic by seed) or a stage 1
output dir (its held-out split is the reference, its train split is used for the classifier and
for memorisation). `--generated` is a class-folder tree (stage 3 output). Real and generated images go
through the same preprocessing: the stage 1 run's (dataset.json: colour mode and map, value range, plot-area
boxes) or, for a folder tree, what stage 1 would decide for it; a colour mode the generated images cannot
be brought into is a one-line error. All metrics are computed on images resized to 64x64, three channels,
in [0, 1].
"""

import argparse
import hashlib
import itertools
import json
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.common import UsageError, read_json, write_json_atomic
from pipeline.copies import MEMORISATION_THRESHOLD, memorisation
from pipeline.figure_trim import parse_trim
from pipeline.generate import decode_latents
from pipeline.latents import DATASET_FILE, dataset_image_paths, load_latents, read_record
from pipeline.plot import eval_plot
from pipeline.images import (IMAGE_EXTENSIONS, find_classes, load_for_tokenizer, make_grid, resize_image, safe_name,
                             save_image, split_indices)
from pipeline.preprocess import check_generated, decide_color, decide_value_range, scan_files

EVAL_SIZE = (64, 64)
KNN_K = 3
# Classifiers per accuracy, averaged: on a few dozen held-out images one classifier seed moves tstr and the
# augmented accuracy by up to 0.1 (bench/RESULTS.md), more than most changes to the generator do.
CLASSIFIER_SEEDS = 3   # MICRODOPPLER_CLASSIFIER_SEEDS overrides it (the test suite uses 1); eval.json records it
CACHE_DIR = os.environ.get("MICRODOPPLER_CACHE", os.path.expanduser("~/.cache/microdoppler-ldm"))


# --------------------------------------------------------------------------------
#                                   Data
# --------------------------------------------------------------------------------

def _load(paths, prep, boxes=None):
    """Images through one preprocessing as (N, 3, 64, 64) float32 in [0, 1], and the count of unreadable
    files (dropped, like stage 1 skips them). prep: dict(color, colormap, value_range) (see real_preprocessing);
    boxes: a plot-area box per path, or None."""
    out, bad = [], 0
    for i, p in enumerate(paths):
        try:
            x = load_for_tokenizer(p, EVAL_SIZE, "stretch", prep["color"], prep["colormap"], prep["value_range"],
                                   boxes[i] if boxes else None)[0]
            out.append((x + 1) / 2)
        except Exception:  # noqa: BLE001 - skip unreadable files, like stage 1
            bad += 1
    return (torch.stack(out) if out else torch.zeros(0, 3, *EVAL_SIZE)), bad


def read_back_view(images, gray):
    """Decoded images (B, 3, H, W) in [-1, 1] -> (B, 3, 64, 64) in [0, 1] as this evaluation reads them once
    stage 3 has written them: 8 bits, one grey level per pixel (the channel mean) for a grey or colour-mapped
    set, resized like every image here (resize_image, bicubic)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255
    if gray:
        x = x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return torch.stack([resize_image(v, EVAL_SIZE) for v in x]) if len(x) else torch.zeros(0, 3, *EVAL_SIZE)


def _tree_preprocessing(paths, split, color, trim):
    """A class-folder tree of real images gets what stage 1 would decide for it: plot-area boxes, one value
    range over its training split, its colour map. Returns (prep, boxes)."""
    try:
        spec = parse_trim(trim)
    except ValueError as e:
        raise UsageError(str(e)) from None
    scans = scan_files(paths, spec)
    bad = next((s for s in scans if s.get("trim_error")), None)
    if bad is not None:
        raise UsageError(bad["error"])
    value_range, _ = decide_value_range(scans, [not s for s in split])
    decided = decide_color(scans, color, [os.path.basename(p) for p in paths])
    prep = dict(color=color, colormap=decided["colormap"]["name"] if decided["colormap"] else None,
                value_range=value_range, color_mode=decided["color_mode"], reason=decided["reason"],
                real_colour=any(not s["gray"] for s in scans if s.get("error") is None))
    return prep, [s.get("box") for s in scans]


def load_real(real, seed=0, heldout_fraction=0.2, color="auto", trim="auto"):
    """(class names, train images, train labels, held-out images, held-out labels, prep, latents). A stage 1
    output dir brings its own latents ((train, held-out) stage 1 latents in the same order; None for a folder
    tree) and its own preprocessing (dataset.json: colour mode and map, value range, plot-area boxes);
    `color` other than auto overrides its colour handling. A class-folder tree is scanned here the way
    stage 1 would (see _tree_preprocessing)."""
    info = read_record(real, DATASET_FILE, "--real") if os.path.isdir(real) else None
    if info is not None:
        data_dir, paths = dataset_image_paths(info)
        if not os.path.isdir(data_dir):
            raise UsageError(f"--real {real}: its images ({data_dir}) are not on this machine; pass the image folder")
        names = [c["name"] for c in info["classes"]]
        data = load_latents(real, check_finite=False)   # rows are in dataset.json's file order
        labels, split = data["labels"].tolist(), data["split"].numpy()
        latents = data["latents"].float()
        stage1_color = info.get("settings", {}).get("color", "auto")
        colormap = (info.get("colormap") or {}).get("name")
        prep = dict(color=color if color != "auto" else stage1_color, colormap=colormap,
                    value_range=info.get("value_range"), color_mode=info.get("color_mode", "rgb"),
                    reason=(info.get("color_detection") or {}).get("reason", ""),
                    real_colour=(info.get("color_detection") or {}).get("colour_images", 1) > 0)
        if color == "gray":
            prep.update(colormap=None, color_mode="gray")
        boxes = [tuple(b) for b in info["trim_boxes"]] if info.get("trim_boxes") else None
    else:
        classes = find_classes(real)
        names = list(classes)
        paths = [p for n in names for p in classes[n]]
        labels = [c for c, n in enumerate(names) for _ in classes[n]]
        split = split_indices(labels, heldout_fraction, seed)
        prep, boxes = _tree_preprocessing(paths, split, color, trim)
        latents = None
    labels = torch.tensor(labels)
    x, _ = _load(paths, prep, boxes)
    split = torch.as_tensor(np.asarray(split)).bool()
    latents = (latents[~split], latents[split]) if latents is not None else None
    return names, x[~split], labels[~split], x[split], labels[split], prep, latents


def _generated_files(generated, names):
    """[(path, label)] of the generated images: from stage 3's samples.json when there is one (its class ->
    folder map), else from folder names matched to the real class names (also via safe_name)."""
    if not os.path.isdir(generated):
        raise UsageError(f"--generated {generated}: no such folder")
    record = os.path.join(generated, "samples.json")
    if os.path.isfile(record):
        lookup = {info["folder"]: names.index(n) for n, info in read_json(record).get("classes", {}).items()
                  if n in names}
    else:
        lookup = {n: c for c, n in enumerate(names)}
        lookup.update({safe_name(n): c for c, n in enumerate(names)})
    found, unknown = [], []
    for folder in sorted(os.listdir(generated)):
        full = os.path.join(generated, folder)
        if not os.path.isdir(full) or folder.startswith("."):
            continue
        if folder not in lookup:
            unknown.append(folder)
            continue
        found += [(os.path.join(full, f), lookup[folder]) for f in sorted(os.listdir(full))
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
    if unknown:
        raise UsageError(f"--generated {generated}: folders {', '.join(unknown)} match no real class ({', '.join(names)})")
    if not found:
        raise UsageError(f"--generated {generated}: no generated images found")
    return found


def load_generated(generated, names, prep=None):
    """Generated images with labels, through the real images' colour handling (prep, from load_real: the
    same colour mode and map; generated images are already the plot area, in 8 bits). A colour mode they
    cannot be brought into is a UsageError naming the mismatch."""
    prep = prep or dict(color="auto", colormap=None, value_range=None, color_mode="rgb", real_colour=True)
    found = _generated_files(generated, names)
    paths = [p for p, _ in found]
    if prep["color"] != "gray":   # luminance compares anything with anything
        real_mode = prep["color_mode"]
        if real_mode == "rgb" and prep.get("real_colour") is False:
            real_mode = "gray"    # --color rgb on a grayscale set: gray images on both sides
        problem = check_generated(real_mode, prep["colormap"], scan_files(paths, "none"), f"--generated {generated}")
        if problem:
            raise UsageError(problem)
    x, _ = _load(paths, dict(prep, value_range=None))
    return x, torch.tensor([c for _, c in found])


def check_heldout(latent_dir):
    """Stage 3 --eval needs the run's stage 1 output on this machine with held-out images: say so before
    anything is generated."""
    info = read_record(latent_dir, DATASET_FILE) if latent_dir and os.path.isdir(latent_dir) else None
    if info is None:
        raise UsageError(f"--eval: the run's latent dir ({latent_dir}) is not on this machine; drop --eval and run "
                         f"python -m pipeline.evaluate --real IMAGES --generated OUTPUT_DIR afterwards")
    if sum(c.get("heldout", 0) for c in info["classes"]) == 0:
        raise UsageError(f"--eval: stage 1 kept no held-out images in {latent_dir} (--val_fraction 0); rerun stage 1 "
                         f"with --val_fraction 0.1 and train again, or evaluate against other real images with "
                         f"python -m pipeline.evaluate --real IMAGES --generated OUTPUT_DIR")


# --------------------------------------------------------------------------------
#                                 Classifier
# --------------------------------------------------------------------------------

class SmallCNN(nn.Module):
    """(B, 3, 64, 64) -> logits; `features` gives the 128-d penultimate embedding."""

    def __init__(self, num_classes):
        super().__init__()
        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))
        self.body = nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 128))
        self.head = nn.Linear(128, num_classes)

    def features(self, x):
        # channels-last: on the CPU the same network trains about 1.6x faster (max-pooling above all); its float
        # rounding differs from channels-first, which over a training run moves the weights as another seed would
        return self.body(x.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(x, y, num_classes, seed=0, epochs=25, batch_size=32, device="cpu"):
    """Adam, fixed seed, small random time shifts as the only augmentation (no flips: they change the class).
    The images (N, 3, 64, 64) and labels (N,) stay where they are; each batch goes to `device`, where the model is
    trained and left."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN(num_classes).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = max(1, (len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb = x[idx].to(device)
            shift = int(torch.randint(-6, 7, (1,), generator=gen))
            xb = torch.roll(xb, shifts=shift, dims=3)
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def cached_classifier(x, y, num_classes, seed, device="cpu"):
    """train_classifier, cached by a hash of its training images, labels and settings (the real-data and the
    round-trip classifiers of every evaluation, stage 3's class check); returned on `device`."""
    h = hashlib.sha256()
    h.update(x.numpy().tobytes())
    h.update(y.numpy().tobytes())
    h.update(f"{num_classes}/{seed}/v2".encode())   # v2: trained channels-last (other rounding)
    path = os.path.join(CACHE_DIR, f"classifier_{h.hexdigest()[:24]}.pt")
    model = SmallCNN(num_classes)
    if os.path.isfile(path):
        try:
            model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
            return model.to(device).eval()
        except (RuntimeError, OSError, EOFError):
            pass  # unreadable cache entry: retrain
    model = train_classifier(x, y, num_classes, seed, device=device)
    try:
        from pipeline.common import atomic_torch_save
        atomic_torch_save(model.state_dict(), path)
    except OSError:
        pass  # caching is an optimisation only
    return model


@torch.no_grad()
def predict(model, x):
    """(predicted classes (N,), 128-d features (N, 128)) on the CPU for images (N, 3, 64, 64), run where the
    model is. One pass: the logits are the head applied to the same features (SmallCNN.forward)."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 128)
    device = model.head.weight.device
    feats = torch.cat([model.features(part.to(device)) for part in x.split(256)])
    return model.head(feats).argmax(1).cpu(), feats.cpu()


def accuracy(pred, y):
    return float((pred == y).float().mean()) if len(y) else float("nan")


# --------------------------------------------------------------------------------
#                         Distribution metrics
# --------------------------------------------------------------------------------

def frechet_distance(a, b):
    """||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2) between feature sets (N, D), float64."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)

    def sqrtm_psd(m):
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        return vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T

    root_a = sqrtm_psd(sa)
    cross = sqrtm_psd(root_a @ sb @ root_a)
    fd = (mu_a - mu_b).pow(2).sum() + torch.trace(sa) + torch.trace(sb) - 2 * torch.trace(cross)
    return max(0.0, float(fd))


def knn_precision_recall(real, fake, k=KNN_K):
    """Improved precision/recall (Kynkaanniemi et al. 2019): a sample is covered if it lies within the
    k-NN radius of some sample of the other set."""
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")

    def radii(x):
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0

    r_real, r_fake = radii(real), radii(fake)
    d = torch.cdist(fake, real)                        # (F, R)
    precision = float((d <= r_real[None, :]).any(dim=1).float().mean())
    recall = float((d.T <= r_fake[None, :]).any(dim=1).float().mean())
    return precision, recall


@torch.no_grad()
def latent_features(tokenizer, x, size=128, chunk=32):
    """Tokenizer-space features: images (N, 3, 64, 64) in [0, 1], resized to `size`, encoded (posterior
    mean), then each channel's spatial mean and std: (N, 2C)."""
    device = next(itertools.chain(tokenizer.parameters(), tokenizer.buffers())).device
    feats = []
    for part in x.split(chunk):
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False) * 2 - 1
        z = tokenizer.encode(part.to(device)).mean.float().cpu()
        feats.append(torch.cat([z.mean(dim=(2, 3)), z.std(dim=(2, 3))], dim=1))
    return torch.cat(feats)


@torch.no_grad()
def round_trips(tokenizer, latents, labels, names, prep, folder, chunk=16):
    """The tokenizer's decoding of the real images' own stage 1 latents (N, C, h, w), written the way stage 3
    writes its images (PNG at the stage 1 size, 8 bits; a colour-mapped set drawn in its map) into class
    folders under `folder`, and read back the way generated images are: (images (N, 3, 64, 64) in [0, 1],
    labels). A generator that reproduced the real latents exactly would produce these very files, so the
    classifiers' results on them are the tokenizer's reference for generated_accuracy and tstr_accuracy
    (guided samples, more class-typical than real ones, can exceed it). They must take the generated images'
    path exactly: on dark, speckled spectrograms the classifier tells apart images that differ by a few grey
    levels (encoding a 64-px copy instead of the stage 1 image gave 0.39 instead of 0.76 on a measured set)."""
    gray = prep["color_mode"] == "gray"
    device = next(itertools.chain(tokenizer.parameters(), tokenizer.buffers())).device
    for start in range(0, len(latents), chunk):
        images = decode_latents(tokenizer, latents[start:start + chunk], device, chunk=chunk)
        for i, (img, c) in enumerate(zip(images, labels[start:start + chunk].tolist()), start):
            save_image(img, os.path.join(folder, safe_name(names[c]), f"{i:06d}.png"), gray,
                       colormap=prep["colormap"] if gray else None)
    return load_generated(folder, names, prep)


def spectrogram_statistics(real, gen):
    """Mean Doppler profile (rows) L1 distance and energy histogram total-variation distance."""
    pr = real.mean(dim=(0, 1, 3))
    pg = gen.mean(dim=(0, 1, 3))
    hr = torch.histc(real.mean(1), bins=32, min=0, max=1)
    hg = torch.histc(gen.mean(1), bins=32, min=0, max=1)
    return dict(doppler_profile_l1=float((pr - pg).abs().mean()),
                energy_hist_tv=float(0.5 * (hr / hr.sum() - hg / hg.sum()).abs().sum()))


# --------------------------------------------------------------------------------
#                                  Report
# --------------------------------------------------------------------------------

def classifier_accuracies(data, k, seed):
    """Every classifier-based accuracy for one classifier seed. `data`: dict of (images, labels) pairs
    `train`, `held` and `gen` (real train, held-out real, generated) and, when the tokenizer's references
    are computed, `rec_train` and `rec_held` (round trips). Returns (accuracies, per-class accuracies,
    the real-data classifier's features of the held-out and the generated images)."""
    (x_train, y_train), (x_held, y_held), (x_gen, y_gen) = data["train"], data["held"], data["gen"]
    clf = cached_classifier(x_train, y_train, k, seed)
    (pred_held, f_held), (pred_gen, f_gen) = predict(clf, x_held), predict(clf, x_gen)
    tstr = train_classifier(x_gen, y_gen, k, seed)
    augmented = train_classifier(torch.cat([x_train, x_gen]), torch.cat([y_train, y_gen]), k, seed)
    acc = dict(real_accuracy=accuracy(pred_held, y_held), generated_accuracy=accuracy(pred_gen, y_gen),
               tstr_accuracy=accuracy(predict(tstr, x_held)[0], y_held),
               augmented_accuracy=accuracy(predict(augmented, x_held)[0], y_held))
    if "rec_held" in data:
        acc["reconstruction_accuracy"] = accuracy(predict(clf, data["rec_held"][0])[0], data["rec_held"][1])
        # tstr of a perfect latent generator: a classifier trained on the training images' own round trips
        # (the same for every evaluation of a run: cached like the real-data classifier)
        rec_clf = cached_classifier(*data["rec_train"], k, seed)
        acc["reconstruction_tstr_accuracy"] = accuracy(predict(rec_clf, x_held)[0], y_held)
    per_class = [dict(real_accuracy=accuracy(pred_held[y_held == c], y_held[y_held == c]),
                      generated_accuracy=accuracy(pred_gen[y_gen == c], y_gen[y_gen == c])) for c in range(k)]
    return acc, per_class, (f_held, f_gen)


def classifier_seed_count():
    text = os.environ.get("MICRODOPPLER_CLASSIFIER_SEEDS", str(CLASSIFIER_SEEDS))
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"MICRODOPPLER_CLASSIFIER_SEEDS={text}: expected a positive whole number (default {CLASSIFIER_SEEDS})")
    return int(text)


def _mean(values):
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def evaluate(real, generated, out, seed=0, vavae_path=None, tokenizer=None, color="auto", trim="auto"):
    """Compute every metric; write `out` (eval.json), eval.png and memorisation.png beside it. With a
    tokenizer (`vavae_path`, or an already loaded `tokenizer`), Fréchet distance and precision/recall are
    also computed in its latent space, and with a stage 1 dir as `real` as well the tokenizer's references
    (round_trips). Classifier accuracies are means over classifier_seed_count() classifiers (seeds seed, seed + 1,
    ...), their spread (max - min) in `accuracy_spread`; feature-space metrics use the first one."""
    names, x_train, y_train, x_held, y_held, prep, real_latents = load_real(real, seed, color=color, trim=trim)
    x_gen, y_gen = load_generated(generated, names, prep)
    if len(x_held) == 0:
        raise UsageError(f"--real {real}: no held-out real images to compare with (stage 1 --val_fraction 0?)")
    k = len(names)
    seeds = classifier_seed_count()
    if vavae_path and tokenizer is None:
        from models.vavae import load_vavae
        from pipeline.common import pick_device
        tokenizer = load_vavae(vavae_path, device=pick_device("auto"))
    data = dict(train=(x_train, y_train), held=(x_held, y_held), gen=(x_gen, y_gen))
    if tokenizer is not None and real_latents is not None:   # the tokenizer's references need the stage 1 latents
        if real_latents[0].shape[1] != tokenizer.latent_channels:
            raise UsageError(f"--vavae_path {vavae_path}: {tokenizer.latent_channels} latent channels, but --real {real} "
                             f"was encoded into {real_latents[0].shape[1]}; pass the tokenizer stage 1 used")
        with tempfile.TemporaryDirectory(prefix="round_trips_") as folder:
            data["rec_held"] = round_trips(tokenizer, real_latents[1], y_held, names, prep, os.path.join(folder, "held"))
            data["rec_train"] = round_trips(tokenizer, real_latents[0], y_train, names, prep, os.path.join(folder, "train"))
    runs = [classifier_accuracies(data, k, s) for s in range(seed, seed + seeds)]
    accuracies = {key: _mean([acc[key] for acc, _, _ in runs]) for key in runs[0][0]}
    spread = {key: max(acc[key] for acc, _, _ in runs) - min(acc[key] for acc, _, _ in runs) for key in runs[0][0]}
    f_held, f_gen = runs[0][2]
    precision, recall = knn_precision_recall(f_held, f_gen)
    ratio, nearest = memorisation(x_gen, x_train)
    result = dict(
        real_accuracy=accuracies["real_accuracy"],
        generated_accuracy=accuracies["generated_accuracy"],
        tstr_accuracy=accuracies["tstr_accuracy"],
        real_only_accuracy=accuracies["real_accuracy"],
        augmented_accuracy=accuracies["augmented_accuracy"],
        **{key: accuracies[key] for key in ("reconstruction_accuracy", "reconstruction_tstr_accuracy") if key in accuracies},
        classifier_seeds=seeds, accuracy_spread=spread,
        fd_classifier=frechet_distance(f_held, f_gen),
        precision=precision, recall=recall,
        memorisation_fraction=float((ratio < MEMORISATION_THRESHOLD).float().mean()),
        memorisation_threshold=MEMORISATION_THRESHOLD,
        num_real=int(len(x_held)), num_real_train=int(len(x_train)), num_generated=int(len(x_gen)),
        **spectrogram_statistics(x_held, x_gen), per_class={},
        preprocessing=dict(color=prep["color"], color_mode=prep["color_mode"], colormap=prep["colormap"],
                           value_range=prep["value_range"], reason=prep["reason"]))
    z_held = z_gen = None
    if tokenizer is not None:
        z_held, z_gen = latent_features(tokenizer, x_held), latent_features(tokenizer, x_gen)
        result["fd_latent"] = frechet_distance(z_held, z_gen)
        result["precision_latent"], result["recall_latent"] = knn_precision_recall(z_held, z_gen)
    for c, name in enumerate(names):
        held, gen = y_held == c, y_gen == c
        p_c, r_c = knn_precision_recall(f_held[held], f_gen[gen])
        if gen.sum() == 0:
            p_c, r_c = float("nan"), 0.0  # a missing class is not recalled at all
        result["per_class"][name] = dict(
            real_accuracy=_mean([per_class[c]["real_accuracy"] for _, per_class, _ in runs]),
            generated_accuracy=_mean([per_class[c]["generated_accuracy"] for _, per_class, _ in runs]),
            fd_classifier=frechet_distance(f_held[held], f_gen[gen]), precision=p_c, recall=r_c,
            memorisation_fraction=float((ratio[gen] < MEMORISATION_THRESHOLD).float().mean()) if gen.any() else float("nan"),
            num_real=int(held.sum()), num_generated=int(gen.sum()),
            **(spectrogram_statistics(x_held[held], x_gen[gen]) if gen.any() and held.any() else {}))
        if z_held is not None:
            result["per_class"][name]["fd_latent"] = frechet_distance(z_held[held], z_gen[gen])
    out_dir = os.path.dirname(os.path.abspath(out))
    write_json_atomic(out, _json_safe(result))
    eval_plot(result, os.path.join(out_dir, "eval.png"))
    order = ratio.argsort()[:8]
    pairs = [[x_gen[i] * 2 - 1, x_train[nearest[i]] * 2 - 1] for i in order.tolist()]
    if pairs:
        make_grid(pairs, gray=False).save(os.path.join(out_dir, "memorisation.png"))
    return result


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def evaluate_run(manifest, output_dir, seed=0, tokenizer=None):
    """stage3_inference.py --eval: compare the images in `output_dir` with the run's stage 1 data (its
    latent dir, recorded by stage 2 in the checkpoint and passed on by stage 3 in `manifest`)."""
    check_heldout(manifest.get("latent_dir"))
    return evaluate(manifest["latent_dir"], output_dir, os.path.join(output_dir, "eval.json"),
                    seed=seed, tokenizer=tokenizer)


def main(argv=None):
    from pipeline.cli import nonnegative_int
    from pipeline.common import run_cli
    p = argparse.ArgumentParser(description="Evaluate generated spectrograms against real ones.")
    p.add_argument("--real", required=True, help="class-folder tree, or a stage 1 output dir")
    p.add_argument("--generated", required=True, help="class-folder tree (stage 3 output)")
    p.add_argument("--out", default="eval.json")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--vavae_path", default=None, help="also compare in this tokenizer's latent space ('demo' works)")
    p.add_argument("--color", choices=["auto", "gray", "rgb"], default="auto",
                   help="auto: the stage 1 run's colour handling (a latent dir) or stage 1's detection (a folder "
                        "tree); gray: compare both sides as luminance")
    p.add_argument("--trim", default="auto", help="plot-area crop of a real folder tree: auto, none or x0,y0,x1,y1")
    args = p.parse_args(argv)

    def run():
        r = evaluate(args.real, args.generated, args.out, args.seed, args.vavae_path, color=args.color, trim=args.trim)
        print(json.dumps({k: v for k, v in _json_safe(r).items() if k != "per_class"}, indent=1))
    run_cli(run)


if __name__ == "__main__":
    main()
