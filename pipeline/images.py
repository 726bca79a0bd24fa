"""
Spectrogram images in and out: finding class folders, reading any common format and bit depth (numeric
files by the data set's value range), plot-area crop, grayscale detection and colour-map inversion,
resizing without cropping by default, writing images (re-coloured on the data set's map) and grids.

Tensors are (3, H, W) float32 in [-1, 1] (the tokenizer's range); grayscale is replicated to 3 channels.
"""

import os
import re
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.colormaps import apply_colormap, invert_colormap
from pipeline.common import UsageError, atomic_path
from pipeline.value_range import dataset_range, read_raw, scale_to_unit

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# PIL refuses images above ~179 Mpx as decompression bombs; spectrograms are seldom above a few Mpx, and
# 400 Mpx (1.6 GB as RGBA) is still safe on a Kaggle machine. Larger files are skipped with that reason.
Image.MAX_IMAGE_PIXELS = 400_000_000


# --------------------------------------------------------------------------------
#                                 Discovery
# --------------------------------------------------------------------------------

def walk_classes(data_dir):
    """({class name: [image paths]} in sorted order, skipped [(path, reason)]). Subfolders are classes (nested
    folders inside a class belong to it); images lying directly in data_dir form one class named after
    data_dir. Paths are real paths, each real file once per class however many links reach it; a symlink
    loop is refused naming the link; files that are not images are listed in `skipped` with a reason."""
    from pipeline.hygiene import walk_images  # hygiene imports this module's IMAGE_EXTENSIONS

    def walk(folder):
        try:
            return walk_images(folder)
        except ValueError as e:
            raise UsageError(f"--data_dir {data_dir}: {e}") from None

    if not os.path.isdir(data_dir):
        raise UsageError(f"--data_dir {data_dir}: no such folder")
    entries = sorted(e for e in os.listdir(data_dir) if not e.startswith((".", "__")))
    subdirs = [e for e in entries if os.path.isdir(os.path.join(data_dir, e))]
    loose = [os.path.join(data_dir, e) for e in entries
             if os.path.isfile(os.path.join(data_dir, e)) and e.lower().endswith(IMAGE_EXTENSIONS)]
    if loose and subdirs:
        raise UsageError(f"--data_dir {data_dir}: holds both images and subfolders; put the loose images "
                         f"into a class folder of their own")
    if loose or not subdirs:
        images, skipped = walk(data_dir)
        if not images:
            raise UsageError(f"--data_dir {data_dir}: no images and no class folders found "
                             f"(expected {data_dir}/<class>/*.png or images directly inside)")
        return {os.path.basename(os.path.normpath(data_dir)): images}, skipped
    classes, skipped = {}, []
    # files beside the class folders (a README, a labels table) are not data either: listed, not read
    for e in entries:
        path = os.path.join(data_dir, e)
        if e not in subdirs:
            skipped.append((path, "not in a class folder"))
    for d in subdirs:
        classes[d], more = walk(os.path.join(data_dir, d))
        skipped += more
    empty = [c for c, files in classes.items() if not files]
    if empty:
        # name why the first skipped file of those folders was not read (e.g. a .npy array: save it as TIFF)
        why = next((f"; {os.path.relpath(p, data_dir)}: {r}" for p, r in skipped
                    if os.path.relpath(p, data_dir).split(os.sep)[0] in empty), "")
        raise UsageError(f"--data_dir {data_dir}: class folder(s) without images: {', '.join(empty)} "
                         f"(supported: {' '.join(IMAGE_EXTENSIONS)}){why}; remove them or add images")
    return classes, skipped


def find_classes(data_dir):
    """{class name: [image paths]}: walk_classes without the skipped list."""
    return walk_classes(data_dir)[0]


