"""The spectrograms people actually have (issue 13): colour maps, figure exports, numeric formats, hygiene.

All data is synthetic and small. The pure modules first, then stage 1 (tiny tokenizer), one jet set through
stages 1 -> 2 -> 3, and the preprocessing the stages share.
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

from pipeline import colormaps as cm
from pipeline.figure_trim import find_plot_area, parse_trim, resolve_trim
from pipeline.hygiene import NEAR_MAX_DIFF, _near_pairs, aspect_warnings, duplicate_groups, thumbnail, walk_images
from pipeline.value_range import bit_depth_usage, dataset_range, read_raw, scale_to_unit

LEVEL = 1 / 255


# ----- Helpers -----

def spectrogram(rng, h=48, w=96, floor=0.2):
    """(h, w) float in [0, 1] shaped like a micro-Doppler spectrogram: a noisy floor below the middle
    of the range and a sinusoidal torso/limb signature above it."""
    t = np.linspace(0, 1, w)[None, :]
    f = np.linspace(-1, 1, h)[:, None]
    s = floor + 0.06 * rng.standard_normal((h, w))
    s += 0.7 * np.exp(-((f - 0.5 * np.sin(2 * np.pi * 2 * t)) ** 2) / 0.01)
    s += 0.5 * np.exp(-(f ** 2) / 0.004)
    return np.clip(s, 0, 1)


def to_8bit(rgb):
    """Float RGB -> the float values an 8-bit file would hold."""
    return np.round(np.asarray(rgb) * 255) / 255


def flat_stretch(name, x):
    """Positions where `name` is one constant colour (matplotlib's jet is pure blue on [0.11, 0.125]),
    widened by a level: no inversion can resolve them."""
    if name == "jet":
        return (x > 0.11 - 1.5 * LEVEL) & (x < 0.125 + 1.5 * LEVEL)
    if name == "jet_r":
        return (x > 0.875 - 1.5 * LEVEL) & (x < 0.89 + 1.5 * LEVEL)
    return np.zeros_like(x, dtype=bool)


# ----- Colour maps -----

@pytest.mark.parametrize("name", ["viridis", "turbo", "jet", "hot", "gray", "viridis_r", "jet_r"])
def test_tables_match_matplotlib(name):
    import matplotlib
    ref = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3]
    assert np.abs(cm.table(name) - ref).max() * 255 <= 1.0


def test_parula_matches_published_colours():
    published = {0: (0.2422, 0.1504, 0.6603), 64: (0.2006, 0.4803, 0.9906), 128: (0.0770, 0.7468, 0.7224),
                 192: (0.7945, 0.7554, 0.1570), 255: (0.9769, 0.9839, 0.0805)}  # MATLAB parula(256)
    t = cm.table("parula")
    for i, rgb in published.items():
        assert np.abs(t[i] - rgb).max() * 255 <= 1.0, i


def test_jet_matlab_differs_from_matplotlib_jet_at_the_corners():
    # the reason both exist: MATLAB's corners sit at 1/8 steps, matplotlib's do not
    assert np.abs(cm.table("jet_matlab") - cm.table("jet")).max() * 255 > 10
    assert cm.table("jet_matlab")[0] == pytest.approx([0, 0, 33 / 64])
    assert cm.table("jet_matlab")[-1] == pytest.approx([0.5, 0, 0])


@pytest.mark.parametrize("name", cm.NAMES)
def test_inversion_on_the_map(name):
    x = np.linspace(0, 1, 256)
    ok = ~flat_stretch(name, x)
    for rgb in (cm.table(name), to_8bit(cm.table(name))):  # exact and as stored in an 8-bit file
        pos, dist = cm.invert_colormap(rgb[None], name, return_distance=True)
        err = np.abs(pos[0] - x) * 255
        assert err[ok].max() < 1.0, (name, int(np.argmax(np.where(ok, err, 0))))
        assert dist.max() < 1.0
    if not ok.all():  # inside the flat stretch: its middle, at most half its width off
        assert np.abs(cm.invert_colormap(cm.table(name)[None], name)[0] - x)[~ok].max() * 255 < 2.0


@pytest.mark.parametrize("name", ["jet", "parula", "hot_r", "gray"])
def test_apply_puts_every_pixel_on_the_map(name):
    rng = np.random.default_rng(1)
    x = rng.random((20, 30))
    rgb = cm.apply_colormap(x, name)
    assert rgb.shape == (20, 30, 3) and rgb.min() >= 0 and rgb.max() <= 1
    pos, dist = cm.invert_colormap(rgb, name, return_distance=True)
    assert dist.max() < 0.5  # levels (the 1024-vertex polyline cuts jet's corners by < 0.5)
    ok = ~flat_stretch(name, x)
    assert np.abs(pos - x)[ok].max() * 255 < 1.0
    far = cm.invert_colormap(np.full((1, 1, 3), [1.0, 0.0, 1.0]), name, return_distance=True)[1]
    assert far.max() > 50  # magenta is on none of these maps: the distance does flag it


@pytest.mark.parametrize("name", cm.NAMES)
def test_detect_picks_the_map_and_its_orientation(name):
    rng = np.random.default_rng(cm.NAMES.index(name))
    pixels = np.concatenate([to_8bit(cm.apply_colormap(spectrogram(rng), name)).reshape(-1, 3)
                             for _ in range(2)])
    found = cm.detect_colormap(pixels)
    assert found["name"] == name, found
    assert found["residual"] < 1.0
    assert found["runner_up"][0].split("_")[0] != name.split("_")[0] and found["runner_up"][1] > 10
    assert cm.fit_colormap(pixels)[0][0] == name


def test_detect_survives_background_and_annotation_pixels():
    rng = np.random.default_rng(5)
    img = to_8bit(cm.apply_colormap(spectrogram(rng, 64, 96), "viridis"))
    img[:5] = 1.0                      # white figure margin
    img[-3:] = 0.0                     # black frame
    img[30:34, 10:60] = [1.0, 0.0, 0.0]  # red annotation text
    found = cm.detect_colormap(img.reshape(-1, 3))
    assert found["name"] == "viridis", found


def test_grayscale_fits_gray_with_zero_residual_and_orientation_by_the_floor():
    rng = np.random.default_rng(2)
    s = to_8bit(spectrogram(rng))
    dark_floor = np.repeat(s.reshape(-1, 1), 3, axis=1)
    ranked = cm.fit_colormap(dark_floor)
    assert ranked[0] == ("gray", 0.0)
    assert ranked[1] == ("gray_r", 0.0)  # same colours: only the orientation prior separates them
    assert ranked[2][1] > 10
    assert cm.detect_colormap(1.0 - dark_floor)["name"] == "gray_r"  # white floor: reversed gray


def test_a_resampled_export_of_a_speckled_set_is_still_detected():
    """Measured spectrograms are speckled. A figure export resamples them (imshow into a larger canvas:
    neighbours' colours blended in RGB, off the curve), which puts the 90th percentile past the limit
    while the median stays on the map (JPEG chroma noise does the same)."""
    rng = np.random.default_rng(5)
    t, f = np.linspace(0, 1, 96)[None, :], np.linspace(-1, 1, 64)[:, None]
    pixels = []
    for _ in range(4):
        speckle = np.asarray(Image.fromarray((rng.random((32, 48)) * 255).astype(np.uint8))
                             .resize((96, 64), Image.BILINEAR)) / 255.0 - 0.5
        s = np.clip(0.15 + 0.7 * np.exp(-((f - 0.5 * np.sin(4 * np.pi * t)) ** 2) / 0.01) + 0.4 * speckle, 0, 1)
        img = Image.fromarray((cm.apply_colormap(s, "jet") * 255).round().astype(np.uint8))
        pixels.append(np.asarray(img.resize((289, 193), Image.BILINEAR)).reshape(-1, 3) / 255.0)
    pixels = np.concatenate(pixels)
    strict = cm.fit_colormap(pixels)[0]
    assert strict[0] == "jet" and strict[1] > cm.DEFAULT_MAX_RESIDUAL   # the 90th-percentile rule alone: RGB
    found = cm.detect_colormap(pixels)
    assert found["name"] == "jet" and found["quantile"] == cm.NOISY_QUANTILE, found
    assert found["runner_up"][1] >= cm.NOISY_MARGIN * max(found["residual"], 1.0)
    assert "median distance" in found["reason"]


@pytest.mark.parametrize("kind", ["uniform", "smooth"])
def test_photo_like_rgb_fits_no_map(kind):
    rng = np.random.default_rng(3)
    if kind == "uniform":
        pixels = rng.random((1500, 3))
    else:  # smooth colour blobs, like a photo: each channel an independent low-frequency field
        small = rng.random((3, 6, 8))
        field = np.stack([np.asarray(Image.fromarray((c * 255).astype(np.uint8)).resize((60, 40),
                                                                                       Image.BICUBIC))
                          for c in small], axis=-1) / 255.0
        pixels = field.reshape(-1, 3)
    found = cm.detect_colormap(pixels)
    assert found["name"] is None, found
    assert found["residual"] > cm.DEFAULT_MAX_RESIDUAL
    best = cm.fit_colormap(pixels)[0][0]
    assert f"best is {best}" in found["reason"] and f"{found['residual']:.1f}" in found["reason"]


def test_unknown_colormap_name_is_refused():
    with pytest.raises(ValueError, match="unknown colour map 'jett'"):
        cm.table("jett")


# ----- Figure exports -----

def render_figure(cmap="jet", dpi=100, size=(6, 4), colorbar=True, title=True, matlab_look=False,
                  jpeg=False):
    """A figure export as uint8 (H, W, 3) and the true plot area (x0, y0, x1, y1) from the axes' window
    extent (display coordinates have y up: flipped to image rows)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(dpi)
    face = (0.94, 0.94, 0.94) if matlab_look else "white"
    fig, ax = plt.subplots(figsize=size, dpi=dpi, facecolor=face)
    try:
        im = ax.imshow(spectrogram(rng, 64, 128), cmap=cmap, aspect="auto", origin="lower",
                       extent=[0, 3, -200, 200])
        ax.set_xlabel("Time (s)")
        ax.set_ylabel("Doppler (Hz)")
        if title:
            ax.set_title("Walking, subject 3")
        if matlab_look:  # inward ticks, dark gray axes
            ax.tick_params(direction="in", colors=(0.15, 0.15, 0.15))
            for spine in ax.spines.values():
                spine.set_color((0.15, 0.15, 0.15))
        if colorbar:
            fig.colorbar(im, ax=ax, label="Power (dB)")
        fig.canvas.draw()
        width, height = fig.canvas.get_width_height()
        bb = ax.get_window_extent()
        truth = (bb.x0, height - bb.y1, bb.x1, height - bb.y0)
        img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)
    if jpeg:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=85)
        img = np.asarray(Image.open(buf).convert("RGB"))
    return img, truth


