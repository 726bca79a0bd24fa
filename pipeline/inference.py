"""
Stage 3 logic: sample latents per class from a trained run, de-normalise with the run's stats,
decode with the VA-VAE and write images in the data's colour mode. `stage3_inference.py` is its
command line.

Image k of class c depends only on (seed, c, k) and the sampling settings; images already on disk
are kept, so an interrupted run continues where it stopped. Under torchrun the missing images are
dealt out across ranks.
"""

import contextlib
import glob
import os
import shutil
import tarfile
import time
import zipfile
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.lightningdit import LightningDiT, dit_state_dict_from_checkpoint
from models.vavae import load_vavae
from pipeline.checkpoint import (latents_fingerprint, latest_checkpoint, read_checkpoint, run_checkpoint,
                                 tensor_fingerprint)
from pipeline.common import (UsageError, all_ranks_sum, atomic_path, barrier, cleanup_distributed, init_distributed,
                             is_temp_file, pick_device, pick_precision, read_json, write_json_atomic)
from pipeline.config import config_differences
from pipeline.class_check import MAX_CLASS_DRAWS, fit_class_check, recognised, spread_subset
from pipeline.evaluate import check_heldout, read_back_view
from pipeline.copies import REDRAW_RATIO, copy_ratios_against
from pipeline.generate import decode_latents, denormalise, image_seed, normalise, sample_jobs
from pipeline.images import load_for_tokenizer, save_image, unique_folder_names
from pipeline.latents import load_latents
from pipeline.plot import labelled_grid

SAMPLING_KEYS = ("num_steps", "method", "cfg_scale", "cfg_interval_start", "timestep_shift", "start_t")
# The fast preset (bench/sampler_accuracy.py): Heun with 16 steps matches Euler-250 within 1 % error.
PRESETS = {"fast": dict(method="heun", num_steps=16), "quality": dict(method="euler", num_steps=250)}


@dataclass(frozen=True)
class GenerateSettings:
    """Everything stage 3 is asked to do (stage3_inference.py's flags, with these defaults). The sampling
    fields left None take the run's values (chosen on held-out data by stage 2, else its config)."""
    checkpoint: Optional[str] = None       # checkpoint file or run dir; None: newest run under runs/
    pick: str = "best"                     # with a run dir: best | latest
    vavae_path: str = "pretrained/vavae-imagenet256-f16d32-dinov2.pt"    # or "demo"
    output_dir: str = "generated"
    num_per_class: int = 100
    classes: Optional[Tuple[str, ...]] = None   # names or ids; None: all
    preset: Optional[str] = None           # fast | quality (PRESETS)
    cfg_scale: Optional[float] = None
    cfg_interval_start: Optional[float] = None
    timestep_shift: Optional[float] = None
    start_t: Optional[float] = None        # > 0: variations of the training images (pipeline.generate); 0: pure noise
    copies: str = "redraw"                 # variations that copy a training image: redraw | keep
    class_check: str = "redraw"            # images the class check does not recognise: redraw | keep
    steps: Optional[int] = None
    method: Optional[str] = None           # euler | heun
    seed: int = 0
    batch_size: int = 32
    decode_chunk: int = 16                 # latents decoded at once (memory)
    precision: str = "auto"
    no_ema: bool = False
    original_size: bool = False
    save_latents: bool = False
    archive: Optional[str] = None          # zip | tar
    overwrite: bool = False
    eval: bool = False
    device: str = "auto"
    trust_checkpoint: bool = False


def resolve_checkpoint(path, pick="best", runs_root="runs"):
    """(checkpoint file, what was picked) from a checkpoint file, a run dir (its best, or latest), or None
    (the newest run under runs/)."""
    if path is None:
        runs = [d for d in glob.glob(os.path.join(runs_root, "*")) if latest_checkpoint(d)]
        if not runs:
            raise UsageError(f"no --checkpoint given and no run with checkpoints under {runs_root}/; "
                             f"pass --checkpoint RUN_DIR_OR_FILE")
        path = max(runs, key=os.path.getmtime)
        print(f"using the newest run: {path}")
    if os.path.isdir(path):
        found, what = run_checkpoint(path, pick)
        if found is None:
            raise UsageError(f"--checkpoint {path}: no checkpoints in this run dir")
        return found, what
    if not os.path.isfile(path):
        raise UsageError(f"--checkpoint {path}: no such file or run dir")
    return path, "the given file"


