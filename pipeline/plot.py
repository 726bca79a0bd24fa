"""
Every picture the pipeline writes, drawn with matplotlib: the stage 2 loss curve (loss.png), the evaluation
bars (eval.png), line plots of the benchmarks, and the labelled image grids of all stages (class names at
the left of each row, real and generated rows told apart).

matplotlib is imported only when a picture is drawn, and only through its object interface with the Agg
canvas: no pyplot, no display, and the backend a notebook chose for its own plots is left alone.
"""

import math

import numpy as np

from pipeline.common import atomic_path

# Colours: matplotlib's default cycle; kinds of grid rows and of evaluation bars share them.
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
KIND_COLORS = {"real": "#1f77b4", "generated": "#d62728", "reconstructed": "#ff7f0e"}
BEST_COLOR = "#ffbf00"      # the best.pt marker
GRID_DPI = 128              # a power of two: pixel sizes / dpi * dpi are exact, the grid lands 1:1 on pixels
GRID_MIN_CELL = 48          # smaller images (latent maps) are enlarged x2, x3... so that labels fit beside them


def _figure(width_in, height_in, dpi=100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, **kwargs):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **kwargs)


def _finite(xs, ys, positive=False):
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y) and (y > 0 or not positive)]
    return [p[0] for p in pts], [p[1] for p in pts]


