"""
Stage 3 logic: sample latents per class from a trained run, de-normalise with the run's stats,
decode with the VA-VAE and write images in the data's colour mode. `stage3_inference.py` is its
command line.

Image k of class c depends only on (seed, c, k) and the sampling settings; images already on disk
are kept, so an interrupted run continues where it stopped. Under torchrun the missing images are
dealt out across ranks.
"""

import glob
import json
import os
import shutil
import tarfile
import time
import zipfile

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.lightningdit import LightningDiT, dit_state_dict_from_checkpoint, load_dit_checkpoint
from models.safe_load import CheckpointError
from models.vavae import load_vavae
from pipeline.common import (UsageError, atomic_path, barrier, cleanup_distributed, init_distributed, pick_device,
                             pick_precision, write_json_atomic)
from pipeline.generate import decode_latents, denormalise, image_seed, sample_latents
from pipeline.config import config_differences
from pipeline.images import load_for_tokenizer, make_grid, safe_name, save_image
from pipeline.train import latest_checkpoint

SAMPLING_KEYS = ("num_steps", "method", "cfg_scale", "cfg_interval_start", "timestep_shift")
# The fast preset (bench/sampler_accuracy.py): Heun with 16 steps matches Euler-250 within 1 % error.
PRESETS = {"fast": dict(method="heun", num_steps=16), "quality": dict(method="euler", num_steps=250)}


def resolve_checkpoint(path, runs_root="runs"):
    """A checkpoint file, a run dir (its latest), or None (the newest run under runs/)."""
    if path is None:
        runs = [d for d in glob.glob(os.path.join(runs_root, "*")) if latest_checkpoint(d)]
        if not runs:
            raise UsageError(f"no --checkpoint given and no run with checkpoints under {runs_root}/; "
                             f"pass --checkpoint RUN_DIR_OR_FILE")
        path = max(runs, key=os.path.getmtime)
        print(f"using the newest run: {path}")
    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise UsageError(f"--checkpoint {path}: no checkpoints in this run dir")
        return found
    if not os.path.isfile(path):
        raise UsageError(f"--checkpoint {path}: no such file or run dir")
    return path


def load_run(path, use_ema=True, trust=False):
    """(model in eval mode, checkpoint dict) from one of our stage 2 checkpoints."""
    try:
        ckpt = load_dit_checkpoint(path, trust=trust)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    needed = ("model_config", "stats", "classes", "latent_shape")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        raise UsageError(f"--checkpoint {path}: not a stage 2 checkpoint of this project (needs {', '.join(needed)}); "
                         f"a released ImageNet model must be fine-tuned first (stage 2 --init_from)")
    model = LightningDiT(**ckpt["model_config"])
    try:
        model.load_state_dict(dit_state_dict_from_checkpoint(ckpt, prefer_ema=use_ema, path=path), strict=True)
    except RuntimeError as e:
        raise UsageError(f"--checkpoint {path}: weights do not match its own config ({str(e).splitlines()[0]})") from None
    return model.eval().requires_grad_(False), ckpt


def select_classes(requested, classes):
    """Class ids from names or ids (default all); unknown ones are an error listing the known names."""
    if not requested:
        return list(range(len(classes)))
    ids = []
    for item in requested:
        if item in classes:
            ids.append(classes.index(item))
        elif item.isdigit() and int(item) < len(classes):
            ids.append(int(item))
        else:
            raise UsageError(f"--classes {item}: unknown class; known: {', '.join(classes)}")
    return sorted(set(ids))


def image_path(out_dir, class_name, k):
    name = safe_name(class_name)
    return os.path.join(out_dir, name, f"{name}_{k:05d}.png")


