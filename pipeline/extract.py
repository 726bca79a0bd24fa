"""
Stage 1 logic: image folders -> latent shards, channel statistics, stats recommendation,
dataset manifest and a reconstruction report. `stage1_extract_features.py` is its command line.

Before encoding, every file is scanned once (pipeline/preprocess.py) and the data set's preprocessing is
decided: plot-area box per image, one value range, colour mode and colour map, and a hygiene report; then the
image size (--image_size auto: pipeline/size_choice.py measures it on the data); each image is then cut, scaled,
coloured and resized the same way (load_prepared).

Work is cut into shards of consecutive image indices; a shard is written atomically once complete,
so an interrupted run resumes at the first missing shard. Under torchrun, rank r encodes the shards
k with k % world_size == r, and rank 0 writes stats and metadata once all shards exist.
"""

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models.vavae import load_vavae
from pipeline.common import (UsageError, atomic_torch_save, file_sha256, autocast, barrier, cleanup_distributed,
                             from_rank0, init_distributed, pick_device, pick_precision, write_json_atomic,
                             write_text_atomic)
from pipeline.config import config_differences
from pipeline.figure_trim import parse_trim
from pipeline.images import load_for_tokenizer, split_indices, walk_classes
from pipeline.plot import labelled_grid
from pipeline.preprocess import decide_color, decide_value_range, display_names, hygiene_report, scan_files
from pipeline.size_choice import choose_image_size, enlarged, whole_size
from pipeline.latents import (DATASET_FILE, EXTRACTION_FILE, list_shards, load_latents, read_record, read_shard_info,
                              shard_path, write_record, write_shard)
from pipeline.stats import channel_stats, format_recommendation, load_stats, psnr, recommend, ssim



@dataclass(frozen=True)
class ExtractSettings:
    """Everything stage 1 is asked to do (stage1_extract_features.py's flags, with these defaults)."""
    data_dir: str                                  # one subfolder per class
    vavae_path: str = "pretrained/vavae-imagenet256-f16d32-dinov2.pt"   # or "demo"
    imagenet_stats: Optional[str] = "pretrained/latents_stats.pt"
    output_dir: str = "latent_features"
    image_size: str = "auto"                       # auto (pipeline/size_choice.py) or N, a multiple of 16
    resize: str = "stretch"                        # stretch | center_crop | pad
    color: str = "auto"                            # auto | gray | rgb
    trim: str = "auto"                             # auto | none | "x0,y0,x1,y1"
    flip: str = "none"                             # none | time | doppler
    val_fraction: float = 0.1
    seed: int = 0
    batch_size: int = 32
    num_workers: int = min(4, os.cpu_count() or 1)   # decoding processes; more than the cores only adds overhead
    shard_size: int = 10000                        # images per shard, the unit of resume
    device: str = "auto"
    precision: str = "auto"
    sample_posterior: bool = False
    recon_images: int = 8                          # per class, for the reconstruction report
    overwrite: bool = False
    strict: bool = False
    trust_checkpoint: bool = False


OUTPUT_FILES = ("latents_stats.pt", "latents_stats_imagenet.pt", "stats_recommendation.txt", "stats_report.json",
                "dataset.json", "reconstruction.png", "extraction.json")


def load_prepared(files, i, size, resize, prep):
    """File i through the data set's preprocessing (plot-area box, value range, colour) -> load_for_tokenizer's
    (x (3, H, W) in [-1, 1], is_gray, (width, height) of the area used)."""
    return load_for_tokenizer(files[i], size, resize, prep["color"], prep["colormap"], prep["value_range"],
                              prep["boxes"][i])


class ImageFiles(Dataset):
    """Decodes files in DataLoader workers. Item: dict(index, x (3, H, W) or None, gray, size, error).
    prep: the data set's preprocessing (see prepare_data)."""

    def __init__(self, files, indices, size, resize, prep):
        self.files, self.indices, self.size, self.resize, self.prep = files, indices, size, resize, prep

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        try:
            x, gray, orig = load_prepared(self.files, index, self.size, self.resize, self.prep)
            return dict(index=index, x=x, gray=gray, size=orig, error=None)
        except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file, say why"
            return dict(index=index, x=None, gray=None, size=None, error=f"{type(e).__name__}: {str(e)[:160]}")


def _collate(items):
    return items