def split_indices(labels, val_fraction, seed):
    """Per-class held-out split, deterministic in (labels, val_fraction, seed): uint8 array, 1 = held out.
    Each class keeps at least one training image; val_fraction 0 keeps everything in training."""
    labels = np.asarray(labels)
    split = np.zeros(len(labels), dtype=np.uint8)
    if val_fraction <= 0:
        return split
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = min(int(round(val_fraction * len(idx))), len(idx) - 1)
        split[rng.permutation(idx)[:n_val]] = 1
    return split


def safe_name(name):
    """A class name usable as a file/folder name: no path separators, no '..', no control characters."""
    cleaned = re.sub(r"[^\w.\- ]+", "_", str(name)).strip(" .")
    cleaned = cleaned.replace("..", "_")
    return cleaned or "class"


def unique_folder_names(names):
    """{class name: folder name}: safe_name of each, made unique with a suffix (`walk_fast`, `walk_fast_2`) when
    two names collide, also case-insensitively (macOS and Windows file systems fold case). Depends only on
    the ordered list of names, so every run of the same model uses the same folders."""
    folders, taken = {}, set()
    for name in names:
        base = safe_name(name)
        folder, n = base, 1
        while folder.lower() in taken:
            n += 1
            folder = f"{base}_{n}"
        taken.add(folder.lower())
        folders[name] = folder
    return folders


# --------------------------------------------------------------------------------
#                                  Reading
# --------------------------------------------------------------------------------

def read_raw_safe(path):
    """value_range.read_raw with decompression bombs refused (PIL only warns below twice its pixel limit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return read_raw(path)


def crop(arr, box):
    """arr (H, W[, C]) -> arr[y0:y1, x0:x1] for box (x0, y0, x1, y1); None keeps everything."""
    if box is None:
        return arr
    x0, y0, x1, y1 = box
    return arr[y0:y1, x0:x1]


def _lo_hi(value_range):
    """(lo, hi) from dataset.json's {lo, hi, kind} or a pair."""
    if isinstance(value_range, dict):
        return float(value_range["lo"]), float(value_range["hi"])
    return float(value_range[0]), float(value_range[1])


def read_image(path, value_range=None, box=None):
    """Decode any supported file to (float32 array (H, W, 3) in [0, 1], is_gray, (width, height) of the area read).
    box (x0, y0, x1, y1) cuts the plot area out first. 8-bit files are divided by 255. 16/32-bit and float
    files are scaled by `value_range` ({lo, hi} or (lo, hi): the data set's range, see value_range.py), so
    dB stays dB and every image keeps its level relative to the others; without a range a numeric file is
    scaled by its own robust range (a file alone is its own data set). Palette/CMYK/alpha are converted to
    RGB (alpha dropped); GIF/TIFF stacks use their first frame. Raises on unreadable or truncated files."""
    raw, kind = read_raw_safe(path)
    raw = crop(raw, box)
    if kind == "uint8":
        arr = raw.astype(np.float32) / 255.0
    else:
        lo, hi = _lo_hi(value_range) if value_range is not None else dataset_range([raw])
        arr = scale_to_unit(raw, lo, hi)
    size = (arr.shape[1], arr.shape[0])
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2), True, size
    is_gray = bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))
    return arr, is_gray, size


def to_intensity(rgb, is_gray, colormap):
    """Positions on a colour map: rgb (H, W, 3) in [0, 1] -> (H, W) float32 in [0, 1]. Colour files are
    inverted through the map; gray files of a mixed set are taken as the intensity they already show,
    except on a gray map (gray_r turns a white noise floor dark, like the colour files of that set)."""
    if is_gray and not colormap.startswith("gray"):
        return rgb[..., 0]
    return invert_colormap(rgb, colormap)


