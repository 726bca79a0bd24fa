"""
Numeric spectrograms (float dB maps, 16/32-bit integer images): reading them without scaling, one robust
value range for the whole data set, and scaling into [0, 1] by that range.

One range per data set (not per image) keeps the relative power between recordings; percentiles instead of
min/max keep a few hot pixels or -inf (log of zero) from squashing everything else. dB data stays dB:
negative values are ordinary values, never clipped at 0.
"""

import numpy as np
from PIL import Image

SLIVER = 1 / 16   # a set whose maximum is below this share of its integer full scale gets a warning


# ----- Reading -----

def read_raw(path):
    """The stored numbers of an image file, unscaled -> (array, kind).
    array is (H, W) for single-channel modes, (H, W, 3) for colour (alpha dropped, palettes expanded);
    kind is 'uint8', 'uint16', 'int32' or 'float' (float32). PNG has no 32-bit integers, so a PNG that
    PIL opens in mode 'I' is 16-bit. Multi-frame files: the first frame."""
    with Image.open(path) as img:
        mode, fmt = img.mode, img.format
        if mode in ("RGB", "L"):
            arr = np.array(img)
        elif mode == "1":
            arr = np.array(img.convert("L"))  # 0/255, as every viewer shows it
        elif mode in ("LA", "La"):
            arr = np.array(img)[..., 0]
        elif mode.startswith("I;16"):
            arr = np.array(img).astype(np.uint16)  # native byte order whatever the file's
        elif mode == "I":
            arr = np.array(img).astype(np.int32)
            if fmt == "PNG":
                arr = arr.astype(np.uint16)
        elif mode == "F":
            arr = np.array(img).astype(np.float32)
        else:  # P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV: their RGB look
            arr = np.array(img.convert("RGB"))
    kind = {np.dtype(np.uint8): "uint8", np.dtype(np.uint16): "uint16",
            np.dtype(np.int32): "int32", np.dtype(np.float32): "float"}[arr.dtype]
    return arr, kind


# ----- Data-set range -----

def _finite_sample(arr, max_values, rng):
    """Finite values of arr as float64 (K,), at most max_values of them, drawn at random."""
    flat = np.asarray(arr, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    if len(flat) > max_values:
        flat = flat[rng.choice(len(flat), max_values, replace=False)]
    return flat


def dataset_range(arrays_or_samples, low_pct=0.5, high_pct=99.5, max_values_per_array=65536, seed=0):
    """Robust (lo, hi) of a whole data set: the low_pct and high_pct percentiles of the pooled finite
    values of all arrays (any shape; each contributes at most max_values_per_array random values, so each
    image weighs about the same and memory stays bounded). Negative values (dB) are kept as they are.
    Raises ValueError when there is no finite value; a constant set gets hi = lo + 1 (all scale to 0)."""
    rng = np.random.default_rng(seed)
    pooled = [_finite_sample(a, max_values_per_array, rng) for a in arrays_or_samples]
    pooled = np.concatenate(pooled) if pooled else np.zeros(0)
    if len(pooled) == 0:
        raise ValueError("dataset_range: no finite values in the data set")
    lo, hi = (float(v) for v in np.percentile(pooled, [low_pct, high_pct]))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def scale_to_unit(arr, lo, hi):
    """(lo, hi) -> (0, 1) linearly, clipped: arr (any shape) -> float32 of the same shape.
    NaN and -inf become 0 (no power), +inf becomes 1."""
    if not hi > lo:
        raise ValueError(f"scale_to_unit: need hi > lo, got lo={lo}, hi={hi}")
    a = np.asarray(arr, dtype=np.float64)
    out = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def bit_depth_usage(arr_max, dtype):
    """A warning (str) when integer data of 16 or more bits reaches at most 1/16 of its full scale (e.g. a
    12-bit sensor in a 16-bit PNG, or dB*100 in int32), else None. dtype: numpy dtype or a read_raw
    kind. 8-bit and float data never warn."""
    dt = np.dtype(dtype)
    if dt.kind not in "iu" or dt.itemsize < 2:
        return None
    full = np.iinfo(dt).max
    arr_max = float(arr_max)
    if arr_max >= SLIVER * full:
        return None
    bits = int(np.ceil(np.log2(max(arr_max, 1.0) + 1)))
    return (f"{dt.itemsize * 8}-bit data reaches at most {arr_max:g} of {full} ({arr_max / full:.2%} of "
            f"the range, about {bits} bits used); scaling by the data-set range instead of the full scale")
