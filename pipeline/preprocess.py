"""
What a data set's files are, decided once for the whole set before anything is encoded (issue 13):
every file is scanned (stored kind, gray or colour, plot-area box, a small sample of its values and
colours, a thumbnail), then the set gets one value range, one colour mode (with the colour map it was
drawn with, when it fits one) and a hygiene report. Stage 1 records the decisions in dataset.json; the
evaluation applies the same decisions to real and generated images.

A scan row (scan_file) is a dict:
  size    (width, height) of the area used (the plot area when trimmed); full: of the whole file
  kind    read_raw's kind: uint8, uint16, int32 or float
  gray    True for one channel (or three equal ones)
  box     (x0, y0, x1, y1) plot-area box in the file, half-open
  values  (K,) float32 sample of the finite stored values (numeric kinds only), vmax their maximum
  pixels  (K, 3) uint8 sample of the colours inside the box (colour files only)
  thumb   (16, 16) uint8 gray thumbnail of the box (duplicate search)
  error   None, or why the file could not be read (it is skipped at encode time with that reason)
"""

import os

import numpy as np
from torch.utils.data import DataLoader, Dataset

from pipeline import colormaps as cm
from pipeline.figure_trim import resolve_trim
from pipeline.hygiene import aspect_warnings, duplicate_groups, thumbnail
from pipeline.images import crop, read_raw_safe
from pipeline.value_range import bit_depth_usage, dataset_range

SAMPLE_VALUES = 1024    # stored values kept per numeric file for the data-set range
SAMPLE_PIXELS = 1024    # colours kept per colour file: the set's fit and each file's own residual
MAX_FIT_FILES = 200     # colour files pooled for the fit (evenly spaced over the set)
OFF_MAP_FACTOR = 2.0    # a file whose own residual exceeds this x the set's threshold is listed off the map
LIST_LIMIT = 20         # files named per hygiene line on the console (dataset.json lists all)


# --------------------------------------------------------------------------------
#                                  Scanning
# --------------------------------------------------------------------------------

def is_gray_array(arr):
    """True for (H, W) or for (H, W, 3) with three equal channels."""
    return arr.ndim == 2 or bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))


def plot_box(arr, kind, trim):
    """Box to use for a stored array and a parsed --trim value. Figure exports are 8-bit pictures: numeric
    arrays (dB maps, 16-bit sensor data) are never searched for axes, only cut by an explicit box."""
    if trim == "auto" and kind != "uint8":
        trim = "none"
    return tuple(int(v) for v in resolve_trim(trim, arr))


def _own_unit(arr):
    """A numeric array scaled by its own finite min/max to [0, 1]: only for the duplicate thumbnail."""
    a = np.asarray(arr, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, np.float32)
    lo, hi = float(finite.min()), float(finite.max())
    return np.nan_to_num(np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1), nan=0.0).astype(np.float32)