FIGURES = {
    "matplotlib_default": dict(),
    "gray_r_200dpi": dict(cmap="gray_r", dpi=200, size=(4, 3)),
    "matlab_look": dict(cmap="viridis", matlab_look=True, size=(5.6, 4.2)),
    "no_colorbar_no_title_jpeg": dict(cmap="hot", colorbar=False, title=False, jpeg=True),
}


@pytest.mark.parametrize("layout", FIGURES)
def test_plot_area_found_within_two_pixels(layout):
    img, truth = render_figure(**FIGURES[layout])
    box = find_plot_area(img)
    assert np.abs(np.array(box) - np.array(truth)).max() <= 2, (box, truth)
    if FIGURES[layout].get("cmap", "jet") in ("jet", "viridis"):
        # colourful maps: the crop's edges hold neither margin (white/light gray) nor frame (dark gray)
        x0, y0, x1, y1 = box
        crop = img[y0:y1, x0:x1].astype(int)
        edges = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
        colourless = edges.max(axis=1) - edges.min(axis=1) < 20
        assert colourless.mean() < 0.02


@pytest.mark.parametrize("case", ["jet_noisy", "gray_dark", "gray_clipped_black", "hot_clipped", "gray_r",
                                  "gray_burst_clipped"])
def test_plain_spectrograms_are_left_whole(case):
    rng = np.random.default_rng(7)
    s = spectrogram(rng, 96, 160, floor=0.08 if "dark" in case else 0.2)
    if "burst" in case:  # a short burst of motion in the middle: the border is pure floor all round
        s[:, :40] = s[:, 120:] = 0.2
        s[:10] = s[-10:] = 0.2
    if "clipped" in case:
        s = np.where(s < 0.3, 0.0, s)  # noise floor clipped: black (or hot's darkest) border
    name = {"jet_noisy": "jet", "hot_clipped": "hot", "gray_r": "gray_r"}.get(case, "gray")
    img = (cm.apply_colormap(s, name) * 255).round().astype(np.uint8)
    assert find_plot_area(img) == (0, 0, 160, 96)