def load_run(path, use_ema=True, trust=False):
    """(model in eval mode, checkpoint dict) from one of our stage 2 checkpoints."""
    ckpt = read_checkpoint(path, trust=trust)
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


def image_file(folder, k):
    """Relative path of generated image k in a class folder."""
    return os.path.join(folder, f"{folder}_{k:05d}.png")


# --------------------------------------------------------------------------------
#                     Output dir: stage 3 owns only what it wrote
# --------------------------------------------------------------------------------

# Files stage 3 writes beside the class folders (only ever touched in a dir whose samples.json is ours).
SUMMARY_FILES = ("samples.json", "grid.png", "latents.safetensors", "eval.json", "eval.png", "memorisation.png",
                 "generated.zip", "generated.tar")
PARTIAL_DIR = ".latents_partial"


def owned_files(record):
    """Relative paths of the images a samples.json record says stage 3 wrote (older records: their image list)."""
    if "files" in record:
        return set(record["files"])
    return {img["file"] for images in record.get("images", {}).values() for img in images}


def foreign_files(out_dir, owned, summary_ours):
    """Files under out_dir that are not in `owned`, our temp files, partial latents or (when the dir holds our
    samples.json) our summary files."""
    found = []
    for root, dirs, files in os.walk(out_dir):
        rel_root = os.path.relpath(root, out_dir)
        dirs[:] = sorted(d for d in dirs if not (rel_root == "." and d == PARTIAL_DIR))
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel not in owned and not is_temp_file(name) and not (summary_ours and rel_root == "."
                                                                    and name in SUMMARY_FILES):
                found.append(rel)
    return found


def remove_owned(out_dir, owned):
    """--overwrite: delete the files stage 3 wrote (never anything else), then the folders they leave empty."""
    for rel in sorted(owned) + list(SUMMARY_FILES):
        path = os.path.join(out_dir, rel)
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
    shutil.rmtree(os.path.join(out_dir, PARTIAL_DIR), ignore_errors=True)
    for folder in sorted({os.path.dirname(rel) for rel in owned if os.path.dirname(rel)}, reverse=True):
        with contextlib.suppress(OSError):  # not empty: it holds something we did not write
            os.rmdir(os.path.join(out_dir, folder))


def remove_temp_files(out_dir):
    """Temp files a killed run left mid-write (atomic_path names; never read, never listed as ours)."""
    for root, _, files in os.walk(out_dir):
        for name in files:
            if is_temp_file(name):
                os.unlink(os.path.join(root, name))


def claim_output_dir(out_dir, settings, planned, overwrite):
    """Make `out_dir` this run's, or refuse. Returns the image files to record: those of earlier runs with the
    same settings plus `planned`. A dir holding any file stage 3 did not write is refused, so the real data
    folder (or anything else of the user's) is never counted, mixed with or deleted."""
    record_path = os.path.join(out_dir, "samples.json")
    record = read_json(record_path) if os.path.isfile(record_path) else None
    owned = owned_files(record) if record else set()
    foreign = foreign_files(out_dir, owned, summary_ours=record is not None) if os.path.isdir(out_dir) else []
    if foreign:
        raise UsageError(f"--output_dir {out_dir}: holds {len(foreign)} file(s) that stage 3 did not write "
                         f"(e.g. {foreign[0]}); stage 3 writes only into a new or empty folder or its own earlier "
                         f"output, choose another --output_dir")
    if record is not None:   # our own dir: a killed run's half-written images go
        remove_temp_files(out_dir)
    if record is None:
        return sorted(planned)
    if record.get("settings") == settings:
        return sorted(owned | set(planned))
    if not overwrite:
        diff = config_differences(record.get("settings", {}), settings, ignore=())
        raise UsageError(f"--output_dir {out_dir}: holds images generated with other settings ({', '.join(diff)}); "
                         f"pass --overwrite to replace them (only files stage 3 wrote are removed) or choose another "
                         f"--output_dir")
    remove_owned(out_dir, owned)
    return sorted(planned)