def resize_image(x, size, mode="stretch"):
    """x (3, h, w) -> (3, H, W). stretch: the whole spectrogram, aspect not kept (default: nothing is cut);
    center_crop: scale the short side, cut the centre; pad: scale to fit, pad with the image minimum
    (the noise floor of a dB spectrogram)."""
    H, W = size
    h, w = x.shape[-2:]

    def interp(t, hw):
        if tuple(t.shape[-2:]) == tuple(hw):
            return t
        return F.interpolate(t[None], size=hw, mode="bicubic", antialias=True, align_corners=False)[0]

    if mode == "stretch":
        out = interp(x, (H, W))
    elif mode == "center_crop":
        scale = max(H / h, W / w)
        nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
        y = interp(x, (nh, nw))
        top, left = (nh - H) // 2, (nw - W) // 2
        out = y[:, top:top + H, left:left + W]
    elif mode == "pad":
        scale = min(H / h, W / w)
        nh, nw = min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))
        y = interp(x, (nh, nw))
        out = torch.full((x.shape[0], H, W), float(x.min()))
        top, left = (H - nh) // 2, (W - nw) // 2
        out[:, top:top + nh, left:left + nw] = y
    else:
        raise UsageError(f"--resize {mode}: use stretch, center_crop or pad")
    return out.clamp(0, 1)


def load_for_tokenizer(path, size, resize="stretch", color="auto", colormap=None, value_range=None, box=None):
    """File -> ((3, H, W) float32 in [-1, 1], is_gray, (width, height) of the area used). The order is the
    data set's preprocessing (stage 1 records each part in dataset.json): cut `box`, scale numeric values
    by `value_range`, then the colour: color='gray' converts colour to luminance; 'auto' with a colour map
    name inverts the colours to one intensity channel; otherwise colours are kept. Grayscale is
    replicated to 3 channels either way. Resizing comes last (see resize_image)."""
    arr, is_gray, orig = read_image(path, value_range, box)
    if color == "auto" and colormap:
        arr, is_gray = np.repeat(to_intensity(arr, is_gray, colormap)[..., None], 3, axis=2), True
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    if color == "gray" and not is_gray:
        lum = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        x, is_gray = lum.expand(3, -1, -1).clone(), True
    return resize_image(x, size, resize) * 2 - 1, is_gray, orig


# --------------------------------------------------------------------------------
#                                  Writing
# --------------------------------------------------------------------------------

def to_uint8(x, gray):
    """(3, H, W) in [-1, 1] -> uint8 array (H, W) when gray (channel mean) or (H, W, 3)."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if gray:
        return x.float().mean(0).round().to(torch.uint8).numpy()
    return x.permute(1, 2, 0).numpy()


def save_image(x, path, gray, size=None, colormap=None):
    """Write (3, H, W) in [-1, 1] as PNG (one channel when gray); optionally resized to size=(width, height).
    With a colour map name the channel mean is an intensity drawn in that map (RGB): every pixel lies on
    the map, like the data set's own images. It is resized before the map is applied, so that
    interpolation never mixes colours off the map."""
    if colormap:
        intensity = ((x.float().clamp(-1, 1).mean(0) + 1) / 2).numpy().astype(np.float32)
        if size is not None and tuple(size) != (intensity.shape[1], intensity.shape[0]):
            intensity = np.asarray(Image.fromarray(intensity).resize(tuple(size), Image.BICUBIC))
        rgb = apply_colormap(np.clip(intensity, 0, 1), colormap)
        img = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
    else:
        img = Image.fromarray(to_uint8(x, gray))
        if size is not None and tuple(size) != img.size:
            img = img.resize(tuple(size), Image.BICUBIC)
    with atomic_path(path) as tmp:  # a killed run never leaves a half-written image that looks complete
        img.save(tmp, format="PNG")


def make_grid(rows, gray, pad=2):
    """rows: list of lists of (3, H, W) tensors in [-1, 1] -> one PIL image, one row per list."""
    ncol = max(len(r) for r in rows)
    h, w = rows[0][0].shape[-2:]
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, top:top + h, left:left + w] = x.float().clamp(-1, 1)
    return Image.fromarray(to_uint8(canvas, gray))
