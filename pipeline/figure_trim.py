"""
Cutting the plot area out of a figure export (MATLAB `saveas`/`print`, matplotlib `savefig`): white or
gray margins, an axes frame, tick marks and labels, a title, a colour bar on the right.

Boxes are (x0, y0, x1, y1) in pixels, half-open: the plot area is rgb[y0:y1, x0:x1].

How: a figure export has a uniform background around its border. Everything that differs from that
background is split into connected components; the plot area (image plus frame plus outward tick marks)
is the component with the largest bounding box, separate from the colour bar, title and tick labels
(they are set apart by padding). The box is then pulled in past sparse tick marks, checked to be a solid
or framed rectangle, and the frame lines themselves are stripped. Anything that does not pass these checks
(a plain spectrogram, even a dark one with a black border) is returned whole.
"""

import numpy as np

BG_TOL = 0.1           # a pixel differing from the background by more (any channel, [0, 1]) is content
RING_UNIFORM = 0.97    # share of the 2-px border that must be background for the image to be a figure
EDGE_FILL = 0.9        # share of a box edge that must be content (the frame, or the image itself)
MAX_FRAME_PX = 4       # frame lines stripped per side (0.8 pt at 300 dpi: 3 black px and a blended one)


# ----- Parsing the option -----

def parse_trim(text):
    """--trim value -> 'auto', 'none' or a box (x0, y0, x1, y1) of ints with x0 < x1, y0 < y1."""
    value = str(text).strip().lower()
    if value in ("auto", "none"):
        return value
    parts = [p.strip() for p in value.split(",")]
    try:
        box = tuple(int(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ValueError(f"--trim {text!r}: expected 'auto', 'none' or four integers x0,y0,x1,y1 "
                         f"(pixels, right/bottom exclusive), e.g. --trim 80,40,560,440")
    x0, y0, x1, y1 = box
    if min(box) < 0 or x1 <= x0 or y1 <= y0:
        raise ValueError(f"--trim {text!r}: need 0 <= x0 < x1 and 0 <= y0 < y1")
    return box


def resolve_trim(spec, rgb):
    """The box to crop for a parsed --trim value and an image (H, W, 3): 'auto' finds the plot area,
    'none' is the whole image, an explicit box must lie inside the image (ValueError otherwise)."""
    h, w = np.shape(rgb)[:2]
    if spec == "auto":
        return find_plot_area(rgb)
    if spec == "none":
        return (0, 0, w, h)
    x0, y0, x1, y1 = spec
    if x1 > w or y1 > h:
        raise ValueError(f"--trim {x0},{y0},{x1},{y1} reaches outside a {w}x{h} image")
    return spec


# ----- Connected components -----

def _runs(mask):
    """Horizontal runs of True in mask (H, W): rows, starts, ends (exclusive), sorted by row then start."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    ys, xs = np.nonzero(d == 1)
    _, xe = np.nonzero(d == -1)
    return ys, xs, xe


def _components(mask):
    """4-connected components of mask (H, W) -> boxes (K, 4) as (x0, y0, x1, y1) and pixel counts (K,).
    Runs of consecutive rows are joined where they overlap; union-find over those joins."""
    h, w = mask.shape
    ys, xs, xe = _runs(mask)
    n = len(ys)
    if n == 0:
        return np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    # a run a in row y touches the runs b of row y+1 with xs_b < xe_a and xe_b > xs_a: a contiguous
    # range, found by searching keys that put rows one after another
    stride = w + 2
    key_s, key_e = ys * stride + xs, ys * stride + xe
    lo = np.searchsorted(key_e, (ys + 1) * stride + xs, side="right")
    hi = np.searchsorted(key_s, (ys + 1) * stride + xe, side="left")
    count = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n), count)
    b = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(lo, count)
    parent = np.arange(n)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(a.tolist(), b.tolist()):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    labels = np.array([root(i) for i in range(n)])
    uniq, lab = np.unique(labels, return_inverse=True)
    k = len(uniq)
    boxes = np.empty((k, 4), dtype=np.int64)
    boxes[:, 0], boxes[:, 1] = w, h
    boxes[:, 2:] = 0
    np.minimum.at(boxes[:, 0], lab, xs)
    np.minimum.at(boxes[:, 1], lab, ys)
    np.maximum.at(boxes[:, 2], lab, xe)
    np.maximum.at(boxes[:, 3], lab, ys + 1)
    sizes = np.bincount(lab, weights=xe - xs, minlength=k).astype(np.int64)
    return boxes, sizes


# ----- Plot area -----

def _as_float_rgb(rgb):
    """(H, W), (H, W, 3|4) uint8 or float -> (H, W, 3) float32 in [0, 1]."""
    a = np.asarray(rgb)
    scale = 255.0 if a.dtype == np.uint8 else (65535.0 if a.dtype == np.uint16 else 1.0)
    a = a.astype(np.float32) / scale
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a[..., :3]


def _edge_fill(mask, box):
    """Share of content on each edge line of box: (top, bottom, left, right)."""
    x0, y0, x1, y1 = box
    return (mask[y0, x0:x1].mean(), mask[y1 - 1, x0:x1].mean(),
            mask[y0:y1, x0].mean(), mask[y0:y1, x1 - 1].mean())


def _pull_in(mask, box, cap):
    """Move each edge of box inward past sparse lines (outward tick marks) by at most cap pixels."""
    x0, y0, x1, y1 = box
    for _ in range(cap):
        if y1 - y0 > 2 and mask[y0, x0:x1].mean() < 0.5:
            y0 += 1
        if y1 - y0 > 2 and mask[y1 - 1, x0:x1].mean() < 0.5:
            y1 -= 1
        if x1 - x0 > 2 and mask[y0:y1, x0].mean() < 0.5:
            x0 += 1
        if x1 - x0 > 2 and mask[y0:y1, x1 - 1].mean() < 0.5:
            x1 -= 1
    return x0, y0, x1, y1


def _is_frame_line(line):
    """A line (N, 3) of one colourless colour darker than white: an axes frame (black in matplotlib, dark
    gray in MATLAB) or its anti-aliased edge, not colour-mapped spectrogram content."""
    med = np.median(line, axis=0)
    same = (np.abs(line - med).max(axis=1) <= BG_TOL).mean() >= 0.9
    return same and med.max() - med.min() <= 0.1 and med.mean() <= 0.9


def _strip_frame(rgb, box):
    """Drop up to MAX_FRAME_PX frame lines from each side of box."""
    x0, y0, x1, y1 = box
    for _ in range(MAX_FRAME_PX):
        if y1 - y0 > 2 and _is_frame_line(rgb[y0, x0:x1]):
            y0 += 1
        if y1 - y0 > 2 and _is_frame_line(rgb[y1 - 1, x0:x1]):
            y1 -= 1
        if x1 - x0 > 2 and _is_frame_line(rgb[y0:y1, x0]):
            x0 += 1
        if x1 - x0 > 2 and _is_frame_line(rgb[y0:y1, x1 - 1]):
            x1 -= 1
    return x0, y0, x1, y1


def find_plot_area(rgb):
    """Box (x0, y0, x1, y1) of the plot area of a figure export rgb (H, W[, 3]), or the whole image
    (0, 0, W, H) when it is not recognised as a figure (plain spectrograms are left untouched)."""
    img = _as_float_rgb(rgb)
    h, w = img.shape[:2]
    full = (0, 0, w, h)
    if h < 16 or w < 16:
        return full
    ring = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                           img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    bg = np.median(ring, axis=0)
    if (np.abs(ring - bg).max(axis=1) <= BG_TOL).mean() < RING_UNIFORM:
        return full  # data reaches the border: no margin, nothing to trim
    mask = np.abs(img - bg).max(axis=2) > BG_TOL
    if mask.mean() < 0.02:
        return full
    boxes, _ = _components(mask)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    box = tuple(int(v) for v in boxes[np.argmax(areas)])
    cap = max(20, int(0.05 * max(h, w)))  # outward ticks: 3.5 pt = 15 px at 300 dpi
    box = _pull_in(mask, box, cap)
    x0, y0, x1, y1 = box
    if (x1 - x0) * (y1 - y0) < 0.1 * h * w or min(_edge_fill(mask, box)) < EDGE_FILL:
        return full  # not a solid or framed rectangle: e.g. a blob of signal on a black background
    outside = mask.sum() - mask[y0:y1, x0:x1].sum()
    if outside > 0.5 * (h * w - (x1 - x0) * (y1 - y0)):
        return full  # the "margin" is mostly content: not a figure
    return _strip_frame(img, box)