def make_archive(out_dir, kind, files):
    """Pack the generated images (relative paths) into generated.zip or generated.tar (Kaggle downloads
    only 500 files)."""
    path = os.path.join(out_dir, f"generated.{kind}")
    with atomic_path(path) as tmp:
        if kind == "zip":
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
                for rel in files:
                    z.write(os.path.join(out_dir, rel), rel)
        else:
            with tarfile.open(tmp, "w") as t:
                for rel in files:
                    t.add(os.path.join(out_dir, rel), rel)
    return path


def generate(job):
    """Stage 3 end to end for `job` (GenerateSettings). Returns (the samples.json manifest, the tokenizer) on
    rank 0, None on the other ranks."""
    rank, world, local_rank = init_distributed()
    try:
        return _generate(job, rank, world, local_rank)
    finally:
        cleanup_distributed(world)


def _generate(job, rank, world, local_rank):
    t_start = time.time()
    device = pick_device(job.device, local_rank)
    dtype = pick_precision(job.precision, device)
    ckpt_path, picked = resolve_checkpoint(job.checkpoint, job.pick)
    model, ckpt = load_run(ckpt_path, use_ema=not job.no_ema, trust=job.trust_checkpoint)
    model.to(device)
    classes = ckpt["classes"]
    class_ids = select_classes(job.classes, classes)
    folders = unique_folder_names(classes)
    if job.eval:
        check_heldout(ckpt["latent_dir"])  # refuse before generating anything
    sampling = sampling_settings(ckpt, job)
    latent_shape = list(ckpt["latent_shape"])
    tokenizer = load_vavae(job.vavae_path, device=device, latent_channels=latent_shape[0], trust=job.trust_checkpoint)
    gray = ckpt["color_mode"] == "gray"
    data = ckpt.get("data") or {}
    # a colour-mapped data set was trained as intensities: draw them in its map again (stage 1 recorded it)
    colormap = (data.get("colormap") or {}).get("name") if gray else None
    original_sizes = ckpt["original_sizes"] or {} if job.original_size else None
    stats = ckpt["stats"]
    weights = "ema" if not job.no_ema else "model"
    start_t = sampling["start_t"]
    check = job.class_check == "redraw" and len(classes) > 1   # one class: nothing to tell apart
    train = None
    if start_t > 0:
        train = training_latents(ckpt, f"--start_t {start_t:g}: images are variations of the training images",
                                 "pass --start_t 0 to sample from pure noise")
    elif check:
        train = training_latents(ckpt, "--class_check redraw: its classifiers learn from the training images",
                                 "pass --class_check keep")
    sources = train if start_t > 0 else None
    # start_t is recorded only when used, so output dirs of pure-noise runs keep their settings
    recorded = {k: v for k, v in sampling.items() if k != "start_t" or v > 0}
    if sources is not None:
        recorded["sources_sha1"] = ckpt["latents_fingerprint"]
        recorded["copies"] = f"redraw below {REDRAW_RATIO:g}" if job.copies == "redraw" else "keep"
    recorded["class_check"] = (f"redraw up to {MAX_CLASS_DRAWS} times" if check else
                               "keep" if job.class_check == "keep" else "none (one class)")
    copy_ratios = (copy_ratios_against(torch.cat(sources), ckpt["stats"]["std"].flatten())
                   if sources is not None and job.copies == "redraw" else None)

    settings = dict(step=int(ckpt["step"]), weights=weights, weights_sha1=tensor_fingerprint(ckpt[weights]),
                    seed=job.seed, **recorded, stats_source=stats.get("source"),
                    tokenizer=os.path.basename(str(job.vavae_path)), original_size=bool(job.original_size),
                    color_mode="gray" if gray else "rgb", precision=job.precision,
                    **({"colormap": colormap} if colormap else {}))
    planned = [image_file(folders[classes[c]], k) for c in class_ids for k in range(job.num_per_class)]
    if rank == 0:
        print(f"checkpoint: {ckpt_path} ({picked}, step {settings['step']})")
        files = claim_output_dir(job.output_dir, settings, planned, job.overwrite)
        os.makedirs(job.output_dir, exist_ok=True)
        write_json_atomic(os.path.join(job.output_dir, "samples.json"),
                          dict(settings=settings, checkpoint=os.path.abspath(ckpt_path), files=files, complete=False))
    barrier(world)
    # every rank lists the missing images before any rank writes one
    jobs = [(c, k) for c in class_ids for k in range(job.num_per_class)
            if not os.path.isfile(os.path.join(job.output_dir, image_file(folders[classes[c]], k)))]
    mine = jobs[rank::world]

    def decode(z_normalised):   # normalised latents -> (tokenizer-space latents, images (B, 3, H, W) on the CPU)
        z_tokenizer = denormalise(z_normalised, stats)
        images = decode_latents(tokenizer, z_tokenizer, device, dtype, chunk=job.decode_chunk)
        return z_tokenizer, images.clone()   # a normal tensor (decoded in inference mode): the check replaces rows

    checkers = None
    if check:
        subsets = [spread_subset(x) for x in train]
        views = torch.cat([read_back_view(decode(x)[1], gray) for x in subsets])
        checkers = fit_class_check(views, torch.cat([torch.full((len(x),), c) for c, x in enumerate(subsets)]),
                                   len(classes), device)

    partial_dir = os.path.join(job.output_dir, PARTIAL_DIR)
    bar = tqdm(total=len(mine), unit="img", desc="generate", disable=rank != 0)
    # this rank's counts per class: copies drawn again, images drawn again for the class check, never recognised
    redrawn, class_redrawn, unrecognised = (torch.zeros(len(classes), dtype=torch.long) for _ in range(3))
    for start in range(0, len(mine), job.batch_size):
        batch = mine[start:start + job.batch_size]
        labels = torch.tensor([c for c, _ in batch])
        z, redraws = sample_jobs(model, batch, job.seed, latent_shape, sampling, device, dtype, by_class=sources,
                                 copy_ratios=copy_ratios)
        z, images = decode(z)
        drawn = torch.zeros(len(batch), dtype=torch.bool)
        for draw in range(1, MAX_CLASS_DRAWS + 2) if checkers else ():   # draw again what the check does not recognise
            todo = (~recognised(checkers, read_back_view(images, gray), labels)).nonzero().flatten()
            if len(todo) == 0 or draw > MAX_CLASS_DRAWS:
                unrecognised += torch.bincount(labels[todo], minlength=len(classes))
                break
            again, again_redraws = sample_jobs(model, [batch[i] for i in todo.tolist()], job.seed, latent_shape,
                                               sampling, device, dtype, by_class=sources, copy_ratios=copy_ratios,
                                               draw=draw)
            z[todo.to(z.device)], images[todo] = decode(again)
            redraws[todo], drawn[todo] = again_redraws, True
        redrawn += torch.bincount(labels[redraws > 0], minlength=len(classes))
        class_redrawn += torch.bincount(labels[drawn], minlength=len(classes))
        if job.save_latents:
            with atomic_path(os.path.join(partial_dir, f"rank{rank}_{start:07d}_{time.time_ns()}.safetensors")) as tmp:
                save_file({"latents": z.cpu().contiguous(), "labels": labels,
                           "index": torch.tensor([k for _, k in batch])}, tmp)
        for img, (c, k) in zip(images, batch):
            size = original_sizes.get(classes[c]) if original_sizes is not None else None
            save_image(img, os.path.join(job.output_dir, image_file(folders[classes[c]], k)), gray,
                       size=tuple(size) if size else None, colormap=colormap)
        bar.update(len(batch))
    bar.close()
    redrawn, class_redrawn, unrecognised = (all_ranks_sum(x, device, world) for x in (redrawn, class_redrawn,
                                                                                       unrecognised))
    barrier(world)
    if rank != 0:
        return None

    # ---- summary outputs (rank 0) ----------------------------------------------------------------
    write_grid(job.output_dir, [(classes[c], [image_file(folders[classes[c]], k) for k in range(min(8, job.num_per_class))])
                                for c in class_ids], gray and not colormap)
    if job.save_latents:
        _merge_latents(partial_dir, os.path.join(job.output_dir, "latents.safetensors"))
    images = images_by_class(files, classes, folders, job.seed)

    def per_class(counts):   # {class name: count} over the classes generated
        return {classes[c]: int(counts[c]) for c in class_ids}

    manifest = dict(settings=settings, checkpoint=os.path.abspath(ckpt_path), checkpoint_picked=picked,
                    files=files, complete=True, latent_dir=ckpt["latent_dir"],
                    classes={n: dict(label=classes.index(n), folder=folders[n], count=len(v)) for n, v in images.items()},
                    images=images, generated_this_run=len(jobs),
                    redrawn_this_run=per_class(redrawn) if copy_ratios is not None else None,
                    class_redrawn_this_run=per_class(class_redrawn) if checkers else None,
                    unrecognised_this_run=per_class(unrecognised) if checkers else None,
                    time_s=round(time.time() - t_start, 2),
                    colormap=colormap, data=data)
    if job.archive:
        manifest["archive"] = os.path.basename(make_archive(job.output_dir, job.archive, files))
    write_json_atomic(os.path.join(job.output_dir, "samples.json"), manifest)
    return manifest, tokenizer