def parse_image_size(text):
    """'256' or '128x256' (HxW) -> (H, W); each a positive multiple of 16."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        raise UsageError(f"--image_size {text}: expected auto or N, e.g. 256") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or any(p <= 0 or p % 16 for p in parts):
        raise UsageError(f"--image_size {text}: height and width must be positive multiples of 16")
    if parts[0] != parts[1]:
        # the tokenizer downsamples both sides alike, so the latents would not be square either
        raise UsageError(f"--image_size {text}: stage 2 trains only square latents; use a square size such as "
                         f"--image_size {max(parts)}")
    return tuple(parts)


def check_token_count(size, downsample, text):
    """Refuse, before encoding, an image size whose latents are too small for stage 2 to cut into tokens."""
    side = size[0] // downsample
    if side < 2:
        raise UsageError(f"--image_size {text}: gives {side}x{side} latents (the tokenizer downsamples "
                         f"{downsample}x), too few tokens for stage 2; use --image_size {2 * downsample} or more")


def enlargement_warning(largest, size, downsample):
    """A warning (or None) when every image (longest side `largest` px) is enlarged to at least 1.5x in
    `size` (H, W): it names the smallest --image_size that keeps them whole (size_choice.whole_size: a multiple
    of 32, so that the latents have an even side) and the trade-off. The tokenizer keeps 32 values per 16x16 patch at
    any size, so an enlarged image keeps more of its detail: on a measured set of 128 px spectrograms a
    real-data classifier recognised the demo tokenizer's round trips 0.86 of the time at 256 px and 0.66 at
    128 px (the originals 0.87), and stage 3's images were better at 256 px; on smooth simulated ones, kept
    whole at 128 px already, they were worse at 256 px (bench/RESULTS.md, twelfth session). The price of twice
    the size: 4x the latent tokens (stage 2 about 4x slower, and harder for a small model)."""
    if not enlarged(largest, min(size), downsample):
        return None
    smaller = whole_size(largest, downsample)
    factor = (min(size) // smaller) ** 2
    return (f"every image is at most {largest} px and is enlarged to {size[0]}x{size[1]}: the tokenizer keeps more "
            f"of each image's detail, and stage 2 trains on {factor}x the latent tokens of --image_size {smaller} "
            f"(about {factor}x slower on a CPU, and a small model learns them less well); detailed spectrograms "
            f"gain from the larger size, smooth ones do not (README: Domain rules)")


def _settings(job, files, size, tokenizer_info):
    file_hash = hashlib.sha1("\n".join(files).encode()).hexdigest()
    return dict(data_dir=os.path.abspath(job.data_dir), files_sha1=file_hash, num_files=len(files),
                image_size=list(size), resize=job.resize, color=job.color, trim=job.trim, flip=job.flip,
                val_fraction=job.val_fraction, seed=job.seed, sample_posterior=job.sample_posterior,
                tokenizer=tokenizer_info["name"], tokenizer_bytes=tokenizer_info["bytes"], shard_size=job.shard_size)


def file_digest(path):
    """SHA-256 of a file's bytes ('' when it cannot be read: that file is skipped at encode time anyway)."""
    try:
        return file_sha256(path)
    except OSError:
        return ""


def shard_content(digests, k, shard_size):
    """Fingerprint of the bytes of the images of shard k: a shard is resumed only if it is unchanged."""
    return hashlib.sha1("\n".join(digests[k * shard_size:(k + 1) * shard_size]).encode()).hexdigest()


def check_output_location(out, data_dir):
    """Stage 1's output inside the data folder would be read as a class on the next run."""
    out_abs, data_abs = os.path.realpath(out), os.path.realpath(data_dir)
    if out_abs == data_abs or out_abs.startswith(data_abs + os.sep):
        raise UsageError(f"--output_dir {out}: lies inside --data_dir {data_dir}, where the next run would read it "
                         f"as a class; choose a folder outside the data")


def _stale_shards(out, digests, shard_size):
    """{shard index: path} of complete shards whose images changed on disk since they were encoded."""
    stale = {}
    for k, path in list_shards(out).items():
        if read_shard_info(path).get("content_sha1") != shard_content(digests, k, shard_size):
            stale[k] = path
    return stale


