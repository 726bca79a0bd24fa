"""
Colour maps of published spectrograms: tables, fitting a data set's pixels to a map, and the round trip
colour -> intensity (stage 1) -> colour (stage 3).

A colour map is a curve through the RGB cube, parameterised by a position in [0, 1]. Tables are sampled
from compact definitions below (no matplotlib at run time):
  jet, hot, gray   piecewise-linear per channel (matplotlib's segment definitions)
  jet_matlab       MATLAB's jet(256), also piecewise linear: its corners differ from matplotlib's jet by
                   up to ~20 8-bit levels, and most radar data sets are MATLAB exports
  viridis, turbo   8-bit anchor colours; linear interpolation between them stays within 1 level of
                   matplotlib's 256-entry tables
  parula           8-bit anchor colours of MATLAB's current (R2017a+) parula(256), within 1 level
Every map has a reversed form `<name>_r` (position 1 - x).

Pixels are float RGB in [0, 1]; distances are Euclidean, in 8-bit levels (x 255).
"""

import numpy as np

# ----- Definitions -----

# Per-channel (position, value) breakpoints.
_SEGMENTS = {
    "jet": (((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
            ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
            ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0))),
    # MATLAB builds jet(m) from ramps of n = m/4 entries; for m = 256 the corners fall on entries
    # 32, 96, 160, 224 (1-based), i.e. positions (i - 1) / 255, and blue starts at 33/64.
    "jet_matlab": (((0.0, 0.0), (95 / 255, 0.0), (159 / 255, 1.0), (223 / 255, 1.0), (1.0, 0.5)),
                   ((0.0, 0.0), (31 / 255, 0.0), (95 / 255, 1.0), (159 / 255, 1.0), (223 / 255, 0.0),
                    (1.0, 0.0)),
                   ((0.0, 33 / 64), (31 / 255, 1.0), (95 / 255, 1.0), (159 / 255, 0.0), (1.0, 0.0))),
    "hot": (((0.0, 0.0416), (0.365079, 1.0), (1.0, 1.0)),
            ((0.0, 0.0), (0.365079, 0.0), (0.746032, 1.0), (1.0, 1.0)),
            ((0.0, 0.0), (0.746032, 0.0), (1.0, 1.0))),
    "gray": (((0.0, 0.0), (1.0, 1.0)),) * 3,
}

# "index:rrggbb" anchors on the 256-entry table (position = index / 255), chosen greedily so that linear
# interpolation between them stays within one 8-bit level of the published table.
_ANCHORS = {
    "viridis": "0:440154 19:481c6e 35:46307e 53:404688 78:34618d 120:23898e 141:1e9d89 154:23a983 "
               "166:2fb47c 181:48c16e 197:69cd5b 216:98d83e 234:c8e020 242:dde318 248:ece51b "
               "254:fbe723 255:fde725",
    "turbo": "0:30123b 7:38276d 14:3f3b97 22:4451bf 30:4666dd 36:4776ee 43:4687fb 49:4196ff 56:37a8fa "
             "63:2ab9ee 74:1ad2d2 81:18dec0 85:1ae4b6 92:27eea4 100:3ff68a 113:71fe5f 121:8fff49 "
             "127:a1fd3d 133:b1f936 143:cbed34 156:e7d739 166:f6c33a 175:fdae35 186:fe9029 198:f66c19 "
             "210:e84b0c 222:d43305 233:bc2002 247:950d01 255:7a0403",
    "parula": "0:3e26a8 11:4331c8 21:463de0 33:484ef1 45:465efb 54:416bfe 62:3677fe 68:2f80fa "
              "81:2b91ef 89:259be8 98:1fa6e2 107:16afd9 112:0bb3d2 116:02b7cc 120:00bac6 124:06bcbf "
              "133:23c1af 141:31c5a1 149:3dca90 159:5acc77 169:7dcc5b 182:abc739 191:c8c129 "
              "196:d6be27 203:e8bb2e 210:f7ba3d 213:fcbc3e 216:fec03b 227:fcd030 239:f5e327 "
              "249:f6f21e 255:f9fb15",
}