def _check_output_dir(out_dir, manifest_settings, overwrite):
    """Refuse an output dir holding images from other settings (unless --overwrite, which clears ours)."""
    record = os.path.join(out_dir, "samples.json")
    if not os.path.isfile(record):
        return
    old = json.load(open(record))
    same = old.get("settings") == manifest_settings
    if same and not overwrite:
        return
    if not overwrite:
        diff = config_differences(old.get("settings", {}), manifest_settings, ignore=())
        raise UsageError(f"--output_dir {out_dir}: holds images generated with other settings ({', '.join(diff)}); "
                         f"pass --overwrite or choose another --output_dir")
    for name in old.get("class_folders", []):
        shutil.rmtree(os.path.join(out_dir, safe_name(name)), ignore_errors=True)
    for name in ("grid.png", "latents.safetensors", "eval.json", "samples.json"):
        if os.path.exists(os.path.join(out_dir, name)):
            os.unlink(os.path.join(out_dir, name))
    shutil.rmtree(os.path.join(out_dir, ".latents_partial"), ignore_errors=True)


def write_images(images, jobs, out_dir, classes, gray, original_sizes):
    for img, (c, k) in zip(images, jobs):
        size = original_sizes.get(classes[c]) if original_sizes is not None else None
        save_image(img, image_path(out_dir, classes[c], k), gray, size=tuple(size) if size else None)


def make_archive(out_dir, kind, class_names):
    """Pack the class folders into generated.zip or generated.tar (Kaggle downloads only 500 files)."""
    path = os.path.join(out_dir, f"generated.{kind}")
    tmp = path + ".tmp"
    files = sorted(p for n in class_names for p in glob.glob(os.path.join(out_dir, safe_name(n), "*.png")))
    if kind == "zip":
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for p in files:
                z.write(p, os.path.relpath(p, out_dir))
    else:
        with tarfile.open(tmp, "w") as t:
            for p in files:
                t.add(p, os.path.relpath(p, out_dir))
    os.replace(tmp, path)
    return path


def generate(args):
    """Stage 3 end to end. Returns the samples.json manifest on rank 0 (None elsewhere)."""
    rank, world, local_rank = init_distributed()
    try:
        return _generate(args, rank, world, local_rank)
    finally:
        cleanup_distributed(world)


