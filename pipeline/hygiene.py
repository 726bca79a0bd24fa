"""
Data-set hygiene before encoding: walking a class folder safely (symlinks resolved, loops refused, each
real file once, non-images listed with a reason), exact and near duplicates within and across classes,
and images whose aspect ratio would be wrecked by resizing.
"""

import os

import numpy as np
from PIL import Image

from pipeline.common import file_sha256
from pipeline.images import IMAGE_EXTENSIONS

THUMB = 16            # thumbnail side for near-duplicate search
NEAR_MAX_DIFF = 0.06  # max abs difference of two thumbnails ([0, 1] gray) to call them near duplicates:
                      # a resized + JPEG re-encoded copy moves 16x16 block means by up to ~15 levels
                      # (sharp signatures), different recordings differ by more (>= 25) somewhere

# Files people keep next to their spectrograms, with what to do about them.
_SKIP_REASONS = {
    ".npy": "numpy array, not an image: save it as a float TIFF (or PNG) to use it",
    ".npz": "numpy archive, not an image: save the arrays as float TIFFs to use them",
    ".mat": "MATLAB file, not an image: export the spectrogram matrix as a TIFF or PNG to use it",
    ".csv": "table, not an image",
    ".txt": "text, not an image",
    ".json": "metadata, not an image",
}


# ----- Walking a class folder -----

def _is_hidden(name):
    return name.startswith(".") or name.startswith("__")


def walk_images(class_dir):
    """Image files below class_dir, following symlinks -> (images, skipped).
    images: sorted real paths (os.path.realpath), each real file once however many links reach it.
    skipped: [(path, reason)] for non-image files and broken links. Hidden names are ignored.
    Raises ValueError naming the link when a symlink points to a folder that contains the link (a loop,
    also when that folder is above class_dir); a link to a folder already walked is not walked twice."""
    images, skipped, seen_files, seen_dirs = set(), [], set(), set()

    def walk(folder):
        real = os.path.realpath(folder)
        if real in seen_dirs:
            return
        seen_dirs.add(real)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if _is_hidden(entry.name):
                continue
            path = entry.path
            target = os.path.realpath(path)
            if entry.is_symlink() and not os.path.exists(path):
                skipped.append((path, "broken symlink"))
            elif os.path.isdir(path):
                if os.path.commonpath([target, real]) == target:
                    raise ValueError(f"{path}: symlink loop (it points to {target}, a folder that contains "
                                     f"it); remove the link or point it elsewhere")
                walk(path)
            elif target in seen_files:
                continue
            else:
                seen_files.add(target)
                ext = os.path.splitext(entry.name)[1].lower()
                if ext in IMAGE_EXTENSIONS:
                    images.add(target)
                else:
                    skipped.append((path, _SKIP_REASONS.get(ext, f"not an image ({ext or 'no extension'}); "
                                                                 f"supported: {' '.join(IMAGE_EXTENSIONS)}")))

    if not os.path.isdir(class_dir):
        raise ValueError(f"{class_dir}: not a folder")
    walk(class_dir)
    return sorted(images), skipped


# ----- Duplicates -----