BASE_NAMES = ("jet", "jet_matlab", "viridis", "parula", "turbo", "hot", "gray")
NAMES = tuple(n for b in BASE_NAMES for n in (b, b + "_r"))
FINE = 1024        # entries of the table that pixels are matched against
DEFAULT_MAX_RESIDUAL = 6.0   # levels; covers 8-bit rounding and mild JPEG noise, far below off-map colours
DEFAULT_QUANTILE = 0.9       # up to 10% of pixels may be background, text or annotation
# JPEG chroma noise and a figure's resampling (blends of neighbouring pixels' colours, far off the curve
# where speckle makes neighbours differ) push the 90th percentile past the limit while most pixels stay on
# the map: then the median must fit and every other family must be NOISY_MARGIN x further away
NOISY_QUANTILE = 0.5
NOISY_MARGIN = 5.0


def _split(name):
    """'jet_r' -> ('jet', True); raises ValueError for unknown names."""
    if name not in NAMES:
        raise ValueError(f"unknown colour map {name!r}; known: {', '.join(NAMES)}")
    return (name[:-2], True) if name.endswith("_r") else (name, False)


def _anchor_points(spec):
    """'i:rrggbb ...' -> positions (K,), colours (K, 3) in [0, 1]."""
    pairs = [item.split(":") for item in spec.split()]
    pos = np.array([int(i) / 255 for i, _ in pairs])
    rgb = np.array([[int(h[k:k + 2], 16) / 255 for k in (0, 2, 4)] for _, h in pairs])
    return pos, rgb


def curve(name, x):
    """Colours of map `name` at positions x: (...) in [0, 1] -> (..., 3) float64 in [0, 1]."""
    base, reverse = _split(name)
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    if reverse:
        x = 1.0 - x
    if base in _SEGMENTS:
        chans = [np.interp(x, [p for p, _ in seg], [v for _, v in seg]) for seg in _SEGMENTS[base]]
    else:
        pos, rgb = _anchor_points(_ANCHORS[base])
        chans = [np.interp(x, pos, rgb[:, c]) for c in range(3)]
    return np.stack(chans, axis=-1)


def table(name, n=256):
    """(n, 3) float64 table of map `name`, entry i at position i / (n - 1)."""
    return curve(name, np.linspace(0.0, 1.0, n))


# ----- Nearest point on a map -----

def _nearest_vertex(pixels, verts, chunk=8192):
    """Index of the nearest vertex for each pixel: pixels (N, 3), verts (M, 3) -> (N,) int.
    |p - v|^2 = |p|^2 - 2 p.v + |v|^2; |p|^2 is constant per row so it drops out of the argmin."""
    v32 = verts.astype(np.float32)
    vnorm = (v32 * v32).sum(1)
    out = np.empty(len(pixels), dtype=np.int64)
    for s in range(0, len(pixels), chunk):
        p = pixels[s:s + chunk].astype(np.float32)
        out[s:s + chunk] = np.argmin(vnorm[None, :] - 2.0 * (p @ v32.T), axis=1)
    return out


def _project(pixels, verts):
    """Nearest point on the polyline through verts (M, 3) for pixels (N, 3).
    Returns positions (N,) in [0, 1] and distances (N,) in 8-bit levels. The nearest vertex is refined on
    its two adjacent segments, so a pixel exactly on the map gets distance ~0 and its exact position."""
    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 3)
    m = len(verts)
    k = _nearest_vertex(pixels, verts)
    best_t = k.astype(np.float64)
    best_d = np.linalg.norm(pixels - verts[k], axis=1)
    runs = _flat_runs(verts)
    first, last = np.arange(m), np.arange(m)
    for start, end in runs:
        first[start:end + 1], last[start:end + 1] = start, end
    # segments entering and leaving the nearest vertex (or the run of identical vertices it belongs to)
    for a_idx in (first[k] - 1, last[k]):
        a_idx = np.clip(a_idx, 0, m - 2)
        a, b = verts[a_idx], verts[a_idx + 1]
        ab = b - a
        denom = np.maximum((ab * ab).sum(1), 1e-18)
        u = np.clip(((pixels - a) * ab).sum(1) / denom, 0.0, 1.0)
        d = np.linalg.norm(pixels - (a + u[:, None] * ab), axis=1)
        better = d < best_d - 1e-12
        best_d = np.where(better, d, best_d)
        best_t = np.where(better, a_idx + u, best_t)
    for start, end in runs:
        # a stretch of one colour (matplotlib's jet is pure blue on [0.11, 0.125]) cannot be resolved:
        # the middle of the stretch halves the worst-case error
        inside = (best_t >= start - 1e-9) & (best_t <= end + 1e-9)
        best_t[inside] = 0.5 * (start + end)
    return best_t / (m - 1), best_d * 255.0