def readable_log_axis(axis, lo, hi):
    """Tick labels on a log axis as plain numbers (0.05, 0.1, 0.2 ...) instead of powers of ten, with
    enough ticks to read values off it even when the data span less than a decade."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator
    if not (lo > 0 and hi > lo):
        return
    if hi / lo < 10:   # less than a decade: evenly spaced round values, as on a linear axis
        ticks = [t for t in MaxNLocator(nbins=5).tick_values(lo, hi) if lo <= t <= hi and t > 0]
        axis.set_major_locator(FixedLocator(ticks if len(ticks) >= 2 else [lo, hi]))
        axis.set_minor_locator(NullLocator())
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if hi / lo < 1e3 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend_outside(ax):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, fontsize=9)


# --------------------------------------------------------------------------------
#                                  Line plots
# --------------------------------------------------------------------------------

def line_plot(series, path, title="", xlabel="", ylabel="", log_y=False, log_x=False, size=(8.0, 4.5), vlines=None,
              styles=None):
    """series: {label: (xs, ys)} -> PNG with a grid, readable ticks and the legend outside the data. vlines:
    {label: x} dashed vertical markers; styles: {label: matplotlib line keywords}; size in inches (100 px each).
    Returns the figure."""
    fig = _figure(*size)
    ax = fig.add_subplot()
    for i, (label, (xs, ys)) in enumerate(series.items()):
        xs, ys = _finite(xs, ys, positive=log_y)
        style = dict(dict(color=COLORS[i % len(COLORS)], linewidth=1.6, marker="o" if len(xs) < 40 else None,
                          markersize=3.5), **(styles or {}).get(label, {}))
        ax.plot(xs, ys, label=label, **style)
    for label, x in (vlines or {}).items():
        ax.axvline(x, color="black", linestyle="--", linewidth=1.2, label=label)
    _axes(ax, title, xlabel, ylabel, log_x, log_y)
    _legend_outside(ax)
    _save(fig, path, bbox_inches="tight")
    return fig


def _axes(ax, title, xlabel, ylabel, log_x=False, log_y=False):
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    if log_x and ax.has_data():
        ax.set_xscale("log")
        readable_log_axis(ax.xaxis, *ax.get_xlim())
    if log_y and ax.has_data():
        ax.set_yscale("log")
        readable_log_axis(ax.yaxis, *ax.get_ylim())


def loss_plot(path, train, heldout_loss=None, heldout_score=None, best_step=None,
              title="stage 2: loss and held-out signal"):
    """loss.png: train loss and the held-out loss at fixed t (log scale) above the held-out score, the step of
    best.pt marked in both (dashed line, star on the score). Series are (steps, values). Returns the figure."""
    panels = 2 if heldout_score and heldout_score[0] else 1
    fig = _figure(8.0, 3.2 * panels + 0.6)
    axes = [fig.add_subplot(panels, 1, 1)]
    if panels == 2:
        axes.append(fig.add_subplot(2, 1, 2, sharex=axes[0]))
    top = axes[0]
    xs, ys = _finite(*train, positive=True)
    top.plot(xs, ys, color=COLORS[0], linewidth=1.4, label="train loss (mean over the log interval)")
    if heldout_loss and heldout_loss[0]:
        xs, ys = _finite(*heldout_loss, positive=True)
        top.plot(xs, ys, color=COLORS[1], linewidth=1.6, marker="o", markersize=4, label="held-out loss at fixed t")
    _axes(top, title, "" if panels == 2 else "step", "loss", log_y=True)
    if panels == 2:
        ax = axes[1]
        xs, ys = _finite(*heldout_score, positive=True)
        ax.plot(xs, ys, color=COLORS[2], linewidth=1.6, marker="o", markersize=4,
                label="held-out score\n(sample FD x (2 - tstr), lower is better)")
        if best_step in xs:
            ax.plot([best_step], [ys[xs.index(best_step)]], linestyle="none", marker="*", markersize=16,
                    markerfacecolor=BEST_COLOR, markeredgecolor="black", label="best score")
        _axes(ax, "", "step", "held-out score", log_y=True)
    if best_step is not None:
        for i, ax in enumerate(axes):
            ax.axvline(best_step, color="black", linestyle="--", linewidth=1.2,
                       label=f"best.pt (step {best_step})" if i == 0 else None)
    for ax in axes:
        _legend_outside(ax)
    _save(fig, path, bbox_inches="tight")
    return fig


# --------------------------------------------------------------------------------
#                               Evaluation bars
# --------------------------------------------------------------------------------

# (row label, [(eval.json key, role)]): each metric of the generated images beside its real reference.
EVAL_ROWS = [
    ("generated_accuracy\nvs real_accuracy", [("generated_accuracy", "generated"), ("real_accuracy", "real"),
                                              ("reconstruction_accuracy", "reconstructed")]),
    ("tstr_accuracy\nvs real_only_accuracy", [("tstr_accuracy", "generated"), ("real_only_accuracy", "real"),
                                              ("reconstruction_tstr_accuracy", "reconstructed")]),
    ("augmented_accuracy\nvs real_only_accuracy", [("augmented_accuracy", "generated"),
                                                   ("real_only_accuracy", "real")]),
    ("precision, recall\n(classifier features)", [("precision", "generated"), ("recall", "generated")]),
    ("precision_latent, recall_latent\n(tokenizer latents)", [("precision_latent", "generated"),
                                                              ("recall_latent", "generated")]),
    ("memorisation_fraction\n(lower is better)", [("memorisation_fraction", "generated")]),
]
ROLE_LEGEND = {"generated": "generated images", "real": "real reference (held-out real)",
               "reconstructed": "tokenizer reference (real images, encoded and decoded)"}


def eval_plot(result, path):
    """eval.png: each headline metric of eval.json beside its real reference (bars, values written on them),
    and per class the classifier's accuracy on generated vs held-out real images. Returns the figure."""
    rows = [(label, [(k, role) for k, role in bars if k in result]) for label, bars in EVAL_ROWS]
    rows = [(label, bars) for label, bars in rows if bars]
    per_class = result.get("per_class") or {}
    fig = _figure(12.0 if per_class else 7.5, max(3.5, 0.3 * sum(len(b) for _, b in rows) + 0.2 * len(rows) + 1.5))
    ax = fig.add_subplot(1, 2, 1) if per_class else fig.add_subplot()
    y, ticks, seen = 0.0, [], set()
    for label, bars in rows:
        first = y
        for key, role in bars:
            v = result[key]
            ok = v is not None and math.isfinite(v)
            ax.barh(y, v if ok else 0.0, height=0.8, color=KIND_COLORS[role],
                    alpha=1.0 if role == "generated" else 0.55, label=None if role in seen else ROLE_LEGEND[role])
            seen.add(role)
            ax.text((v if ok else 0.0) + 0.015, y, f"{key} {v:.3f}" if ok else f"{key} n/a", va="center", fontsize=8)
            y += 1.0
        ticks.append(((first + y - 1.0) / 2, label))
        y += 0.6
    ax.set_yticks([t for t, _ in ticks], [lab for _, lab in ticks], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.6)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    ax.grid(True, axis="x", alpha=0.3)
    fd = f"FD (classifier features) {result['fd_classifier']:.3g}" if result.get("fd_classifier") is not None else ""
    if result.get("fd_latent") is not None:
        fd += f", FD (latents) {result['fd_latent']:.3g}"
    ax.set_title(f"evaluation: {result.get('num_generated', '?')} generated vs {result.get('num_real', '?')} held-out "
                 f"real\n{fd}", fontsize=10, loc="left")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=1, frameon=False, fontsize=8)
    if per_class:
        _per_class_bars(fig.add_subplot(1, 2, 2), per_class)
    fig.tight_layout()
    _save(fig, path, bbox_inches="tight")
    return fig


def _per_class_bars(ax, per_class):
    names = list(per_class)
    pos = np.arange(len(names))
    for offset, key, role in ((-0.2, "generated_accuracy", "generated"), (0.2, "real_accuracy", "real")):
        vals = [per_class[n].get(key) for n in names]
        vals = [v if v is not None and math.isfinite(v) else 0.0 for v in vals]
        ax.barh(pos + offset, vals, height=0.4, color=KIND_COLORS[role], alpha=1.0 if role == "generated" else 0.55,
                label=key)
    ax.set_yticks(pos, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("per class: classifier accuracy", fontsize=10, loc="left")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, frameon=False, fontsize=8)


