"""Convert public *measured* micro-Doppler data sets into the benchmark's image-folder layout.

Output: ``<out>/<set_name>/<class>/<file>.png``, 8-bit grayscale, 128x128, one folder per class,
the layout ``stage1_extract_features.py --data_dir`` reads.

Sources (candidates checked on 2026-11-26; see bench/MEASURED_DATA.md for the full record)
--------------------------------------------------------------------------------------------
By default only sets whose data licence is clear are converted.  The search found measured sets whose
data are really in a reachable GitHub snapshot, but none of them with a clear data licence, so every
entry of ``SETS`` below is marked ``licence_ok=False`` and is refused (one line, exit code 2).
Project policy allows such data to be used LOCALLY for measurement, never committed or
redistributed: ``--local_use`` converts them and prints a one-line note saying so (the manifest
records ``licence_ok: false`` and the restriction).  ``licence_ok`` becomes ``True`` only once the
data owner grants a licence in writing:

* ``rice20_doppler60`` -- github.com/01rice20/RadarHAR, commit 35df0a5d988dd06080f43a885bb18e208c79d7de,
  ``dataset/doppler_60/<class>/*.png`` (Infineon BGT60LTR11AIP 60 GHz Doppler radar, 5 classes:
  convulsion, cough, drink, fall, wave; 147-150 images each; viridis-coloured 1000x600 RGBA, no axes
  or margins, per-image colour scale).  Licence: NONE (no LICENSE file, README says nothing) ->
  local measurement only.
* ``ci4r_77ghz`` -- github.com/Awu-Lin/zero-shot-cross-carrier-radar-har, commit
  e82f151f48e2d74090a90f44eb3f00da92a4412f (data files), ``tasks/known_people_unknown_freq/dataset/
  <split>/77GHz/<class>/*.png`` (TI 77 GHz FMCW, CI4R data, jet colour map, 224x224).  The repository
  code is MIT but its README says: "The dataset under `tasks/` is third-party (CI4R, University of
  Alabama) plus the NRC supplement and remains governed by their own terms."  CI4R's own repository has
  no licence file and asks users to e-mail the owner -> local measurement only.  Default class subset
  (5 of the 7 classes present at 77 GHz): Away, Kneel, Pick, SStep, Sit.  NOTE: on 2026-11-26 ``fetch``
  answered "No snapshot of that repository can be had here", so this set could not be converted.

A local folder can be converted with ``--folder NAME=PATH[:colormap]`` (class sub-folders of images,
or of .npy/.npz 2-D arrays).  Use this for a set you obtained yourself under a licence you have
checked, e.g. the University of Glasgow "Radar signatures of human activities" (CC BY 4.0,
doi:10.5525/gla.researchdata.848), whose data is not in any reachable GitHub snapshot.

Fetch step (done once, outside this script; the script itself never touches the network)
-----------------------------------------------------------------------------------------
The registry sets are read from the bare git mirrors made by the session tool ``fetch``
(``github:<owner>/<repo>``), which land in ``/work/.mirror/<owner>+<repo>/repo``.  Files are read with
``git --git-dir=<mirror> show <commit>:<path>``, pinned to the commit above.  Change ``--mirror_root``
if the mirrors are elsewhere.

Conversion
----------
* figure exports (colour-mapped images with axes, labels, colour bar or white margins) are first cut
  to the plot area: the longest contiguous run of rows, then of columns, whose share of pixels on the
  colour map is at least half the best row's (column's); off when it would keep >=99 % or <20 % of a
  side.  ``--no_crop`` disables it; the manifest records each box (``crop_tblr``).
* colour-mapped images (R, G, B differ): each pixel is mapped to the index of the nearest colour of a
  256-entry matplotlib colour-map table (default ``jet``; nearest in RGB, via a 32^3 lookup table), then
  scaled to 0..255.  Pixels far from every table colour (axes, labels, white margins) are counted and
  reported; they get the index of the nearest colour anyway.
* grayscale images: used as they are (luminance ``L`` for RGB images whose channels are equal).
* 2-D arrays (.npy/.npz): treated as dB if any value is negative, else converted with
  ``20*log10(|x|+eps)``; then one robust range for the whole set (1st to 99.5th percentile of all
  values, estimated on a deterministic sample) maps to 0..255 with clipping.  Axis 0 is Doppler, axis 1
  time; the array is flipped so that positive Doppler is at the top, like an image.
* resize to 128x128 with an area (box) filter; PNG mode ``L``.
* ``--classes a,b,...``: keep only these classes (a registry set may define a default subset; ``all``
  overrides it).
* ``--original_max_side N``: instead of grayscale, write the ORIGINAL source images (colour kept, no
  crop, no inversion), byte-identical unless a side exceeds N, then resized (aspect kept, box filter,
  same mode) so the longer side is N.
* ``--max_per_class N``: deterministic subsample, the N files with the smallest SHA-1 of their relative
  path (stable under file additions elsewhere, independent of listing order).
* ``--skip_per_class K``: leave out the first K files of that order first, so ``--skip_per_class 60
  --max_per_class 60`` gives 60 per class disjoint from ``--max_per_class 60`` alone: a second, independent
  benchmark set from the same source, written as ``<set>_from<K>``.

CLI
---
``python bench/convert_measured.py --out /work/data/measured [--sets a,b] [--local_use] [--classes a,b]
[--max_per_class N] [--skip_per_class K] [--folder NAME=PATH[:cmap]] [--mirror_root /work/.mirror] [--size 128]
[--no_crop] [--original_max_side 256]``
Prints per set the classes and counts; writes ``<out>/<set>/manifest.json`` (sources, SHA-1s).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
ARR_EXT = {".npy", ".npz"}


@dataclass(frozen=True)
class SetSpec:
    name: str
    repo: str                 # owner/name
    commit: str
    # (path prefix inside the repo, class index in the path split after the prefix)
    prefixes: tuple[str, ...]
    class_depth: int          # which path component after the prefix is the class
    colormap: str | None      # colour map to invert, None = grayscale/luminance
    licence: str
    licence_ok: bool
    note: str = ""
    classes: tuple[str, ...] | None = None   # default class subset (None = all classes)
    extra: dict = field(default_factory=dict)


SETS: dict[str, SetSpec] = {s.name: s for s in [
    SetSpec(
        name="rice20_doppler60", repo="01rice20/RadarHAR",
        commit="35df0a5d988dd06080f43a885bb18e208c79d7de",
        prefixes=("dataset/doppler_60/",), class_depth=0, colormap="viridis",
        licence="none stated (no LICENSE file, README has no licence statement)", licence_ok=False,
        note="Infineon BGT60LTR11AIP 60 GHz Doppler radar, own measurements"),
    SetSpec(
        name="ci4r_77ghz", repo="Awu-Lin/zero-shot-cross-carrier-radar-har",
        commit="e82f151f48e2d74090a90f44eb3f00da92a4412f",
        prefixes=("tasks/known_people_unknown_freq/dataset/train/77GHz/",
                  "tasks/known_people_unknown_freq/dataset/val/77GHz/",
                  "tasks/known_people_unknown_freq/dataset/test/77GHz/"),
        class_depth=0, colormap="jet",
        licence=("repo code MIT; data: 'third-party (CI4R, University of Alabama) plus the NRC "
                 "supplement and remains governed by their own terms'; CI4R has no licence file"),
        licence_ok=False, note="TI 77 GHz FMCW (CI4R), jet-coloured 224x224 PNG",
        # 5 of the 7 classes present at 77 GHz (11 in CI4R overall): distinct motions, but with the
        # known confusable pairs Kneel/Sit and Pick/(Kneel) kept in; Towards/Away differ only by
        # the Doppler sign (trivial), Bend ~ Pick (near-duplicate), so Towards and Bend are left out.
        classes=("Away", "Kneel", "Pick", "SStep", "Sit")),
]}


# --------------------------------------------------------------------------- colour handling

_LUT_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _cmap_lut(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(32x32x32 -> index 0..255, distance) lookup for the nearest colour of a matplotlib map."""
    if name not in _LUT_CACHE:
        import matplotlib
        table = (np.asarray(matplotlib.colormaps[name](np.linspace(0, 1, 256)))[:, :3] * 255.0)
        centres = (np.arange(32) * 8 + 4).astype(np.float64)
        grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), -1).reshape(-1, 3)
        idx = np.empty(len(grid), np.uint8)
        dist = np.empty(len(grid), np.float32)
        for s in range(0, len(grid), 4096):
            d = ((grid[s:s + 4096, None, :] - table[None]) ** 2).sum(-1)
            idx[s:s + 4096] = d.argmin(1)
            dist[s:s + 4096] = np.sqrt(d.min(1))
        _LUT_CACHE[name] = (idx.reshape(32, 32, 32), dist.reshape(32, 32, 32))
    return _LUT_CACHE[name]