def test_trim_option():
    assert parse_trim("auto") == "auto" and parse_trim(" None ") == "none"
    assert parse_trim("10, 20,300,200") == (10, 20, 300, 200)
    for bad in ("10,20,300", "a,b,c,d", "30,20,10,200", "-1,0,5,5", ""):
        with pytest.raises(ValueError, match="--trim"):
            parse_trim(bad)
    img = np.zeros((50, 80, 3), np.uint8)
    assert resolve_trim("none", img) == (0, 0, 80, 50)
    with pytest.raises(ValueError, match="outside a 80x50 image"):
        resolve_trim((0, 0, 81, 50), img)


# ----- Numeric formats -----

def test_db_float_tiffs_read_raw_and_scaled_by_the_dataset_range(tmp_path):
    rng = np.random.default_rng(4)
    paths = []
    for i in range(3):
        db = (spectrogram(rng) * 60 - 60).astype(np.float32)  # -60 .. 0 dB
        db[0, 0] = -np.inf  # log of an exact zero
        paths.append(tmp_path / f"s{i}.tif")
        Image.fromarray(db).save(paths[-1])
    arrays = []
    for p in paths:
        arr, kind = read_raw(p)
        assert kind == "float" and arr.dtype == np.float32 and arr.shape == (48, 96)
        assert np.nanmin(arr[np.isfinite(arr)]) < -40 and arr.max() <= 0  # stored dB, unscaled
        arrays.append(arr)
    lo, hi = dataset_range(arrays)
    assert -60 <= lo < -45 and -25 < hi <= 0
    scaled = scale_to_unit(arrays[0], lo, hi)
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    mid = scale_to_unit(np.array([(lo + hi) / 2, lo - 10, hi + 10, np.nan]), lo, hi)
    assert mid.tolist() == pytest.approx([0.5, 0.0, 1.0, 0.0])
    # negative values keep their order: not clipped at 0 dB into one value
    body = arrays[0][np.isfinite(arrays[0])]
    assert len(np.unique(scale_to_unit(body, lo, hi))) > 100