def _flat_runs(verts, tol=1e-9):
    """[(first, last)] vertex indices of runs of identical consecutive vertices (M, 3)."""
    same = np.linalg.norm(np.diff(verts, axis=0), axis=1) < tol
    runs, start = [], None
    for i, s in enumerate(same):
        if s and start is None:
            start = i
        elif not s and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(verts) - 1))
    return runs


def _on_8bit_grid(rgb):
    """True when every value is a multiple of 1/255 (an 8-bit file): then unique colours are few."""
    return bool(np.all(np.abs(rgb * 255.0 - np.round(rgb * 255.0)) < 1e-4))


def _project_image(rgb, name):
    """(..., 3) -> positions (...), distances (...). 8-bit inputs are matched once per unique colour,
    which is what makes whole-image inversion cheap (a colour-mapped PNG has <= a few thousand colours)."""
    flat = np.asarray(rgb, dtype=np.float64).reshape(-1, 3)
    verts = table(name, FINE)
    if len(flat) > 1024 and _on_8bit_grid(flat):
        q = np.round(flat * 255.0).astype(np.int64)
        keys = (q[:, 0] << 16) | (q[:, 1] << 8) | q[:, 2]
        uniq, inverse = np.unique(keys, return_inverse=True)
        colours = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1) / 255.0
        pos, dist = _project(colours, verts)
        pos, dist = pos[inverse], dist[inverse]
    else:
        pos, dist = _project(flat, verts)
    shape = np.shape(rgb)[:-1]
    return pos.reshape(shape), dist.reshape(shape)


# ----- Fitting a data set -----

def _sample(pixels, max_pixels, seed):
    """(N, 3) -> at most max_pixels rows, a deterministic random subset."""
    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 3)
    if len(pixels) > max_pixels:
        pixels = pixels[np.random.default_rng(seed).choice(len(pixels), max_pixels, replace=False)]
    return pixels


def _extreme(pixels, tol=2.0 / 255):
    """Pure white or pure black pixels: figure backgrounds and annotation, ignored for the residual
    (gray and hot keep plenty of other pixels to be recognised by)."""
    return np.all(pixels <= tol, axis=1) | np.all(pixels >= 1.0 - tol, axis=1)


def _fit(pixels, quantiles, max_pixels, seed):
    """{quantile: [(name, residual, median position, fraction within 3 levels)] for every map, unsorted}:
    each pixel is projected on each map once, whatever the number of quantiles.
    A map and its reverse are the same set of colours, so they get the same residual; the orientation
    is decided by a prior instead: most of a spectrogram is noise floor, so the median pixel sits in
    the lower half of the map (dark for gray/hot, blue for jet)."""
    pixels = _sample(pixels, max_pixels, seed)
    if len(pixels) == 0:
        raise ValueError("fit_colormap: no pixels")
    # fitting works at 8-bit precision (<= 0.87 levels of rounding): then each unique colour is matched
    # once, and a colour-mapped set has only a few hundred of them
    pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255.0) / 255.0
    keep = ~_extreme(pixels)
    if keep.sum() < max(10, 0.01 * len(pixels)):  # an all black/white set: judge it on everything
        keep[:] = True
    rows = {q: [] for q in quantiles}
    for base in BASE_NAMES:
        pos, dist = _project_image(pixels, base)
        near = dist <= 3.0
        median = float(np.median(pos[near])) if near.any() else float(np.median(pos))
        on_map = float(near[keep].mean())
        for q, residual in zip(quantiles, np.quantile(dist[keep], quantiles)):
            rows[q].append((base, float(residual), median, on_map))
            rows[q].append((base + "_r", float(residual), 1.0 - median, on_map))
    return rows


def _rank(rows):
    """Sort _fit rows best first: residual, then orientation (median in the lower half), then NAMES order."""
    return sorted(rows, key=lambda r: (round(r[1], 6), r[2] > 0.5, NAMES.index(r[0])))