# --------------------------------------------------------------------------------
#                               Labelled image grids
# --------------------------------------------------------------------------------

def grid_layout(rows, pad=2, min_cell=GRID_MIN_CELL):
    """(scale, cell height, grid width, grid height) in output pixels of the image part of a labelled grid:
    images smaller than `min_cell` are enlarged by an integer factor (nearest neighbour)."""
    h, w = rows[0][0].shape[-2:]
    ncol = max(len(r) for r in rows)
    scale = max(1, math.ceil(min_cell / h))
    return scale, h * scale, (ncol * (w + pad) + pad) * scale, (len(rows) * (h + pad) + pad) * scale


def labelled_grid(rows, path, row_labels, gray=False, row_kinds=None, col_labels=None, title=None, pad=2):
    """rows: list of lists of (3, H, W) tensors in [-1, 1] -> PNG: the image grid (pipeline.images.make_grid) at
    one image pixel per output pixel (or an integer multiple for small images), a strip at its left with each
    row's label (class name) and kind ('real', 'generated', ...: colour-coded, with a bar of that colour beside
    the row), and a header with the title and the column labels. The PNG is (strip + grid width) x (header +
    grid height) pixels, wider only when the title needs it. Returns (width, height, strip width, header
    height)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import Rectangle
    from pipeline.images import make_grid

    scale, cell_h, grid_w, grid_h = grid_layout(rows, pad)
    image = np.asarray(make_grid(rows, gray, pad).convert("RGB"))
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    w = rows[0][0].shape[-1]
    font_px = min(14.0, max(9.0, 0.22 * cell_h))
    to_pt = 72.0 / GRID_DPI
    row_kinds = row_kinds or [None] * len(rows)
    texts = [str(t) for t in row_labels] + [str(k) for k in row_kinds if k]
    measure = _figure(1, 1, dpi=GRID_DPI).canvas.get_renderer()
    font = FontProperties(size=font_px * to_pt, weight="bold")
    text_w = max(measure.get_text_width_height_descent(t, font, ismath=False)[0] for t in texts)
    bar_w, margin = 6, 8
    strip = int(math.ceil(text_w)) + 2 * margin + bar_w + 2
    line_h = int(math.ceil(font_px * 1.5))
    header = (line_h if title else 0) + (line_h if col_labels else 0) + (6 if title or col_labels else 0)
    col_px = font_px
    if col_labels:   # column labels shrink (to 7 px) to fit above their column
        widest = max(measure.get_text_width_height_descent(str(t), FontProperties(size=font_px * to_pt),
                                                            ismath=False)[0] for t in col_labels)
        col_px = max(7.0, min(font_px, font_px * (w * scale - 4) / max(widest, 1.0)))
    title_w = measure.get_text_width_height_descent(title, FontProperties(size=font_px * to_pt), ismath=False)[0] \
        if title else 0
    width, height = max(strip + grid_w, int(math.ceil(title_w)) + 2 * margin), header + grid_h

    fig = _figure(width / GRID_DPI, height / GRID_DPI, dpi=GRID_DPI)
    fig.patch.set_facecolor("white")
    fig.figimage(image, xo=strip, yo=0, origin="upper")

    def at(x, y_from_top):   # output pixels (from the top left) -> figure fraction
        return x / width, 1.0 - y_from_top / height

    if title:
        fig.text(*at(margin, 3 + line_h / 2), title, ha="left", va="center", fontsize=font_px * to_pt)
    if col_labels:
        for j, label in enumerate(col_labels):
            x = strip + (pad + j * (w + pad) + w / 2) * scale
            fig.text(*at(x, header - 3 - line_h / 2), str(label), ha="center", va="center", fontsize=col_px * to_pt)
    for i, (label, kind) in enumerate(zip(row_labels, row_kinds)):
        centre = header + (pad + i * (cell_h / scale + pad)) * scale + cell_h / 2
        color = KIND_COLORS.get(kind, "#444444")
        lines = [(str(label), "black")] + ([(str(kind), color)] if kind else [])
        for k, (text, c) in enumerate(lines):
            y = centre + (k - (len(lines) - 1) / 2) * font_px * 1.25
            fig.text(*at(strip - bar_w - margin, y), text, ha="right", va="center", color=c,
                     fontsize=font_px * to_pt, fontweight="bold" if k == 0 else "normal")
        if kind:
            x0, y0 = at(strip - bar_w - 2, centre + cell_h / 2)
            fig.add_artist(Rectangle((x0, y0), bar_w / width, cell_h / height, transform=fig.transFigure,
                                     facecolor=color, edgecolor="none"))
    _save(fig, path, dpi=GRID_DPI)
    return width, height, strip, header