def test_16bit_low_range_png_gets_the_warning(tmp_path):
    low = (np.arange(48 * 64).reshape(48, 64) % 1024).astype(np.uint16)  # 10 bits used of 16
    Image.fromarray(low).save(tmp_path / "low.png")
    arr, kind = read_raw(tmp_path / "low.png")
    assert kind == "uint16" and arr.dtype == np.uint16 and arr.max() == 1023
    warning = bit_depth_usage(arr.max(), kind)
    assert warning is not None and "16-bit" in warning and "1023" in warning
    assert bit_depth_usage(60000, "uint16") is None
    assert bit_depth_usage(200, "uint8") is None
    assert bit_depth_usage(10.0, "float") is None
    assert dataset_range([arr], 0, 100) == (0.0, 1023.0)


def test_read_raw_kinds(tmp_path):
    ints = (np.arange(64).reshape(8, 8) * 100000).astype(np.int32)
    Image.fromarray(ints).save(tmp_path / "i.tif")
    arr, kind = read_raw(tmp_path / "i.tif")
    assert kind == "int32" and np.array_equal(arr, ints)
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "a.png")
    assert read_raw(tmp_path / "c.png")[1] == "uint8" and np.array_equal(read_raw(tmp_path / "c.png")[0], rgb)
    assert np.array_equal(read_raw(tmp_path / "a.png")[0], rgb)
    assert read_raw(tmp_path / "c.png")[0].shape == (8, 8, 3)


# ----- Hygiene -----

def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_symlink_loop_is_refused_with_the_path(tmp_path):
    cls = tmp_path / "walk"
    write_png(str(cls / "sub" / "a.png"), np.zeros((8, 8), np.uint8))
    os.symlink(cls, cls / "sub" / "back")
    with pytest.raises(ValueError, match=r"sub/back: symlink loop"):
        walk_images(cls)