def _prepare_output_dir(out, settings, overwrite, digests, shard_size):
    """Resume (same settings: unchanged shards kept, shards of changed images removed for re-encoding),
    refuse (other settings, no --overwrite) or clear our own files (--overwrite). Returns (kept, re-encoded)."""
    record = read_record(out, EXTRACTION_FILE, "--output_dir") if os.path.isdir(out) else None
    existing = record["settings"] if record is not None else None
    shards = list_shards(out) if os.path.isdir(out) else {}
    if existing == settings and not overwrite:
        stale = _stale_shards(out, digests, shard_size)
        for path in stale.values():
            os.unlink(path)
        return len(shards) - len(stale), len(stale)
    if (existing is not None or shards) and not overwrite:
        if existing is None:
            raise UsageError(f"--output_dir {out}: holds latent shards of an unknown run; pass --overwrite to replace them")
        diff = [k if k in ("files_sha1", "tokenizer_bytes") else f"{k} {existing.get(k)} there, {settings.get(k)} now"
                for k in config_differences(existing, settings, ignore=())]
        raise UsageError(f"--output_dir {out}: holds latents made with other settings ({'; '.join(diff)}); "
                         f"pass --overwrite to replace them or choose another --output_dir")
    for path in shards.values():
        os.unlink(path)
    for name in OUTPUT_FILES:
        if os.path.exists(os.path.join(out, name)):
            os.unlink(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    write_record(out, EXTRACTION_FILE, {"settings": settings})
    return 0, 0


def _tokenizer_info(path, tokenizer):
    name = str(path)
    size = os.path.getsize(path) if os.path.isfile(name) else 0
    return dict(name=os.path.basename(name), path=os.path.abspath(name) if size else name, bytes=size,
                architecture={k: list(v) if isinstance(v, tuple) else v for k, v in tokenizer.config.items()},
                latent_channels=tokenizer.latent_channels, downsample=tokenizer.downsample_factor)


@torch.inference_mode()
def _encode(tokenizer, x, dtype, device, sample_posterior, generator):
    with autocast(device, dtype):
        posterior = tokenizer.encode(x.to(device))
    if sample_posterior:
        return posterior.sample(generator=generator).float().cpu()
    return posterior.mean.float().cpu()


def _flip(x, flip):
    return x.flip(-1) if flip == "time" else x.flip(-2)


def encode_shards(job, files, digests, labels, split, size, tokenizer, device, dtype, rank, world, prep):
    """Encode every shard this rank owns that is not on disk yet; each records the fingerprint of its images."""
    num_shards = (len(files) + job.shard_size - 1) // job.shard_size
    done = list_shards(job.output_dir)
    todo = [k for k in range(num_shards) if k % world == rank and k not in done]
    if not todo:
        return
    indices = [i for k in todo for i in range(k * job.shard_size, min((k + 1) * job.shard_size, len(files)))]
    slim = {k: prep[k] for k in ("color", "colormap", "value_range", "boxes")}   # what workers need
    loader = DataLoader(ImageFiles(files, indices, size, job.resize, slim), batch_size=job.batch_size,
                        num_workers=job.num_workers, collate_fn=_collate)
    pending = {k: [] for k in todo}
    expected = {k: min((k + 1) * job.shard_size, len(files)) - k * job.shard_size for k in todo}
    bar = tqdm(total=len(indices), unit="img", desc=f"encode (rank {rank})", disable=rank != 0 and world > 1)
    for items in loader:
        good = [it for it in items if it["x"] is not None]
        for it in items:
            if it["error"] is not None and job.strict:
                raise UsageError(f"{files[it['index']]}: cannot be read ({it['error']}); remove it or drop --strict")
        encoded = {}
        if good:
            x = torch.stack([it["x"] for it in good])
            generator = torch.Generator(device).manual_seed(job.seed * 1_000_003 + good[0]["index"])
            encoded["latents"] = _encode(tokenizer, x, dtype, device, job.sample_posterior, generator)
            if job.flip != "none":
                encoded["latents_flip"] = _encode(tokenizer, _flip(x, job.flip), dtype, device,
                                                  job.sample_posterior, generator)
        row = 0
        for it in items:
            k = it["index"] // job.shard_size
            if it["x"] is not None:
                it["z"] = {key: v[row] for key, v in encoded.items()}
                row += 1
            it["x"] = None  # free the image
            pending[k].append(it)
            if len(pending[k]) == expected[k]:
                _write_shard(job.output_dir, rank, k, pending.pop(k), labels, split,
                             shard_content(digests, k, job.shard_size))
        bar.update(len(items))
    bar.close()


def _write_shard(out, rank, k, items, labels, split, content_sha1):
    good = [it for it in items if "z" in it]
    # A shard whose images were all unreadable is still written (empty) so that a resume skips it.
    tensors = {key: torch.stack([it["z"][key] for it in good]) for key in good[0]["z"]} if good else \
        {"latents": torch.zeros(0)}
    idx = [it["index"] for it in good]
    tensors["labels"] = torch.tensor([labels[i] for i in idx], dtype=torch.int64)
    tensors["split"] = torch.tensor([int(split[i]) for i in idx], dtype=torch.uint8)
    info = dict(indices=idx, sizes=[list(it["size"]) for it in good], gray=[bool(it["gray"]) for it in good],
                skipped=[[it["index"], it["error"]] for it in items if "z" not in it], content_sha1=content_sha1)
    write_shard(shard_path(out, rank, k), tensors, info)


def _reconstruction_report(job, files, labels, split, names, size, tokenizer, device, dtype, gray, prep):
    """Encode/decode up to --recon_images per class (held-out first); PSNR/SSIM per class; a picture."""
    per_class, rows, row_names = {}, [], []
    for c, name in enumerate(names):
        idx = [i for i in range(len(files)) if labels[i] == c]
        idx = sorted(idx, key=lambda i: -int(split[i]))[: job.recon_images]
        xs = []
        for i in idx:
            try:
                xs.append(load_prepared(files, i, size, job.resize, prep)[0])
            except Exception:  # noqa: BLE001 - unreadable files are already listed as skipped
                continue
        if not xs:
            continue
        x = torch.stack(xs)
        with torch.inference_mode(), autocast(device, dtype):
            rec = tokenizer.decode(tokenizer.encode(x.to(device)).mean).float().cpu().clamp(-1, 1)
        per_class[name] = dict(psnr=float(psnr(x, rec).mean()), ssim=float(ssim(x, rec).mean()), images=len(xs))
        for a, b in list(zip(x, rec))[:4]:
            rows.append([a, b, (a - b).abs() * 2 - 1])
            row_names.append(name)
    if rows:
        labelled_grid(rows, os.path.join(job.output_dir, "reconstruction.png"), row_names, gray,
                      col_labels=["real", "reconstructed", "|difference|"], title="stage 1: tokenizer round trip")
    overall = dict(psnr=sum(v["psnr"] for v in per_class.values()) / max(1, len(per_class)),
                   ssim=sum(v["ssim"] for v in per_class.values()) / max(1, len(per_class)))
    return dict(per_class=per_class, overall=overall)


def finalize(job, files, labels, split, names, size, tokenizer, tok_info, device, dtype, timings, t_start, settings,
             prep, size_choice):
    """Rank 0, after every shard exists: stats, recommendation, manifest, reconstruction report."""
    data = load_latents(job.output_dir)
    infos = [read_shard_info(p) for _, p in sorted(list_shards(job.output_dir).items())]
    skipped = [dict(path=files[i], reason=r) for info in infos for i, r in info.get("skipped", [])]
    sizes = {i: s for info in infos for i, s in zip(info.get("indices", []), info.get("sizes", []))}
    counts = {name: {"train": 0, "heldout": 0} for name in names}
    for lab, sp in zip(data["labels"].tolist(), data["split"].tolist()):
        counts[names[lab]]["heldout" if sp else "train"] += 1
    empty = [n for n, c in counts.items() if c["train"] + c["heldout"] == 0]
    if empty:
        raise UsageError(f"class(es) {', '.join(empty)}: none of their images could be read (see the skipped list)")
    no_train = [n for n, c in counts.items() if c["train"] == 0]
    if no_train:
        raise UsageError(f"class(es) {', '.join(no_train)}: no readable training image (only held-out ones); add "
                         f"images or fix the unreadable ones listed in the skipped list")
    warnings = [f"class {n} has no held-out image (too few images for --val_fraction {job.val_fraction}): "
                f"it cannot be evaluated" for n, c in counts.items() if job.val_fraction > 0 and c["heldout"] == 0]
    warnings += prep["warnings"]
    if prep["color_mode"] == "rgb" and str(job.vavae_path) == "demo":
        warnings.append("the demo tokenizer keeps no colour: an RGB set loses most of its content (see the "
                        "reconstruction PSNR); pass --color gray or use the released VA-VAE")
    largest = max((max(s) for s in sizes.values()), default=None)
    enlarged = enlargement_warning(largest, size, tokenizer.downsample_factor)
    if enlarged and not size_choice.get("measured"):   # a measured choice is reported instead
        warnings.append(enlarged)
    for w in warnings:
        print(f"warning: {w}")

    train = data["latents"][data["split"] == 0]
    if "latents_flip" in data:
        train = torch.cat([train, data["latents_flip"][data["split"] == 0]])
    stats = channel_stats(train)
    atomic_torch_save(stats, os.path.join(job.output_dir, "latents_stats.pt"))
    imagenet = None
    if job.imagenet_stats and os.path.isfile(job.imagenet_stats):
        imagenet = load_stats(job.imagenet_stats, channels=stats["mean"].shape[1], what="ImageNet stats file")
        atomic_torch_save(imagenet, os.path.join(job.output_dir, "latents_stats_imagenet.pt"))
    report = recommend(stats, imagenet)
    color_mode = prep["color_mode"]
    recon = _reconstruction_report(job, files, labels, split, names, size, tokenizer, device, dtype,
                                   color_mode == "gray", prep) if job.recon_images > 0 else {}
    write_text_atomic(os.path.join(job.output_dir, "stats_recommendation.txt"), format_recommendation(report))
    write_json_atomic(os.path.join(job.output_dir, "stats_report.json"),
                      dict(report, imagenet_stats=job.imagenet_stats if imagenet is not None else None,
                           reconstruction=recon))
    order = data["indices"].tolist()
    size_counts = {n: Counter() for n in names}
    for i in order:
        size_counts[names[labels[i]]][tuple(sizes.get(i, ()))] += 1
    manifest = dict(
        classes=[dict(name=n, label=c, **counts[n],
                      common_original_size=list(size_counts[n].most_common(1)[0][0]) if size_counts[n] else None)
                 for c, n in enumerate(names)],
        num_images=len(order), files=[prep["names"][i] for i in order],
        original_sizes=[sizes.get(i) for i in order], color_mode=color_mode, resize=job.resize, flip=job.flip,
        colormap=prep["colormap_record"], color_detection=prep["color_detection"], value_range=prep["value_range"],
        trim=dict(mode=job.trim, trimmed=sum(prep["trimmed"][i] for i in order), images=len(order)),
        trim_boxes=[list(prep["boxes"][i]) for i in order], hygiene=prep["hygiene"],
        image_size=list(size), image_size_choice=size_choice, latent_shape=list(data["latents"].shape[1:]),
        posterior="sample" if job.sample_posterior else "mean",
        split=dict(val_fraction=job.val_fraction, seed=job.seed), tokenizer=tok_info,
        skipped=skipped, warnings=warnings, data_dir=settings["data_dir"],
        data_fingerprint=hashlib.sha1("\n".join(read_shard_info(p).get("content_sha1", "") for _, p in
                                                sorted(list_shards(job.output_dir).items())).encode()).hexdigest(),
        timings=dict(timings, total_s=round(time.time() - t_start, 2)), settings=settings)
    write_record(job.output_dir, DATASET_FILE, manifest)
    return manifest, report, recon


def prepare_data(job, files, labels, split, names, skipped, digests=None):
    """Scan every file once and decide the data set's preprocessing before anything is encoded.
    Returns prep: color ('auto'|'gray'|'rgb'), colormap (name or None), value_range ({lo, hi, kind} or None),
    boxes and trimmed (per file), color_mode, colormap_record, color_detection, hygiene, warnings, names
    (display path per file), key (a fingerprint of the decisions, folded into each shard's content).
    digests: SHA-256 per file (file_digest), reused for the exact-duplicate check."""
    try:
        trim = parse_trim(job.trim)
    except ValueError as e:
        raise UsageError(str(e)) from None
    scans = scan_files(files, trim, job.num_workers, job.batch_size)
    bad_box = next((i for i, s in enumerate(scans) if s.get("trim_error")), None)
    if bad_box is not None:
        raise UsageError(f"{files[bad_box]}: {scans[bad_box]['error']}")
    shown = display_names(files, job.data_dir)
    train = [not s for s in split]
    value_range, warnings = decide_value_range(scans, train)
    color = decide_color(scans, job.color, shown)
    hygiene = hygiene_report(files, [names[c] for c in labels], scans, skipped, shown, digests)
    if color["mixed"] is not None:
        hygiene["mixed_color"] = color["mixed"]
    hygiene["off_map"] = color["off_map"]
    boxes = [s.get("box") for s in scans]
    trimmed = [s.get("error") is None and tuple(s["box"]) != (0, 0, *s["full"]) for s in scans]
    colormap = color["colormap"]["name"] if color["colormap"] else None
    if value_range is not None:
        value_range["warnings"] = warnings
    key = json.dumps([colormap, value_range and [value_range["lo"], value_range["hi"]]])
    detection = dict(reason=color["reason"],
                     colour_images=sum(s.get("error") is None and not s["gray"] for s in scans))
    return dict(color=job.color, colormap=colormap, value_range=value_range, boxes=boxes, trimmed=trimmed,
                color_mode=color["color_mode"], colormap_record=color["colormap"], color_detection=detection,
                hygiene=hygiene, warnings=warnings, names=shown, key=key)


def decide_image_size(job, size, files, labels, names, prep, tokenizer, tok_info, device, dtype, rank, world):
    """(size (H, W), record for dataset.json): the --image_size given, or auto's choice (pipeline/size_choice.py),
    measured on rank 0 and shared with the other ranks. An output dir that holds latents of an earlier auto run
    of the same settings keeps their size (a resume, also after unreadable files were repaired, must not be
    refused because a new measurement came out otherwise); --overwrite measures again."""
    if size is not None:
        return size, dict(mode="fixed", chosen=size[0])
    existing = read_record(job.output_dir, EXTRACTION_FILE, "--output_dir") if os.path.isdir(job.output_dir) else None
    if existing is not None and not job.overwrite:
        earlier = tuple(existing["settings"].get("image_size", ()))
        if len(earlier) == 2 and existing["settings"] == _settings(job, files, earlier, tok_info):
            return earlier, dict(mode="auto", chosen=earlier[0], measured=False,
                                 reason=f"kept from the latents already in {job.output_dir} (--overwrite measures "
                                        f"again)")
    choice = None
    if rank == 0:
        # the side of the area that is resized: the long one, or the short one that a centre crop keeps
        side = min if job.resize == "center_crop" else max
        largest = max((side(b[2] - b[0], b[3] - b[1]) for b in prep["boxes"] if b), default=None)
        chosen, record = choose_image_size(lambda i, hw: load_prepared(files, i, hw, job.resize, prep)[0], labels,
                                           len(names), largest, tokenizer, device, dtype,
                                           prep["color_mode"] == "gray", job.seed)
        choice = ((chosen, chosen), record)
    return from_rank0(choice, world)


def run(job):
    """Stage 1 end to end for `job` (ExtractSettings). Returns (manifest, recommendation report,
    reconstruction report) on rank 0, None on the other ranks."""
    t_start = time.time()
    rank, world, local_rank = init_distributed()
    try:
        size = None if str(job.image_size).lower() == "auto" else parse_image_size(job.image_size)
        device = pick_device(job.device, local_rank)
        dtype = pick_precision(job.precision, device)
        classes, skipped = walk_classes(job.data_dir)
        names = list(classes)
        files = [p for n in names for p in classes[n]]
        labels = [c for c, n in enumerate(names) for _ in classes[n]]
        split = split_indices(labels, job.val_fraction, job.seed)
        check_output_location(job.output_dir, job.data_dir)
        tokenizer = load_vavae(job.vavae_path, device=device, trust=job.trust_checkpoint)
        if size is not None:
            check_token_count(size, tokenizer.downsample_factor, job.image_size)
        tok_info = _tokenizer_info(job.vavae_path, tokenizer)
        file_digests = [file_digest(p) for p in files]      # each file's bytes hashed once, used twice
        prep = prepare_data(job, files, labels, split, names, skipped, file_digests)
        size, size_choice = decide_image_size(job, size, files, labels, names, prep, tokenizer, tok_info, device,
                                              dtype, rank, world)
        settings = _settings(job, files, size, tok_info)
        # the set-wide decisions (value range, colour map) are part of every image's content: a shard encoded
        # under other decisions is re-encoded like one whose files changed
        digests = [d + prep["key"] for d in file_digests]
        if rank == 0:
            kept, changed = _prepare_output_dir(job.output_dir, settings, job.overwrite, digests, job.shard_size)
            if kept or changed:
                print(f"resuming: {kept} complete shard(s) of unchanged images kept in {job.output_dir}"
                      + (f"; {changed} shard(s) re-encoded because their image files changed" if changed else ""))
        barrier(world)
        t_encode = time.time()
        encode_shards(job, files, digests, labels, split, size, tokenizer, device, dtype, rank, world, prep)
        barrier(world)
        timings = dict(setup_s=round(t_encode - t_start, 2), encode_s=round(time.time() - t_encode, 2))
        if rank != 0:
            return None
        return finalize(job, files, labels, split, names, size, tokenizer, tok_info, device, dtype, timings, t_start,
                        settings, prep, size_choice)
    finally:
        cleanup_distributed(world)