def image_to_intensity(img: Image.Image, colormap: str | None, crop: bool = True,
                       crop_box: list | None = None) -> tuple[np.ndarray, float]:
    """Return (uint8 intensity HxW, fraction of pixels far from the colour map).

    With ``crop`` a colour-mapped figure export is first cut to its plot area (see ``plot_area``);
    the box used is appended to ``crop_box`` when one is given."""
    if img.mode in ("P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "1"):
        img = img.convert("RGB") if img.mode in ("P", "RGBA", "CMYK") else img.convert("L")
    if img.mode == "L":
        return np.asarray(img, np.uint8), 0.0
    rgb = np.asarray(img.convert("RGB"), np.uint8)
    if colormap is None or (np.abs(rgb.astype(np.int16) - rgb[..., :1]).max() <= 2):
        return np.asarray(img.convert("L"), np.uint8), 0.0
    idx_lut, dist_lut = _cmap_lut(colormap)
    if crop:
        box = plot_area(rgb, colormap)
        if box is not None:
            t, b, l, r = box
            rgb = rgb[t:b, l:r]
            if crop_box is not None:
                crop_box.append(list(box))
    q = rgb >> 3
    out = idx_lut[q[..., 0], q[..., 1], q[..., 2]]
    far = float((dist_lut[q[..., 0], q[..., 1], q[..., 2]] > 40.0).mean())
    return out.astype(np.uint8), far


def plot_area(rgb: np.ndarray, colormap: str, min_frac: float = 0.5) -> tuple[int, int, int, int] | None:
    """Bounding box (top, bottom, left, right; end-exclusive) of the colour-mapped plot area of a
    figure export, or None when the whole image already is the plot.

    A pixel is "on the map" when it is within 40 RGB units of a table colour.  Rows (columns) whose
    share of on-map pixels is at least ``min_frac`` of the best row (column) are plot rows; the longest
    contiguous run of them is kept.  Axes, tick labels, colour bars and white margins are off the map,
    or sit in shorter runs, and fall outside the box."""
    _, dist_lut = _cmap_lut(colormap)
    q = rgb >> 3
    on = dist_lut[q[..., 0], q[..., 1], q[..., 2]] <= 40.0

    def run(frac: np.ndarray) -> tuple[int, int]:
        good = frac >= min_frac * max(float(frac.max()), 1e-9)
        best, start, cur = (0, len(frac)), None, 0
        best_len = -1
        for i, g in enumerate(list(good) + [False]):
            if g and start is None:
                start = i
            elif not g and start is not None:
                if i - start > best_len:
                    best, best_len = (start, i), i - start
                start = None
        return best

    top, bottom = run(on.mean(1))
    # columns judged inside the plot rows only, so a title row does not dilute them
    left, right = run(on[top:bottom].mean(0))
    h, w = on.shape
    if (bottom - top) >= 0.99 * h and (right - left) >= 0.99 * w:
        return None
    if (bottom - top) < 0.2 * h or (right - left) < 0.2 * w:
        return None  # implausible, keep the image whole
    return top, bottom, left, right


def to_png_bytes(arr_u8: np.ndarray, size: int) -> bytes:
    im = Image.fromarray(arr_u8, "L")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BOX if min(im.size) >= size else Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def load_array(data: bytes, suffix: str) -> np.ndarray:
    obj = np.load(io.BytesIO(data), allow_pickle=False)
    if suffix == ".npz":
        keys = sorted(obj.files)
        arr = obj[keys[0]]
    else:
        arr = obj
    arr = np.asarray(arr)
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    arr = np.squeeze(arr).astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {arr.shape}")
    if arr.min() >= 0:
        arr = 20.0 * np.log10(arr + 1e-12)
    return arr[::-1]  # positive Doppler on top


# --------------------------------------------------------------------------- sources

@dataclass
class Item:
    cls: str
    rel: str          # relative path, used for names and the deterministic subsample
    read: object      # callable -> bytes


def _git(mirror: Path, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={mirror}", *args], check=True,
                          capture_output=True).stdout


def items_from_mirror(spec: SetSpec, mirror_root: Path) -> list[Item]:
    mirror = mirror_root / spec.repo.replace("/", "+") / "repo"
    if not mirror.exists():
        raise FileNotFoundError(f"{spec.name}: mirror {mirror} missing; fetch github:{spec.repo} first")
    listing = _git(mirror, "ls-tree", "-r", "--name-only", spec.commit).decode().splitlines()
    items = []
    for path in listing:
        for pre in spec.prefixes:
            if not path.startswith(pre):
                continue
            parts = path[len(pre):].split("/")
            suf = Path(path).suffix.lower()
            if len(parts) <= spec.class_depth + 1 or suf not in IMG_EXT | ARR_EXT:
                continue
            items.append(Item(parts[spec.class_depth], path,
                              lambda p=path: _git(mirror, "show", f"{spec.commit}:{p}")))
    return items


def items_from_folder(root: Path) -> list[Item]:
    items = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMG_EXT | ARR_EXT:
            rel = p.relative_to(root)
            cls = rel.parts[0] if len(rel.parts) > 1 else root.name
            items.append(Item(cls, rel.as_posix(), lambda p=p: p.read_bytes()))
    return items


def output_name(name: str, skip_per_class: int) -> str:
    """The set's folder name: a subsample that skips the first K per class is ``<set>_from<K>``."""
    return f"{name}_from{skip_per_class}" if skip_per_class else name


def subsample(items: list[Item], max_per_class: int | None, skip_per_class: int = 0) -> dict[str, list[Item]]:
    by_cls: dict[str, list[Item]] = {}
    for it in items:
        by_cls.setdefault(it.cls, []).append(it)
    for c in by_cls:
        by_cls[c].sort(key=lambda it: hashlib.sha1(it.rel.encode()).hexdigest())
        by_cls[c] = by_cls[c][skip_per_class:skip_per_class + max_per_class if max_per_class else None]
        by_cls[c].sort(key=lambda it: it.rel)
    return dict(sorted(by_cls.items()))


def _safe(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return keep.strip("._") or "x"


def original_bytes(data: bytes, max_side: int) -> tuple[bytes, str, list[int] | None]:
    """The source image unchanged, or, if a side exceeds ``max_side``, resized (aspect kept, box
    filter, same mode) so the longer side is ``max_side``.  Returns (bytes, file suffix, new size)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        fmt = (im.format or "PNG").lower()
        if max(im.size) <= max_side:
            return data, "." + ("jpg" if fmt == "jpeg" else fmt), None
        w, h = im.size
        scale = max_side / max(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        src = im if im.mode in ("RGB", "RGBA", "L", "LA") else im.convert("RGBA" if "A" in im.mode else "RGB")
        small = src.resize(new, Image.BOX)
        buf = io.BytesIO()
        small.save(buf, format="PNG", optimize=False)
        return buf.getvalue(), ".png", list(new)


def convert_set(name: str, items: list[Item], colormap: str | None, out: Path, size: int,
                max_per_class: int | None, source: dict, classes: tuple[str, ...] | None = None,
                crop: bool = True, original_max_side: int | None = None, skip_per_class: int = 0) -> dict[str, int]:
    """Write one set into ``out / name`` (the caller's output_name).  ``original_max_side`` set: copy the source
    images themselves (colour kept, resized only when a side is larger; no crop, no inversion) instead of 8-bit
    grayscale."""
    if classes:
        present = {it.cls for it in items}
        missing = [c for c in classes if c not in present]
        if missing:
            raise ValueError(f"{name}: classes {missing} not in the set; present: {sorted(present)}")
        items = [it for it in items if it.cls in classes]
    by_cls = subsample(items, max_per_class, skip_per_class)
    dst = out / name
    loaded: list[tuple[str, Item, bytes]] = [(c, it, it.read()) for c, lst in by_cls.items() for it in lst]
    # arrays: one robust range for the whole set
    arr_items = [(c, it, b) for c, it, b in loaded if Path(it.rel).suffix.lower() in ARR_EXT]
    lo = hi = None
    arrays = {}
    if arr_items:
        rng = np.random.default_rng(0)
        sample = []
        for c, it, b in arr_items:
            a = load_array(b, Path(it.rel).suffix.lower())
            arrays[it.rel] = a
            flat = a.ravel()
            sample.append(flat[rng.choice(flat.size, min(flat.size, 20000), replace=False)])
        allv = np.concatenate(sample)
        lo, hi = float(np.percentile(allv, 1.0)), float(np.percentile(allv, 99.5))
    counts: dict[str, int] = {}
    records = []
    far_total, n_img, n_crop = 0.0, 0, 0
    for c, it, b in loaded:
        suf = Path(it.rel).suffix.lower()
        extra = {}
        if original_max_side is not None:
            if suf in ARR_EXT:
                raise ValueError(f"{name}: original-colour output needs images, got {it.rel}")
            png, out_suf, new_size = original_bytes(b, original_max_side)
            cdir = dst / _safe(c)
            cdir.mkdir(parents=True, exist_ok=True)
            fname = _safe(Path(it.rel).with_suffix("").as_posix().replace("/", "__")) + out_suf
            (cdir / fname).write_bytes(png)
            counts[c] = counts.get(c, 0) + 1
            records.append({"class": c, "source": it.rel, "source_sha1": hashlib.sha1(b).hexdigest(),
                            "out": f"{_safe(c)}/{fname}", "out_sha1": hashlib.sha1(png).hexdigest(),
                            "resized_to": new_size})
            continue
        if suf in ARR_EXT:
            a = (arrays[it.rel] - lo) / max(hi - lo, 1e-9)
            u8 = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
        else:
            box: list = []
            with Image.open(io.BytesIO(b)) as im:
                im.load()
                u8, far = image_to_intensity(im, colormap, crop=crop, crop_box=box)
            far_total += far
            n_img += 1
            if box:
                n_crop += 1
                extra["crop_tblr"] = box[0]
        png = to_png_bytes(u8, size)
        cdir = dst / _safe(c)
        cdir.mkdir(parents=True, exist_ok=True)
        fname = _safe(Path(it.rel).with_suffix("").as_posix().replace("/", "__")) + ".png"
        (cdir / fname).write_bytes(png)
        counts[c] = counts.get(c, 0) + 1
        records.append({"class": c, "source": it.rel, "source_sha1": hashlib.sha1(b).hexdigest(),
                        "out": f"{_safe(c)}/{fname}", "out_sha1": hashlib.sha1(png).hexdigest(),
                        **extra})
    if original_max_side is not None:
        manifest = {"set": name, **source, "kind": "original colour images",
                    "resized_if_side_over": original_max_side, "max_per_class": max_per_class,
                    "skip_per_class": skip_per_class,
                    "classes": list(classes) if classes else None, "counts": counts, "files": records}
    else:
        manifest = {"set": name, **source, "size": size, "max_per_class": max_per_class,
                    "skip_per_class": skip_per_class,
                    "classes": list(classes) if classes else None,
                    "colormap_inverted": colormap, "db_range": [lo, hi] if lo is not None else None,
                    "mean_far_from_colormap": far_total / n_img if n_img else None,
                    "cropped_to_plot_area": n_crop, "counts": counts, "files": records}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sets", default="", help="comma list of registry sets (default: all with a clear licence)")
    ap.add_argument("--folder", action="append", default=[],
                    help="NAME=PATH[:cmap]; a local class-folder set whose licence you have checked")
    ap.add_argument("--max_per_class", type=int, default=None)
    ap.add_argument("--skip_per_class", type=int, default=0,
                    help="leave out the first K files per class of the subsample order (a disjoint second set)")
    ap.add_argument("--mirror_root", type=Path, default=Path("/work/.mirror"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--local_use", action="store_true",
                    help="also convert registry sets whose licence is unclear, for local measurement only "
                         "(the output must not be committed or shared); without --sets: all registry sets")
    ap.add_argument("--classes", default="",
                    help="comma list of classes to keep (overrides a set's default subset; 'all' = every class)")
    ap.add_argument("--no_crop", action="store_true",
                    help="do not cut colour-mapped figure exports to their plot area")
    ap.add_argument("--original_max_side", type=int, default=None,
                    help="write the ORIGINAL colour images instead (no inversion, no crop), resized with "
                         "aspect kept only if a side is larger than this many pixels")
    args = ap.parse_args(argv)

    wanted = [s for s in args.sets.split(",") if s] or [
        n for n, s in SETS.items() if s.licence_ok or args.local_use]
    cls_arg = None if not args.classes else (
        () if args.classes == "all" else tuple(c for c in args.classes.split(",") if c))
    status = 0
    for name in wanted:
        spec = SETS.get(name)
        if spec is None:
            print(f"[{name}] unknown set; known: {', '.join(SETS)}")
            status = 2
            continue
        if not spec.licence_ok and not args.local_use:
            print(f"[{name}] REFUSED: licence not clear ({spec.licence}); see bench/MEASURED_DATA.md")
            status = 2
            continue
        if not spec.licence_ok:
            print(f"[{name}] LOCAL USE ONLY: licence unclear; output is for local measurement only "
                  f"and must not be committed or shared")
        classes = spec.classes if cls_arg is None else (cls_arg or None)
        try:
            items = items_from_mirror(spec, args.mirror_root)
        except FileNotFoundError as e:
            print(f"[{name}] SKIPPED: {e}")
            status = 2
            continue
        set_name = output_name(name, args.skip_per_class)
        counts = convert_set(set_name, items, spec.colormap, args.out,
                             args.size, args.max_per_class,
                             {"repo": spec.repo, "commit": spec.commit, "licence": spec.licence,
                              "licence_ok": spec.licence_ok,
                              "use": "registered licence" if spec.licence_ok else
                                     "LOCAL MEASUREMENT ONLY: licence unclear; do not commit or share"},
                             classes=classes, crop=not args.no_crop,
                             original_max_side=args.original_max_side, skip_per_class=args.skip_per_class)
        _report(set_name, counts, args.out)
    for f in args.folder:
        name, _, rest = f.partition("=")
        path, _, cmap = rest.partition(":")
        root = Path(path)
        if not name or not root.is_dir():
            print(f"--folder {f!r}: expected NAME=PATH[:cmap] with an existing folder")
            status = 2
            continue
        set_name = output_name(name, args.skip_per_class)
        counts = convert_set(set_name, items_from_folder(root), cmap or "jet", args.out, args.size,
                             args.max_per_class, {"local_folder": str(root.resolve())},
                             classes=cls_arg or None, crop=not args.no_crop,
                             original_max_side=args.original_max_side, skip_per_class=args.skip_per_class)
        _report(set_name, counts, args.out)
    if not wanted and not args.folder:
        print("no set with a clear licence is registered; nothing converted (use --local_use for local "
              "measurement; see bench/MEASURED_DATA.md)")
    return status


def _report(name: str, counts: dict[str, int], out: Path) -> None:
    total = sum(counts.values())
    print(f"[{name}] {len(counts)} classes, {total} images -> {out / name}")
    for c, n in counts.items():
        print(f"    {c}: {n}")


if __name__ == "__main__":
    sys.exit(main())