def training_latents(ckpt, why, remedy):
    """[per class id: its normalised training latents (n, C, h, w)] from the run's stage 1 output, for variations
    and the class check. They must be the latents the run trained on (its fingerprint): otherwise a one-line
    error: `why` they are needed (it names the flag), what is wrong, and `remedy` (the flag that avoids them)."""
    latent_dir = ckpt["latent_dir"]
    if not latent_dir or not os.path.isdir(latent_dir):
        raise UsageError(f"{why}, but the run's latent dir ({latent_dir}) is not on this machine; copy it there or "
                         f"{remedy}")
    data = load_latents(latent_dir)
    if ckpt.get("latents_fingerprint") not in (None, latents_fingerprint(data)):
        raise UsageError(f"{why}, but the latents in {latent_dir} are not the ones this run trained on "
                         f"(stage 1 was run again?); {remedy}, or train on them again")
    train = data["split"] == 0
    latents, labels = normalise(data["latents"][train].float(), ckpt["stats"]), data["labels"][train]
    found = [latents[labels == c] for c in range(len(ckpt["classes"]))]
    empty = [name for name, x in zip(ckpt["classes"], found) if len(x) == 0]
    if empty:
        raise UsageError(f"{why}, but class(es) {', '.join(empty)} have no training latents in {latent_dir}; {remedy}")
    return found


