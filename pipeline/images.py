"""
Spectrogram images in and out: finding class folders, reading any common format and bit depth,
grayscale detection, resizing without cropping by default, writing images and grids.

Tensors are (3, H, W) float32 in [-1, 1] (the tokenizer's range); grayscale is replicated to 3 channels.
"""

import os
import re
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.common import UsageError, atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# PIL refuses images above ~179 Mpx as decompression bombs; spectrograms are seldom above a few Mpx, and
# 400 Mpx (1.6 GB as RGBA) is still safe on a Kaggle machine. Larger files are skipped with that reason.
Image.MAX_IMAGE_PIXELS = 400_000_000


# --------------------------------------------------------------------------------
#                                 Discovery
# --------------------------------------------------------------------------------

def _is_hidden(name):
    return name.startswith(".") or name.startswith("__")


def _images_below(folder):
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not _is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def find_classes(data_dir):
    """{class name: [image paths]} in sorted order. Subfolders are classes (nested folders inside a class
    belong to it); images lying directly in data_dir form one class named after data_dir."""
    if not os.path.isdir(data_dir):
        raise UsageError(f"--data_dir {data_dir}: no such folder")
    entries = sorted(e for e in os.listdir(data_dir) if not _is_hidden(e))
    subdirs = [e for e in entries if os.path.isdir(os.path.join(data_dir, e))]
    loose = [os.path.join(data_dir, e) for e in entries
             if os.path.isfile(os.path.join(data_dir, e)) and e.lower().endswith(IMAGE_EXTENSIONS)]
    if loose and subdirs:
        raise UsageError(f"--data_dir {data_dir}: holds both images and subfolders; put the loose images "
                         f"into a class folder of their own")
    if loose:
        return {os.path.basename(os.path.normpath(data_dir)): loose}
    classes = {d: _images_below(os.path.join(data_dir, d)) for d in subdirs}
    if not classes:
        raise UsageError(f"--data_dir {data_dir}: no images and no class folders found "
                         f"(expected {data_dir}/<class>/*.png or images directly inside)")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise UsageError(f"--data_dir {data_dir}: class folder(s) without images: {', '.join(empty)} "
                         f"(supported: {' '.join(IMAGE_EXTENSIONS)}); remove them or add images")
    return classes


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

def read_image(path):
    """Decode any supported file to (float32 array (H, W, 3) in [0, 1], is_gray, (width, height)).
    16-bit and float images keep their precision; palette/CMYK/alpha are converted to RGB (alpha dropped);
    GIF/TIFF stacks use their first frame. Raises on unreadable or truncated files."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.seek(0)
            img.load()
            size = img.size
            mode = img.mode
            if mode in ("I", "F") or mode.startswith("I;16"):
                arr = np.asarray(img, dtype=np.float32)
                if arr.ndim == 3:
                    arr = arr[..., 0]
                if mode == "F":
                    top = arr.max() if arr.max() > 1 else 1.0
                    arr = np.clip(arr, 0, None) / top
                else:
                    arr = arr / (65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0)
                gray = np.clip(arr, 0, 1)
                return np.repeat(gray[..., None], 3, axis=2), True, size
            if mode in ("L", "LA", "1"):
                gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
                return np.repeat(gray[..., None], 3, axis=2), True, size
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    is_gray = bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))
    return rgb, is_gray, size


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


def load_for_tokenizer(path, size, resize="stretch", color="auto"):
    """File -> ((3, H, W) float32 in [-1, 1], is_gray, original (width, height)). color='gray' converts to
    luminance first; 'rgb' and 'auto' keep the colours (grayscale is replicated either way)."""
    arr, is_gray, orig = read_image(path)
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


def save_image(x, path, gray, size=None):
    """Write (3, H, W) in [-1, 1] as PNG (one channel when gray); optionally resized to size=(width, height)."""
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