def thumbnail(image, size=THUMB):
    """(size, size) float32 gray thumbnail in [0, 1] of a PIL image or an array (H, W[, 3]) (uint8 or
    float in [0, 1]): box-filtered, so noise and compression artefacts average out."""
    if not isinstance(image, Image.Image):
        a = np.asarray(image)
        if a.dtype != np.uint8:
            a = np.clip(np.round(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(a[..., :3] if a.ndim == 3 else a)
    small = image.convert("L").resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _groups(n, pairs):
    """Union-find over pairs of indices in range(n) -> lists of indices of the groups with > 1 member."""
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    return [m for m in members.values() if len(m) > 1]


def _near_pairs(thumbs, max_diff):
    """Index pairs (i, j) whose thumbnails (N, S, S) differ by at most max_diff everywhere.
    |mean_i - mean_j| <= max |t_i - t_j|, so after sorting by mean only a window needs comparing."""
    flat = np.asarray(thumbs, dtype=np.float32).reshape(len(thumbs), -1)
    means = flat.mean(1)
    order = np.argsort(means, kind="stable")
    flat, means = flat[order], means[order]
    pairs = []
    for i in range(len(flat) - 1):
        end = np.searchsorted(means, means[i] + max_diff, side="right")
        if end <= i + 1:
            continue
        diff = np.abs(flat[i + 1:end] - flat[i]).max(1)
        pairs += [(int(order[i]), int(order[i + 1 + j])) for j in np.flatnonzero(diff <= max_diff)]
    return pairs


def brightness_scaled(thumbs, quantile=0.999):
    """Thumbnails (N, S, S) divided by the set's bright level (its `quantile`, within [0.25, 1]): measured
    spectrograms are dark (rice20: mean 0.04, bright level 0.33), which puts every recording within
    NEAR_MAX_DIFF of every other one; scaled, different recordings differ again and copies stay close."""
    thumbs = np.asarray(thumbs, dtype=np.float32)
    level = float(np.quantile(thumbs, quantile)) if thumbs.size else 1.0
    level = max(level, 0.25)   # at most 4x: in darker sets 8-bit steps would make copies differ
    return np.clip(thumbs / level, 0.0, 1.0) if level < 1.0 else thumbs


def duplicate_groups(files, thumbs=None, classes=None, max_diff=NEAR_MAX_DIFF, digests=None):
    """Exact and near duplicates among files (paths), within and across classes.
    thumbs: (N, S, S) thumbnails (see thumbnail()) for near duplicates, or None for exact ones only.
    classes: class name per file; by default the name of the file's parent folder.
    Returns [{'kind': 'exact' | 'near', 'files': [...], 'classes': [...]}]: exact groups share their
    bytes (SHA-256); near groups join files whose thumbnails (brightness_scaled) differ by at most
    max_diff, after exact copies were merged (so a near group never repeats an exact one, but lists all
    copies it touches).
    digests: SHA-256 per file when the caller has them already (stage 1 hashes every file once)."""
    files = list(files)
    if classes is None:
        classes = [os.path.basename(os.path.dirname(os.path.abspath(f))) for f in files]
    by_hash = {}
    for i, f in enumerate(files):
        by_hash.setdefault(digests[i] if digests is not None else file_sha256(f), []).append(i)
    exact = [m for m in by_hash.values() if len(m) > 1]
    out = [{"kind": "exact", "files": [files[i] for i in m], "classes": sorted({classes[i] for i in m})}
           for m in exact]
    if thumbs is not None:
        if len(thumbs) != len(files):
            raise ValueError(f"duplicate_groups: {len(thumbs)} thumbnails for {len(files)} files")
        reps = [m[0] for m in by_hash.values()]  # one file per distinct content
        copies = {m[0]: m for m in by_hash.values()}
        for group in _groups(len(reps), _near_pairs(brightness_scaled(thumbs)[reps], max_diff)):
            idx = sorted(i for g in group for i in copies[reps[g]])
            out.append({"kind": "near", "files": [files[i] for i in idx],
                        "classes": sorted({classes[i] for i in idx})})
    return out


# ----- Aspect ratio -----

def aspect_warnings(sizes, limit=8):
    """Warnings (str) for images whose long side exceeds limit x the short side: resizing them to the
    model's square input squashes one axis beyond recognition. sizes: {name: (width, height)} or a
    sequence of (width, height) (names are then indices)."""
    items = sizes.items() if isinstance(sizes, dict) else enumerate(sizes)
    warnings = []
    for name, (w, h) in items:
        ratio = max(w, h) / max(min(w, h), 1)
        if ratio > limit:
            warnings.append(f"{name}: {w}x{h} has aspect ratio {ratio:.1f} > {limit}; crop or tile it "
                            f"(resizing to a square squashes it {ratio:.0f}-fold)")
    return warnings