def test_walk_counts_each_real_file_once_and_lists_non_images(tmp_path):
    cls = tmp_path / "run"
    write_png(str(cls / "a.png"), np.zeros((8, 8), np.uint8))
    write_png(str(tmp_path / "elsewhere" / "b.png"), np.ones((8, 8), np.uint8))
    os.symlink(cls / "a.png", cls / "a_link.png")
    os.symlink(tmp_path / "elsewhere", cls / "more")
    os.symlink(tmp_path / "elsewhere", cls / "more_again")
    os.symlink(tmp_path / "missing.png", cls / "broken.png")
    np.save(cls / "raw.npy", np.zeros(3))
    (cls / "notes.txt").write_text("x")
    os.symlink(cls / "notes.txt", cls / "notes_link.txt")  # the same real file: listed once
    images, skipped = walk_images(cls)
    real = [os.path.realpath(cls / "a.png"), os.path.realpath(tmp_path / "elsewhere" / "b.png")]
    assert images == sorted(real)
    reasons = {os.path.basename(p): r for p, r in skipped}
    assert set(reasons) == {"raw.npy", "notes.txt", "broken.png"}
    assert "numpy" in reasons["raw.npy"] and "broken" in reasons["broken.png"]


def test_duplicates_found_within_and_across_classes(tmp_path):
    rng = np.random.default_rng(6)
    imgs = [(cm.apply_colormap(spectrogram(rng, 64, 64), "jet") * 255).round().astype(np.uint8)
            for _ in range(4)]
    files = {"walk/0.png": imgs[0], "walk/1.png": imgs[1], "walk/2.png": imgs[2], "run/3.png": imgs[3],
             "run/copy_of_0.png": imgs[0], "walk/copy_of_1.png": imgs[1]}
    for rel, a in files.items():
        write_png(str(tmp_path / rel), a)
    # a re-encoded, resized copy of image 2 in another class: not byte-identical, visually the same
    small = Image.fromarray(imgs[2]).resize((48, 48), Image.BILINEAR)
    small.save(tmp_path / "run" / "small_2.jpg", quality=90)
    paths = sorted(str(tmp_path / rel) for rel in files) + [str(tmp_path / "run" / "small_2.jpg")]
    thumbs = np.stack([thumbnail(Image.open(p)) for p in paths])
    groups = duplicate_groups(paths, thumbs)
    as_sets = {(g["kind"], frozenset(os.path.basename(f) for f in g["files"])): g["classes"] for g in groups}
    assert as_sets == {("exact", frozenset({"0.png", "copy_of_0.png"})): ["run", "walk"],
                       ("exact", frozenset({"1.png", "copy_of_1.png"})): ["walk"],
                       ("near", frozenset({"2.png", "small_2.jpg"})): ["run", "walk"]}
    assert len(duplicate_groups(paths)) == 2  # exact only without thumbnails


def test_dark_measured_like_sets_are_not_all_near_duplicates():
    """Measured spectrograms are dark (mean ~0.04): raw thumbnails of different recordings are all within
    NEAR_MAX_DIFF of each other; scaled by the set's bright level they are not, and a re-encoded copy is."""
    rng = np.random.default_rng(7)
    imgs = [np.clip(0.5 * spectrogram(rng, 64, 64, floor=0.1) ** 2 + 0.05 * rng.random((64, 64)), 0, 1)
            for _ in range(12)]
    shifted = [np.roll(a, 8 * k, axis=1) for k, a in enumerate(imgs)]   # signatures at different times
    as_8bit = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in shifted]
    buf = io.BytesIO()
    as_8bit[3].resize((48, 48), Image.BILINEAR).save(buf, "JPEG", quality=90)
    thumbs = np.stack([thumbnail(im) for im in as_8bit] + [thumbnail(Image.open(buf))])
    files = [f"c{k % 3}/{k}.png" for k in range(12)] + ["c0/copy_of_3.jpg"]
    digests = [str(k) for k in range(13)]
    assert len(_near_pairs(thumbs[:12], NEAR_MAX_DIFF)) > 10   # unscaled: different recordings look alike
    groups = duplicate_groups(files, thumbs, digests=digests)
    assert [sorted(g["files"]) for g in groups] == [["c0/3.png", "c0/copy_of_3.jpg"]], groups


