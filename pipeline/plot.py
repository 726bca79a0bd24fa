"""Tiny line plots with Pillow (no plotting dependency): loss curves, evaluation and sampler summaries."""

import math

from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def line_plot(series, path, title="", xlabel="", ylabel="", log_y=False, size=(640, 400), vlines=None):
    """series: {label: (xs, ys)} -> PNG with axes, min/max tick labels and a legend; vlines: {label: x}
    dashed vertical markers (e.g. the chosen checkpoint)."""
    w, h = size
    left, right, top, bottom = 70, 20, 30, 45
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if y is not None and math.isfinite(y)
           and (not log_y or y > 0)]
    d.text((left, 8), title, fill="black")
    if not pts:
        img.save(path)
        return
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(f(p[1]) for p in pts), max(f(p[1]) for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)

    def to_px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (f(y) - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        d.text((4, h - bottom - frac * (h - top - bottom) - 6), f"{(10 ** yv if log_y else yv):.3g}", fill="black")
        xv = x0 + frac * (x1 - x0)
        d.text((left + frac * (w - left - right) - 10, h - bottom + 5), f"{xv:.4g}", fill="black")
    d.text((w // 2 - 20, h - 18), xlabel, fill="black")
    d.text((4, top - 18), ylabel, fill="black")
    for i, (label, (xs, ys)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        line = [to_px(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y) and (not log_y or y > 0)]
        if len(line) > 1:
            d.line(line, fill=color, width=2)
        for p in line if len(line) < 40 else []:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=color)
        d.text((w - right - 250, top + 5 + 14 * i), label, fill=color)
    for j, (label, x) in enumerate((vlines or {}).items()):
        px = to_px(x, 10 ** y0 if log_y else y0)[0]
        for y in range(top, h - bottom, 8):
            d.line([(px, y), (px, min(y + 4, h - bottom))], fill="black", width=2)
        d.text((min(px + 4, w - right - 120), top + 5 + 14 * (len(series) + j)), label, fill="black")
    img.save(path)