def write_grid(out_dir, rows, gray):
    """grid.png: one labelled row per class; rows = [(class name, [image file relative to out_dir])]. With
    --original_size classes differ in size: all are shown at the size of the first image."""
    width, height = Image.open(os.path.join(out_dir, rows[0][1][0])).size
    images = [[load_for_tokenizer(os.path.join(out_dir, rel), (height, width))[0] for rel in files] for _, files in rows]
    labelled_grid(images, os.path.join(out_dir, "grid.png"), [name for name, _ in rows], gray,
                  row_kinds=["generated"] * len(rows), title=f"stage 3: generated, first {len(images[0])} per class")


def images_by_class(files, classes, folders, seed):
    """samples.json's `images`: {class name: [{file, seed}]} for every image file of the output dir (this
    run's and earlier runs' with the same settings); the image index k is the number in the file name."""
    by_folder = {folders[n]: (c, n) for c, n in enumerate(classes)}
    images = {}
    for rel in files:
        c, name = by_folder[os.path.dirname(rel)]
        k = int(os.path.splitext(os.path.basename(rel))[0].rsplit("_", 1)[1])
        images.setdefault(name, []).append(dict(file=rel, seed=image_seed(seed, c, k)))
    return images


def sampling_settings(ckpt, job):
    """The run's sampling settings (chosen on held-out data by stage 2 when it could, else its config), then
    --preset, then single flags."""
    sampling = dict(start_t=0.0)   # runs saved before start_t existed sampled from pure noise
    sampling.update({k: v for k, v in ckpt["config"]["sample"].items() if k in SAMPLING_KEYS})
    sampling.update({k: v for k, v in (ckpt["sampling"] or {}).items() if k in SAMPLING_KEYS})
    if job.preset:
        sampling.update(PRESETS[job.preset])
    for key, value in (("num_steps", job.steps), ("method", job.method), ("cfg_scale", job.cfg_scale),
                       ("cfg_interval_start", job.cfg_interval_start), ("timestep_shift", job.timestep_shift),
                       ("start_t", job.start_t)):
        if value is not None:
            sampling[key] = value
    if len(ckpt["classes"]) == 1:
        sampling["cfg_scale"] = 1.0  # unconditional model: nothing to guide towards
    return sampling


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
