"""Pictures (pipeline/plot.py) and the stage 2 progress bar: what they draw, not just that a file exists."""

import io
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import plot, train
from pipeline.images import make_grid


def _rows(n_rows, n_cols, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.rand(3, size, size, generator=g) * 2 - 1 for _ in range(n_cols)] for _ in range(n_rows)]


def _rgb(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.mark.parametrize("size", [64, 16])   # 16 px latent maps are enlarged x3 for the labels
def test_labelled_grid_is_the_grid_one_to_one_beside_a_label_strip(tmp_path, size):
    rows = _rows(4, 3, size)
    path = tmp_path / "grid.png"
    width, height, strip, header = plot.labelled_grid(
        rows, path, ["walking", "walking", "running", "running"], row_kinds=["real", "generated"] * 2,
        col_labels=["a", "b", "c"], title="t")
    scale, cell, grid_w, grid_h = plot.grid_layout(rows)
    assert scale == (1 if size == 64 else 3) and cell == size * scale
    img = _rgb(path)
    assert img.shape[:2] == (height, width) == (header + grid_h, strip + grid_w) and strip > 0 and header > 0
    # the image part is make_grid's output, pixel for pixel (enlarged by whole pixels)
    expected = np.asarray(make_grid(rows, gray=False).convert("RGB")).repeat(scale, 0).repeat(scale, 1)
    assert np.array_equal(img[header:, strip:], expected)
    # every row has a label: ink in the strip beside each row, and the kind bar in its colour
    for i in range(4):
        top = header + (2 + i * (size + 2)) * scale
        band = img[top:top + cell, :strip]
        assert (band < 200).any(axis=2).sum() > 20, i
        kind = "real" if i % 2 == 0 else "generated"
        colour = np.array([int(plot.KIND_COLORS[kind][k:k + 2], 16) for k in (1, 3, 5)])
        assert (np.abs(band - colour).sum(axis=2) < 30).sum() >= cell, (i, kind)
    assert (img[:header] < 200).any()      # title and column labels


def test_loss_plot_marks_best_step_on_log_axes(tmp_path):
    steps = list(range(10, 210, 10))
    checks = list(range(40, 240, 40))
    score = [9.0, 4.0, 3.0, 5.0, 8.0]      # best at step 120
    fig = plot.loss_plot(tmp_path / "loss.png", (steps, [1.0 / s for s in steps]),
                         (checks, [0.2, 0.15, 0.14, 0.16, 0.2]), (checks, score), best_step=120)
    top, bottom = fig.axes
    assert top.get_yscale() == bottom.get_yscale() == "log"
    stars = [ln for ln in bottom.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == [120] and list(stars[0].get_ydata()) == [3.0]
    assert any(list(ln.get_xdata()) == [120, 120] for ln in top.get_lines())   # the dashed best.pt line
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert "best.pt (step 120)" in labels and any("train loss" in t for t in labels)
    # legends sit right of the data, tick labels are plain numbers (not only powers of ten)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert top.get_legend().get_window_extent(renderer).x0 >= top.get_window_extent(renderer).x1
    ticks = [t.get_text() for t in bottom.get_yticklabels() if t.get_text()]
    assert len(ticks) >= 3 and all(float(t) > 0 for t in ticks)
    img = _rgb(tmp_path / "loss.png")
    gold = np.array([0xff, 0xbf, 0x00])
    assert (np.abs(img - gold).sum(axis=2) < 40).sum() > 20   # the star is drawn


def test_eval_plot_puts_each_metric_beside_its_real_reference(tmp_path):
    result = dict(real_accuracy=1.0, generated_accuracy=0.93, tstr_accuracy=0.9, real_only_accuracy=0.97,
                  augmented_accuracy=0.98, precision=0.8, recall=0.6, memorisation_fraction=0.0, fd_classifier=3.2,
                  num_generated=20, num_real=10, per_class={"a": dict(real_accuracy=1.0, generated_accuracy=0.9),
                                                            "b": dict(real_accuracy=1.0, generated_accuracy=None)})
    fig = plot.eval_plot(result, tmp_path / "eval.png")
    assert Image.open(tmp_path / "eval.png").size[0] > 400
    main, per_class = fig.axes
    rows = [t.get_text() for t in main.get_yticklabels()]
    assert "generated_accuracy\nvs real_accuracy" in rows and "tstr_accuracy\nvs real_only_accuracy" in rows
    values = [t.get_text() for t in main.texts]
    assert "generated_accuracy 0.930" in values and "real_accuracy 1.000" in values
    assert "augmented_accuracy 0.980" in values and values.count("real_only_accuracy 0.970") == 2
    assert not any("latent" in t for t in rows)      # no tokenizer: no latent rows
    assert [t.get_text() for t in per_class.get_yticklabels()] == ["a", "b"]


def test_eta_is_the_earlier_of_max_steps_and_time_budget():
    assert train.eta_seconds(10, 5.0, 100) == (50.0, "max_steps")
    assert train.eta_seconds(10, 5.0, 100, budget_left_s=20.0) == (20.0, "time budget")
    assert train.eta_seconds(10, 5.0, 100, budget_left_s=80.0) == (50.0, "max_steps")
    assert train.eta_seconds(0, 0.0, 100) == (None, None)
    assert train.eta_seconds(0, 0.0, 100, budget_left_s=-3.0) == (0.0, "time budget")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal_outside_ci(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Tty())
    monkeypatch.setattr(sys, "stderr", _Tty())
    monkeypatch.delenv("CI", raising=False)
    assert train.progress_enabled(0) and not train.progress_enabled(1)
    monkeypatch.setenv("CI", "true")
    assert not train.progress_enabled(0)
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys, "stderr", io.StringIO())   # redirected: quiet
    assert not train.progress_enabled(0)


def test_progress_bar_shows_steps_speed_loss_and_eta(monkeypatch):
    err = _Tty()
    monkeypatch.setattr(sys, "stdout", _Tty())
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.delenv("CI", raising=False)
    run = SimpleNamespace(step=5, max_steps=105, rank=0, cfg={"train": {"batch_size": 8}})
    with train.TrainProgress(run, t_start=time.time() - 10.0, budget=None) as progress:
        progress.logged(dict(loss=0.1234, images_per_s=4.0))
        progress.update(15)
        progress.bar.refresh()
    text = err.getvalue()
    assert "15/105" in text and "loss 0.1234" in text and "img/s" in text and "(max_steps)" in text