def scan_file(path, trim, seed=0):
    """One file's scan row (see the module docstring). `trim` is a parsed --trim value; an explicit box
    that does not fit the file raises ValueError (the user's box, not a broken file)."""
    try:
        raw, kind = read_raw_safe(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure: the file is skipped, with the reason
        return dict(error=f"{type(e).__name__}: {str(e)[:160]}")
    box = plot_box(raw, kind, trim)
    area = crop(raw, box)
    rng = np.random.default_rng(seed)
    row = dict(size=(box[2] - box[0], box[3] - box[1]), full=(raw.shape[1], raw.shape[0]), kind=kind,
               gray=is_gray_array(area), box=box,
               values=None, vmax=None, pixels=None, error=None)
    if kind != "uint8":
        flat = area.ravel()
        flat = flat[np.isfinite(flat)] if kind == "float" else flat
        if flat.size:
            row["vmax"] = float(flat.max())
            pick = rng.choice(flat.size, SAMPLE_VALUES) if flat.size > SAMPLE_VALUES else slice(None)
            row["values"] = flat[pick].astype(np.float32)
        row["thumb"] = _to_thumb(_own_unit(area))
    else:
        row["thumb"] = _to_thumb(area)
    if not row["gray"]:
        px = area.reshape(-1, 3)
        pick = rng.choice(len(px), SAMPLE_PIXELS) if len(px) > SAMPLE_PIXELS else slice(None)
        row["pixels"] = px[pick].astype(np.uint8)
    return row


def _to_thumb(arr):
    """(H, W[, 3]) uint8 or float in [0, 1] -> (16, 16) uint8 thumbnail."""
    return np.round(thumbnail(arr) * 255).astype(np.uint8)


class _ScanFiles(Dataset):
    def __init__(self, files, trim):
        self.files, self.trim = files, trim

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return scan_file(self.files[i], self.trim, seed=i)
        except ValueError as e:  # an explicit --trim box outside this image
            return dict(error=str(e), trim_error=True)


def _as_list(items):
    return items


def scan_files(files, trim, num_workers=0, batch_size=32):
    """Scan rows for every file, in order, decoded in DataLoader workers."""
    loader = DataLoader(_ScanFiles(files, trim), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_as_list)
    return [row for batch in loader for row in batch]


# --------------------------------------------------------------------------------
#                              Data-set decisions
# --------------------------------------------------------------------------------

def decide_value_range(scans, train):
    """One range for the numeric files of a set: (value_range dict or None, warnings).
    scans: scan rows; train: bool per row (the range is taken over training images only, so held-out
    images do not leak into it; a set without numeric training images falls back to all of them).
    value_range = {lo, hi, kind}: the 0.5/99.5 percentiles of the pooled samples, kind the stored kinds."""
    numeric = [i for i, s in enumerate(scans) if s.get("values") is not None]
    if not numeric:
        return None, []
    use = [i for i in numeric if train[i]] or numeric
    lo, hi = dataset_range([scans[i]["values"] for i in use])
    kinds = sorted({scans[i]["kind"] for i in numeric})
    found = []
    for kind in kinds:
        top = max(scans[i]["vmax"] for i in numeric if scans[i]["kind"] == kind)
        w = bit_depth_usage(top, kind)
        if w:
            found.append(w)
    return dict(lo=lo, hi=hi, kind="+".join(kinds)), found


def _pooled_pixels(scans, colour):
    """Pixels (N, 3) float in [0, 1] of up to MAX_FIT_FILES colour files, evenly spaced over the set."""
    pick = colour if len(colour) <= MAX_FIT_FILES else \
        [colour[int(k)] for k in np.linspace(0, len(colour) - 1, MAX_FIT_FILES)]
    return np.concatenate([scans[i]["pixels"] for i in pick]).astype(np.float64) / 255.0


def file_residuals(samples, name, quantile=cm.DEFAULT_QUANTILE):
    """Per file: the `quantile` of its sampled pixels' distances (8-bit levels) to map `name`.
    samples: [(K, 3) uint8] per file. All files are projected in one call (unique colours once)."""
    if not samples:
        return []
    pixels = np.concatenate(samples).astype(np.float64) / 255.0
    _, dist = cm.invert_colormap(pixels[None], name, return_distance=True)
    ends = np.cumsum([len(p) for p in samples])[:-1]
    return [float(np.quantile(d, quantile)) for d in np.split(dist[0], ends)]


def decide_color(scans, color, names, max_residual=cm.DEFAULT_MAX_RESIDUAL):
    """The set's colour handling for --color auto|gray|rgb.
    scans: scan rows (rows with an error are ignored); names: display name per row.
    Returns dict(color_mode 'gray'|'rgb', colormap {name, residual} or None, reason str,
    mixed {gray, colour, gray_files | colour_files} or None, off_map [{file, residual}])."""
    ok = [i for i, s in enumerate(scans) if s.get("error") is None]
    colour = [i for i in ok if not scans[i]["gray"]]
    gray = [i for i in ok if scans[i]["gray"]]
    out = dict(colormap=None, mixed=None, off_map=[])
    if colour and gray:
        # name the smaller group file by file: that is the one that looks out of place
        small, key = (colour, "colour_files") if len(colour) <= len(gray) else (gray, "gray_files")
        out["mixed"] = {"gray": len(gray), "colour": len(colour), key: [names[i] for i in small]}
    if color == "gray":
        return dict(out, color_mode="gray", reason="--color gray: colour images converted to luminance"
                    if colour else "--color gray")
    if color == "rgb":
        return dict(out, color_mode="rgb", reason="--color rgb: colours kept as they are")
    if not colour:
        return dict(out, color_mode="gray", reason="every image is grayscale")
    found = cm.detect_colormap(_pooled_pixels(scans, colour), max_residual=max_residual)
    if found["name"] is None:
        return dict(out, color_mode="rgb", reason=found["reason"])
    residuals = file_residuals([scans[i]["pixels"] for i in colour], found["name"], found["quantile"])
    out["off_map"] = [dict(file=names[i], residual=round(r, 1)) for i, r in zip(colour, residuals)
                      if r > OFF_MAP_FACTOR * max_residual]
    at = "" if found["quantile"] == cm.DEFAULT_QUANTILE else " at the median: a noisy export"
    reason = (f"colour map {found['name']} (fit residual {found['residual']:.1f} levels{at}; next best family "
              f"{found['runner_up'][0]} at {found['runner_up'][1]:.1f}): inverted to one intensity channel")
    return dict(out, color_mode="gray", colormap=dict(name=found["name"], residual=round(found["residual"], 3)),
                reason=reason)


def hygiene_report(files, class_of, scans, skipped, names, digests=None):
    """dataset.json's `hygiene`: duplicates (exact and near, within and across classes), skipped non-image
    files, extreme aspect ratios, colour mix. files: real paths; class_of: class name per file; skipped:
    [(path, reason)] from the folder walk; names: display name (relative path) per file; digests: SHA-256
    per file, if known."""
    ok = [i for i, s in enumerate(scans) if s.get("error") is None]
    groups = duplicate_groups([files[i] for i in ok], np.stack([scans[i]["thumb"] for i in ok]) / 255.0
                              if ok else None, classes=[class_of[i] for i in ok],
                              digests=[digests[i] for i in ok] if digests is not None else None) if ok else []
    display = {files[i]: names[i] for i in ok}
    duplicates = [dict(kind=g["kind"], files=[display[f] for f in g["files"]], classes=g["classes"],
                       across_classes=len(g["classes"]) > 1) for g in groups]
    return dict(duplicates=duplicates,
                skipped=[dict(path=p, reason=r) for p, r in skipped],
                aspect=aspect_warnings({names[i]: tuple(scans[i]["size"]) for i in ok}))


def hygiene_lines(hygiene, color):
    """Console lines for stage 1's report: one per finding, naming files (up to LIST_LIMIT)."""
    def named(items):
        more = f" (+{len(items) - LIST_LIMIT} more, all in dataset.json)" if len(items) > LIST_LIMIT else ""
        return ", ".join(items[:LIST_LIMIT]) + more

    lines = []
    for g in hygiene["duplicates"]:
        where = f"across classes {', '.join(g['classes'])}" if g["across_classes"] else f"in class {g['classes'][0]}"
        lines.append(f"{g['kind']} duplicates {where}: {named(g['files'])}")
    for s in hygiene["skipped"][:LIST_LIMIT]:
        lines.append(f"skipped {s['path']}: {s['reason']}")
    if len(hygiene["skipped"]) > LIST_LIMIT:
        lines.append(f"skipped {len(hygiene['skipped']) - LIST_LIMIT} more file(s), all listed in dataset.json")
    lines += [f"aspect ratio: {w}" for w in hygiene["aspect"]]
    mixed = color.get("mixed")
    if mixed:
        key = "colour_files" if "colour_files" in mixed else "gray_files"
        lines.append(f"mixed colour set: {mixed['gray']} gray and {mixed['colour']} colour image(s); the "
                     f"{key.split('_')[0]} ones: {named(mixed[key])}")
    for f in color.get("off_map", []):
        lines.append(f"off the colour map: {f['file']} (residual {f['residual']} levels): it is inverted "
                     f"through {color['colormap']['name']} like the rest; check it")
    return lines


# --------------------------------------------------------------------------------
#                      Generated images against a run's colour mode
# --------------------------------------------------------------------------------

def check_generated(real_mode, colormap, scans, what, max_residual=cm.DEFAULT_MAX_RESIDUAL):
    """None when generated images (scan rows) can be compared in the real images' colour mode, else the
    one-line reason they cannot. Gray real data takes gray images as they are and colour images only
    when they lie on the run's colour map; colour (RGB) real data needs colour images."""
    ok = [s for s in scans if s.get("error") is None]
    colour = [s for s in ok if not s["gray"]]
    if real_mode == "rgb":
        if len(colour) < len(ok):
            return (f"{what}: {len(ok) - len(colour)} of {len(ok)} image(s) are gray but the real images are colour "
                    f"(no colour map fits them); generate in the run's colour mode, or compare both as "
                    f"luminance with --color gray")
        return None
    if not colour:
        return None
    if colormap is None:
        return (f"{what}: {len(colour)} of {len(ok)} image(s) are colour but the real images are gray; "
                f"compare both as luminance with --color gray")
    residuals = file_residuals([s["pixels"] for s in colour], colormap)
    far = [r for r in residuals if r > OFF_MAP_FACTOR * max_residual]
    if far:
        return (f"{what}: {len(far)} of {len(colour)} colour image(s) do not lie on the real images' colour map "
                f"{colormap} (residual up to {max(far):.0f} levels); they cannot be inverted to the same intensities")
    return None


def display_names(files, root):
    """Paths relative to the real location of root (files are real paths; see images.walk_classes)."""
    base = os.path.realpath(root)
    return [os.path.relpath(f, base) for f in files]