def _generate(args, rank, world, local_rank):
    t_start = time.time()
    device = pick_device(args.device, local_rank)
    dtype, _ = pick_precision(args.precision, device)
    ckpt_path = resolve_checkpoint(args.checkpoint)
    model, ckpt = load_run(ckpt_path, use_ema=not args.no_ema, trust=args.trust_checkpoint)
    model.to(device)
    classes = ckpt["classes"]
    class_ids = select_classes(args.classes, classes)
    sampling = {k: ckpt["config"]["sample"][k] for k in SAMPLING_KEYS}
    if args.preset:
        sampling.update(PRESETS[args.preset])
    for key, value in (("num_steps", args.steps), ("method", args.method), ("cfg_scale", args.cfg_scale),
                       ("cfg_interval_start", args.cfg_interval_start), ("timestep_shift", args.timestep_shift)):
        if value is not None:
            sampling[key] = value
    if len(classes) == 1:
        sampling["cfg_scale"] = 1.0  # unconditional model: nothing to guide towards
    latent_shape = list(ckpt["latent_shape"])
    tokenizer = load_vavae(args.vavae_path, device=device, latent_channels=latent_shape[0], trust=args.trust_checkpoint)
    gray = ckpt.get("color_mode") == "gray"
    original_sizes = ckpt.get("original_sizes", {}) if args.original_size else None
    stats = ckpt["stats"]

    settings = dict(checkpoint=os.path.abspath(ckpt_path), step=int(ckpt.get("step", 0)), ema=not args.no_ema,
                    seed=args.seed, **sampling, stats_source=stats.get("source"), tokenizer=str(args.vavae_path),
                    original_size=bool(args.original_size), color_mode="gray" if gray else "rgb",
                    precision=args.precision)
    if rank == 0:
        _check_output_dir(args.output_dir, settings, args.overwrite)
        os.makedirs(args.output_dir, exist_ok=True)
        write_json_atomic(os.path.join(args.output_dir, "samples.json"),
                          dict(settings=settings, class_folders=[classes[c] for c in class_ids], complete=False))
    barrier(world)

    jobs = [(c, k) for c in class_ids for k in range(args.num_per_class)
            if not os.path.isfile(image_path(args.output_dir, classes[c], k))]
    mine = jobs[rank::world]
    partial_dir = os.path.join(args.output_dir, ".latents_partial")
    bar = tqdm(total=len(mine), unit="img", desc="generate", disable=rank != 0)
    for start in range(0, len(mine), args.batch_size):
        batch = mine[start:start + args.batch_size]
        seeds = [image_seed(args.seed, c, k) for c, k in batch]
        z = sample_latents(model, [c for c, _ in batch], seeds, latent_shape, sampling, device, dtype)
        z = denormalise(z, stats)
        if args.save_latents:
            os.makedirs(partial_dir, exist_ok=True)
            with atomic_path(os.path.join(partial_dir, f"rank{rank}_{start:07d}_{time.time_ns()}.safetensors")) as tmp:
                save_file({"latents": z.cpu().contiguous(), "labels": torch.tensor([c for c, _ in batch]),
                           "index": torch.tensor([k for _, k in batch])}, tmp)
        images = decode_latents(tokenizer, z, device, dtype, chunk=args.decode_chunk)
        write_images(images, batch, args.output_dir, classes, gray, original_sizes)
        bar.update(len(batch))
    bar.close()
    barrier(world)
    if rank != 0:
        return None

    # ---- summary outputs (rank 0) ----------------------------------------------------------------
    rows = [[image_path(args.output_dir, classes[c], k) for k in range(min(8, args.num_per_class))] for c in class_ids]
    width, height = Image.open(rows[0][0]).size   # with --original_size, classes differ: show all at one size
    rows = [[load_for_tokenizer(p, (height, width))[0] for p in row] for row in rows]
    make_grid(rows, gray).save(os.path.join(args.output_dir, "grid.png"))
    if args.save_latents:
        _merge_latents(partial_dir, os.path.join(args.output_dir, "latents.safetensors"))
    per_image = {classes[c]: [dict(file=os.path.relpath(image_path(args.output_dir, classes[c], k), args.output_dir),
                                   seed=image_seed(args.seed, c, k)) for k in range(args.num_per_class)]
                 for c in class_ids}
    manifest = dict(settings=settings, class_folders=[classes[c] for c in class_ids], complete=True,
                    latent_dir=ckpt.get("latent_dir"),
                    classes={classes[c]: dict(label=c, folder=safe_name(classes[c]), count=args.num_per_class)
                             for c in class_ids},
                    images=per_image, generated_this_run=len(jobs), time_s=round(time.time() - t_start, 2))
    if args.archive:
        manifest["archive"] = os.path.basename(make_archive(args.output_dir, args.archive,
                                                            [classes[c] for c in class_ids]))
    write_json_atomic(os.path.join(args.output_dir, "samples.json"), manifest)
    return manifest


def _merge_latents(partial_dir, path):
    """Merge the per-batch latent files (and an earlier latents.safetensors, after a resume) into one file."""
    files = sorted(glob.glob(os.path.join(partial_dir, "*.safetensors")))
    parts = [load_file(p) for p in ([path] if os.path.isfile(path) else []) + files]
    if not files:
        return
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    order = torch.argsort(merged["labels"] * 10_000_000 + merged["index"])
    merged = {k: v[order].contiguous() for k, v in merged.items()}
    # Keep one entry per (label, index) when a run was resumed after a partial batch.
    key = merged["labels"] * 10_000_000 + merged["index"]
    keep = torch.ones_like(key, dtype=torch.bool)
    keep[1:] = key[1:] != key[:-1]
    with atomic_path(path) as tmp:
        save_file({k: v[keep].contiguous() for k, v in merged.items()}, tmp)
    shutil.rmtree(partial_dir)