def fit_colormap(pixels, quantile=DEFAULT_QUANTILE, max_pixels=20000, seed=0):
    """Rank the known maps for a data set's pixels (N, 3) float in [0, 1].

    Returns [(name, residual)] best first; residual = the `quantile` of the per-pixel distance (8-bit
    levels) to the nearest colour on the map, pure white/black pixels left out. Ties (a map and its
    reverse) are broken by orientation: the one putting the median pixel in the lower half comes first.
    """
    rows = _fit(pixels, (quantile,), max_pixels, seed)[quantile]
    return [(name, residual) for name, residual, _, _ in _rank(rows)]


def detect_colormap(pixels, max_residual=DEFAULT_MAX_RESIDUAL, quantile=DEFAULT_QUANTILE,
                    max_pixels=20000, seed=0):
    """Which map a data set uses: pixels (N, 3) float in [0, 1] ->
    {'name': str or None, 'residual': float (levels), 'runner_up': (name, residual), 'reason': str}.
    name is None when even the best map leaves `quantile` of the pixels further than max_residual
    levels away (the set stays RGB) unless the median pixel fits and every other family is far (noisy
    exports, see NOISY_QUANTILE); the reason names the best map and its residual either way. runner_up is
    the best map of another family; quantile is the one the residual was taken at."""
    fits = _fit(pixels, (quantile, NOISY_QUANTILE), max_pixels, seed)

    def best_and_runner(q):
        rows = _rank(fits[q])
        # the best map of another family (neither the winner's reverse nor another jet)
        return rows[0], next((r[0], r[1]) for r in rows if r[0].split("_")[0] != rows[0][0].split("_")[0])

    (name, residual, median, on_map), runner = best_and_runner(quantile)
    pct = int(round(quantile * 100))
    if residual > max_residual:
        (name50, residual50, median50, _), runner50 = best_and_runner(NOISY_QUANTILE)
        if residual50 <= max_residual and runner50[1] >= NOISY_MARGIN * max(residual50, 1.0):
            return {"name": name50, "residual": residual50, "runner_up": runner50, "quantile": NOISY_QUANTILE,
                    "reason": f"{name50}: median distance {residual50:.1f} levels <= {max_residual:g}, every "
                              f"other map at least {NOISY_MARGIN:g}x further ({runner50[0]}: {runner50[1]:.1f}); "
                              f"the {pct}th percentile ({residual:.1f}) is JPEG or resampling noise; "
                              f"orientation: the median pixel sits at {median50:.2f} on {name50}"}
        return {"name": None, "residual": residual, "runner_up": runner, "quantile": quantile,
                "reason": f"no colour map fits: best is {name} with {pct}th-percentile distance "
                          f"{residual:.1f} levels > {max_residual:g} ({on_map:.0%} of pixels within 3 "
                          f"levels); kept as RGB"}
    return {"name": name, "residual": residual, "runner_up": runner, "quantile": quantile,
            "reason": f"{name}: {pct}th-percentile distance {residual:.1f} levels <= {max_residual:g} "
                      f"({on_map:.0%} of pixels within 3 levels); orientation: the median pixel sits at "
                      f"{median:.2f} on {name} (the noise floor is taken to be the low end)"}


# ----- Round trip -----

def invert_colormap(rgb, name, return_distance=False):
    """Positions on map `name` of an image: rgb (H, W, 3) float in [0, 1] -> intensity (H, W) float32
    in [0, 1]; with return_distance also the per-pixel distance (H, W) float32 in 8-bit levels, which
    marks annotation or off-map pixels."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"invert_colormap: expected (H, W, 3), got {rgb.shape}")
    pos, dist = _project_image(rgb, name)
    pos = pos.astype(np.float32)
    return (pos, dist.astype(np.float32)) if return_distance else pos


def apply_colormap(intensity, name):
    """Colours of intensities (H, W) in [0, 1] (clipped) on map `name` -> (H, W, 3) float32 in [0, 1];
    every output pixel lies on the map, so stage 3 writes images in the data set's own palette."""
    return curve(name, np.nan_to_num(np.asarray(intensity, dtype=np.float64), nan=0.0)).astype(np.float32)