def test_aspect_warnings():
    warnings = aspect_warnings({"strip.png": (4000, 120), "ok.png": (640, 480), "tall.png": (50, 500)})
    assert len(warnings) == 2 and warnings[0].startswith("strip.png: 4000x120")
    assert "tall.png" in warnings[1]
    assert aspect_warnings([(800, 100)], limit=8) == [] and len(aspect_warnings([(801, 100)])) == 1


# ----- Through the stages -----

@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    from tests.helpers import make_tiny_vavae_checkpoint
    return make_tiny_vavae_checkpoint(tmp_path_factory.mktemp("tok") / "vae.pt")[0]


def colour_set(root, name, n=4, classes=("walk", "run"), seed=0):
    """A class-folder tree of 8-bit PNGs drawn in colour map `name`; returns {relative path: intensity (H, W)}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for c in classes:
        for i in range(n):
            s = spectrogram(rng, 48, 64, floor=0.15 + 0.1 * (c == "run"))
            rel = f"{c}/{i}.png"
            write_png(str(root / rel), (cm.apply_colormap(s, name) * 255).round().astype(np.uint8))
            truth[rel] = s
    return truth


def scan_and_decide(root, color="auto", trim="auto"):
    """What stage 1 decides for a tree: (files, display names, scans, decide_color's result)."""
    from pipeline.images import find_classes
    from pipeline.preprocess import decide_color, display_names, scan_files
    files = [f for fs in find_classes(str(root)).values() for f in fs]
    names = display_names(files, str(root))
    scans = scan_files(files, parse_trim(trim))
    return files, names, scans, decide_color(scans, color, names)


@pytest.mark.parametrize("name", cm.NAMES)
def test_colour_mapped_set_detected_inverted_and_redrawn_on_its_map(tmp_path, name):
    import torch
    from pipeline.images import load_for_tokenizer, save_image
    truth = colour_set(tmp_path, name, n=2, seed=cm.NAMES.index(name))
    files, names, scans, decided = scan_and_decide(tmp_path)
    assert decided["color_mode"] == "gray", decided["reason"]
    if name.startswith("gray"):
        # three equal channels are a grayscale file: kept as it is (gray_r stays white-floored), no map
        assert decided["colormap"] is None and decided["reason"] == "every image is grayscale"
        name_used, expect = None, (lambda s: 1 - s) if name == "gray_r" else (lambda s: s)
    else:
        assert decided["colormap"]["name"] == name, decided["reason"]
        assert decided["colormap"]["residual"] < 1.0 and decided["off_map"] == []
        name_used, expect = name, (lambda s: s)
    for f, rel in zip(files, names):
        x, gray, size = load_for_tokenizer(f, (48, 64), color="auto", colormap=name_used)
        assert gray and size == (64, 48) and torch.equal(x[0], x[1])
        got = (x[0].numpy() + 1) / 2
        ok = ~flat_stretch(name, truth[rel])
        assert np.abs(got - expect(truth[rel]))[ok].max() * 255 < 1.0, rel
    # stage 3's writer: intensities back in the map, every pixel on it (8-bit rounding only)
    out = tmp_path / "out.png"
    save_image(x, str(out), gray=True, size=(80, 40), colormap=name)
    img = np.asarray(Image.open(out))
    assert img.shape == (40, 80, 3)
    _, dist = cm.invert_colormap(img / 255.0, name, return_distance=True)
    assert dist.max() < 1.0


def stage1_run(data, out, *extra, tok="demo", size="64"):
    import json
    import stage1_extract_features as stage1
    stage1.main(["--data_dir", str(data), "--vavae_path", str(tok), "--output_dir", str(out), "--image_size", size,
                 "--num_workers", "0", "--batch_size", "8", "--imagenet_stats", "none.pt", "--recon_images", "0",
                 *extra])
    return json.loads((out / "dataset.json").read_text())


def test_jet_set_through_stages_1_2_3_comes_out_on_jet(tmp_path, capsys):
    import json
    import stage2_train_dit as stage2
    import stage3_inference as stage3
    from tests.helpers import stage2_args
    colour_set(tmp_path / "data", "jet", n=4)
    info = stage1_run(tmp_path / "data", tmp_path / "lat", "--val_fraction", "0.25")
    printed = capsys.readouterr().out
    assert info["colormap"]["name"] == "jet" and info["color_mode"] == "gray"
    assert "colour map jet" in printed and "inverted to one intensity channel" in printed
    stage2.main(stage2_args(tmp_path / "lat", tmp_path / "run", "monitor.tune_sampling=false", steps=2))
    stage3.main(["--checkpoint", str(tmp_path / "run"), "--vavae_path", "demo", "--output_dir", str(tmp_path / "gen"),
                 "--num_per_class", "2", "--steps", "2", "--device", "cpu", "--precision", "fp32"])
    samples = json.loads((tmp_path / "gen" / "samples.json").read_text())
    assert samples["colormap"] == "jet" and samples["data"]["colormap"]["name"] == "jet"
    for rel in samples["files"]:
        img = np.asarray(Image.open(tmp_path / "gen" / rel))
        assert img.ndim == 3 and img.shape[2] == 3, rel
        _, dist = cm.invert_colormap(img / 255.0, "jet", return_distance=True)
        assert dist.max() < 1.0, rel   # every pixel on jet


def test_figure_exports_trimmed_per_image_in_stage1(tmp_path, tokenizer_path):
    truths = {}
    for i, layout in enumerate(["matplotlib_default", "matlab_look"]):
        img, truth = render_figure(**FIGURES[layout])
        write_png(str(tmp_path / "data" / "walk" / f"fig{i}.png"), img)
        truths[f"walk/fig{i}.png"] = truth
    plain = (cm.apply_colormap(spectrogram(np.random.default_rng(0), 60, 90), "jet") * 255).round().astype(np.uint8)
    write_png(str(tmp_path / "data" / "walk" / "plain.png"), plain)
    info = stage1_run(tmp_path / "data", tmp_path / "out", tok=tokenizer_path, size="32")
    boxes = dict(zip(info["files"], info["trim_boxes"]))
    for rel, truth in truths.items():
        assert np.abs(np.array(boxes[rel]) - np.array(truth)).max() <= 2, (rel, boxes[rel], truth)
    assert boxes["walk/plain.png"] == [0, 0, 90, 60]
    assert info["trim"] == {"mode": "auto", "trimmed": 2, "images": 3}
    # the recorded sizes are those of the plot areas
    x0, y0, x1, y1 = boxes["walk/fig0.png"]
    assert info["original_sizes"][info["files"].index("walk/fig0.png")] == [x1 - x0, y1 - y0]
    none = stage1_run(tmp_path / "data", tmp_path / "none", "--trim", "none", tok=tokenizer_path, size="32")
    assert none["trim"]["trimmed"] == 0 and all(b[:2] == [0, 0] for b in none["trim_boxes"])


def test_db_float_tiffs_keep_their_levels_through_stage1(tmp_path, tokenizer_path):
    from pipeline.images import load_for_tokenizer
    rng = np.random.default_rng(8)
    for c, offset in (("quiet", -30.0), ("loud", 0.0)):
        for i in range(3):
            db = (spectrogram(rng) * 30 - 60 + 30 + offset).astype(np.float32)   # quiet: -60..-30, loud: -30..0
            db[0, 0] = -np.inf
            os.makedirs(tmp_path / "data" / c, exist_ok=True)
            Image.fromarray(db).save(tmp_path / "data" / c / f"{i}.tif")
    info = stage1_run(tmp_path / "data", tmp_path / "out", "--val_fraction", "0", tok=tokenizer_path, size="32")
    vr = info["value_range"]
    assert vr["kind"] == "float" and -60 <= vr["lo"] < -50 and -10 < vr["hi"] <= 0
    assert info["color_mode"] == "gray" and info["colormap"] is None
    means = {}
    for rel in info["files"]:
        x, _, _ = load_for_tokenizer(str(tmp_path / "data" / rel), (32, 32), value_range=vr)
        means.setdefault(rel.split("/")[0], []).append(float((x + 1).mean() / 2))
    # one range for the set: the quiet class stays darker (per-image scaling would make both alike)
    assert max(means["quiet"]) + 0.2 < min(means["loud"])
    assert min(means["quiet"]) > 0.02   # not clipped at 0 into black


def test_16bit_low_range_pngs_warned_and_scaled_by_the_set(tmp_path, tokenizer_path, capsys):
    from pipeline.images import load_for_tokenizer
    rng = np.random.default_rng(9)
    for i in range(4):
        s = (spectrogram(rng) * 1000).astype(np.uint16)   # a 10-bit sensor in a 16-bit PNG
        write_png(str(tmp_path / "data" / "walk" / f"{i}.png"), s)
    info = stage1_run(tmp_path / "data", tmp_path / "out", tok=tokenizer_path, size="32")
    assert info["value_range"]["kind"] == "uint16" and info["value_range"]["hi"] <= 1000
    assert any("16-bit data reaches at most" in w for w in info["warnings"])
    assert "warning: 16-bit data reaches at most" in capsys.readouterr().out
    x, _, _ = load_for_tokenizer(str(tmp_path / "data" / info["files"][0]), (32, 32),
                                 value_range=info["value_range"])
    assert float((x + 1).mean() / 2) > 0.15   # not near black (1000/65535 would be)


def test_hygiene_report_duplicates_non_images_loops_and_mixed_colour(tmp_path, tokenizer_path, capsys):
    from pipeline.common import UsageError
    rng = np.random.default_rng(10)
    data = tmp_path / "data"
    grays = [(spectrogram(rng, 40, 60) * 255).round().astype(np.uint8) for _ in range(5)]
    for i, g in enumerate(grays[:3]):
        write_png(str(data / "walk" / f"{i}.png"), g)
    write_png(str(data / "run" / "a.png"), grays[3])
    write_png(str(data / "run" / "copy_of_walk_0.png"), grays[0])          # exact duplicate across classes
    jet = (cm.apply_colormap(grays[4] / 255.0, "jet") * 255).round().astype(np.uint8)
    write_png(str(data / "run" / "odd_one.png"), jet)                     # one colour-mapped file among gray ones
    np.save(data / "walk" / "raw.npy", np.zeros(3))
    os.symlink(data / "walk" / "0.png", data / "walk" / "link_to_0.png")   # the same file: counted once
    write_png(str(data / "walk" / "strip.png"), np.full((8, 200), 90, np.uint8))
    info = stage1_run(data, tmp_path / "out", tok=tokenizer_path, size="32")
    printed = capsys.readouterr().out
    h = info["hygiene"]
    assert info["num_images"] == 7 and not any("link_to_0" in f for f in info["files"])
    exact = [g for g in h["duplicates"] if g["kind"] == "exact"]
    assert len(exact) == 1 and set(exact[0]["files"]) == {"walk/0.png", "run/copy_of_walk_0.png"}
    assert exact[0]["across_classes"] and "exact duplicates across classes run, walk" in printed
    assert [os.path.basename(s["path"]) for s in h["skipped"]] == ["raw.npy"] and "numpy" in h["skipped"][0]["reason"]
    assert len(h["aspect"]) == 1 and h["aspect"][0].startswith("walk/strip.png")
    assert h["mixed_color"] == {"gray": 6, "colour": 1, "colour_files": ["run/odd_one.png"]}
    assert "mixed colour set: 6 gray and 1 colour image(s); the colour ones: run/odd_one.png" in printed
    assert info["colormap"]["name"] == "jet" and info["color_mode"] == "gray"
    # a loop inside a class, and one to the data folder itself, are refused naming the link
    os.symlink(data / "walk", data / "walk" / "again")
    with pytest.raises(UsageError, match=r"walk/again: symlink loop"):
        stage1_run(data, tmp_path / "out2", tok=tokenizer_path, size="32")
    os.unlink(data / "walk" / "again")
    os.symlink(data, data / "run" / "up")
    with pytest.raises(UsageError, match=r"run/up: symlink loop"):
        stage1_run(data, tmp_path / "out3", tok=tokenizer_path, size="32")


def test_photo_like_colour_set_stays_rgb_with_the_reason(tmp_path, tokenizer_path, capsys):
    rng = np.random.default_rng(12)
    for i in range(3):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        write_png(str(tmp_path / "data" / "a" / f"{i}.png"), np.asarray(Image.fromarray(small).resize((64, 48),
                                                                                                    Image.BICUBIC)))
    info = stage1_run(tmp_path / "data", tmp_path / "out", tok=tokenizer_path, size="32")
    assert info["color_mode"] == "rgb" and info["colormap"] is None
    assert "no colour map fits" in info["color_detection"]["reason"]
    assert "colour: no colour map fits" in capsys.readouterr().out
