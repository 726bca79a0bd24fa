"""Draws docs/trim_example.png for the README: a figure export (matplotlib, jet, axes, labels, colour bar)
with the plot area stage 1 finds outlined in magenta, and the trimmed result beside it.

    python docs/make_trim_example.py      (needs matplotlib, which only the tests require)
"""

import os
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipeline.figure_trim import find_plot_area  # noqa: E402


def figure_export():
    """A MATLAB/matplotlib-style figure export of a synthetic walking spectrogram: uint8 (H, W, 3)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 160)[None, :]
    f = np.linspace(-1, 1, 96)[:, None]
    s = 0.2 + 0.06 * rng.standard_normal((96, 160))
    s += 0.7 * np.exp(-((f - 0.5 * np.sin(2 * np.pi * 2 * t)) ** 2) / 0.01) + 0.5 * np.exp(-(f ** 2) / 0.004)
    fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=80, layout="constrained")
    im = ax.imshow(np.clip(s, 0, 1) * 60 - 60, cmap="jet", aspect="auto", origin="lower", extent=[0, 3, -200, 200])
    ax.set_xlabel("Time (s)")
    ax.set_ylabel("Doppler (Hz)")
    ax.set_title("Walking")
    fig.colorbar(im, ax=ax, label="Power (dB)")
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def main(path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "trim_example.png")):
    img = figure_export()
    x0, y0, x1, y1 = find_plot_area(img)
    left = Image.fromarray(img)
    ImageDraw.Draw(left).rectangle([x0 - 1, y0 - 1, x1, y1], outline=(255, 0, 255), width=2)
    right = Image.fromarray(img[y0:y1, x0:x1])
    gap = 16
    canvas = Image.new("RGB", (left.width + gap + right.width, left.height), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, (left.height - right.height) // 2))
    canvas.quantize(colors=128).save(path, optimize=True)   # a palette PNG keeps it small
    print(f"{path}: box {x0},{y0},{x1},{y1}, {os.path.getsize(path) // 1024} KB")


if __name__ == "__main__":
    main()
