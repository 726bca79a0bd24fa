"""
Latent shards on disk (the reference layout, see tests/reference/latent_dataset_format.json):
`latents_rankRR_shardSSS.safetensors` with `latents` float32 (N, C, h, w), `labels` int64 (N,),
`split` uint8 (N,) (0 train, 1 held-out) and optionally `latents_flip`; string metadata names the
image indices the shard holds. Shards are written atomically.

Beside the shards, stage 1 writes `dataset.json` (classes, file list, preprocessing, split, tokenizer) and
`extraction.json` (the settings its shards were made with). This module is the one reader and writer of
both: every record carries `schema_version`, a record from a newer version of this code is refused
instead of misread, and paths in it are absolute so a latent dir works from any working directory.
"""

import glob
import json
import os
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.common import UsageError, atomic_path, read_json, write_json_atomic

SHARD_PATTERN = re.compile(r"latents_rank(\d+)_shard(\d+)\.safetensors$")
SCHEMA_VERSION = 1          # of dataset.json and extraction.json
DATASET_FILE = "dataset.json"
EXTRACTION_FILE = "extraction.json"


# --------------------------------------------------------------------------------
#                        dataset.json and extraction.json
# --------------------------------------------------------------------------------

def write_record(latent_dir, name, record):
    """Atomically write record `name` (DATASET_FILE or EXTRACTION_FILE) with the schema version and an
    absolute `data_dir` (top level and in `settings`)."""
    record = dict(record, schema_version=SCHEMA_VERSION)
    if isinstance(record.get("settings"), dict):
        record["settings"] = dict(record["settings"])      # the caller's dicts stay as they are
    for holder in (record, record.get("settings")):
        if isinstance(holder, dict) and holder.get("data_dir"):
            holder["data_dir"] = os.path.abspath(holder["data_dir"])
    write_json_atomic(os.path.join(latent_dir, name), record)


def read_record(latent_dir, name, flag="--latent_dir"):
    """Record `name` of a stage 1 output dir, or None when it has none. A record this code cannot read
    (not JSON, or written by a newer version) is a one-line UsageError naming the file."""
    path = os.path.join(latent_dir, name)
    if not os.path.isfile(path):
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"{flag} {latent_dir}: {name} is unreadable ({str(e)[:80]}); rerun stage 1 with --overwrite") from None
    version = record.get("schema_version", 1) if isinstance(record, dict) else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise UsageError(f"{flag} {latent_dir}: {name} has schema version {version!r}, this code reads up to "
                         f"{SCHEMA_VERSION}; update the code or rerun stage 1 with --overwrite")
    return record


def read_dataset(latent_dir, flag="--latent_dir"):
    """dataset.json of a finished stage 1 run; a one-line UsageError when there is none."""
    record = read_record(latent_dir, DATASET_FILE, flag)
    if record is None:
        raise UsageError(f"{flag} {latent_dir}: no {DATASET_FILE}; run stage1_extract_features.py (to its end) first")
    return record


def dataset_image_paths(record):
    """Absolute paths of the images of dataset.json `record`, in its file (= latent row index) order."""
    data_dir = record.get("data_dir") or record["settings"]["data_dir"]
    return data_dir, [os.path.join(data_dir, rel) for rel in record["files"]]



def shard_path(latent_dir, rank, shard_index):
    return os.path.join(latent_dir, f"latents_rank{rank:02d}_shard{shard_index:03d}.safetensors")


def write_shard(path, tensors, info):
    """Atomically save a shard. `info` (JSON-able) must hold `indices`, the image indices (dataset.json
    order) of its rows; stage 1 adds the skipped images, original sizes and grayscale flags."""
    metadata = {"total_size": str(int(tensors["latents"].shape[0])), "dtype": "torch.float32", "device": "cpu",
                "info": json.dumps(info)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def list_shards(latent_dir):
    """{shard index: path} of the complete shards in `latent_dir` (temp files are never listed)."""
    found = {}
    for path in sorted(glob.glob(os.path.join(latent_dir, "latents_rank*_shard*.safetensors"))):
        m = SHARD_PATTERN.search(os.path.basename(path))
        if m:
            found[int(m.group(2))] = path
    return found


def read_shard_info(path):
    """The `info` dict a shard was written with ({} for shards from other tools)."""
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("info", "{}"))


def load_latents(latent_dir, check_finite=True):
    """All shards concatenated in shard order: dict of tensors (`latents`, `labels`, `split`, maybe
    `latents_flip`) plus `indices` (int64). Non-finite values are an error naming file and row."""
    shards = list_shards(latent_dir)
    if not shards:
        raise UsageError(f"{latent_dir}: no latents_*.safetensors shards; run stage1_extract_features.py first")
    parts = []
    for _, path in sorted(shards.items()):
        try:
            data = load_file(path)
            indices = read_shard_info(path).get("indices", [])
        except (SafetensorError, OSError, ValueError) as e:
            raise UsageError(f"{path}: unreadable latent shard ({str(e)[:100]}); rerun stage 1 with --overwrite") from None
        if "latents" not in data or "labels" not in data:
            raise UsageError(f"{path}: not a latent shard (needs 'latents' and 'labels')")
        n = data["latents"].shape[0]
        if n == 0:
            continue  # every image of this shard was unreadable (they are listed in its metadata)
        data.setdefault("split", torch.zeros(n, dtype=torch.uint8))
        data["indices"] = torch.tensor(indices if len(indices) == n else range(n), dtype=torch.int64)
        if check_finite:
            for key in ("latents", "latents_flip"):
                if key in data:
                    bad = (~torch.isfinite(data[key])).flatten(1).any(dim=1)
                    if bad.any():
                        row = int(bad.nonzero()[0])
                        raise UsageError(f"{path}: non-finite values (NaN/Inf) in '{key}' at row {row} "
                                         f"(image index {int(data['indices'][row])}); rerun stage 1 for it")
        parts.append(data)
    if not parts:
        raise UsageError(f"{latent_dir}: every shard is empty (no readable images)")
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise UsageError(f"{latent_dir}: shards disagree on their tensors (mixed runs?); rerun stage 1 with --overwrite")
    return {k: torch.cat([p[k] for p in parts]) for k in keys}


# --------------------------------------------------------------------------------
#                        Synthetic latent dirs (tests, benchmarks)
# --------------------------------------------------------------------------------

def write_synthetic_latent_dir(path, class_means, n_per_class=24, shape=(4, 4, 4), noise=0.1, heldout_every=6,
                               seed=0, class_names=None, color_mode="gray"):
    """A stage-1-like latent dir without images, for tests and benchmarks of stages 2 and 3: class c has
    latents class_means[c] + noise * N(0, 1) of `shape` (C, h, w); every `heldout_every`-th image is held out.
    Writes one shard, latents_stats.pt and dataset.json. Returns (latents, labels, split)."""
    from pipeline.common import atomic_torch_save
    from pipeline.stats import channel_stats
    g = torch.Generator().manual_seed(seed)
    names = class_names or [f"class{c}" for c in range(len(class_means))]
    latents = torch.cat([m + noise * torch.randn(n_per_class, *shape, generator=g) for m in class_means]).float()
    labels = torch.arange(len(class_means)).repeat_interleave(n_per_class)
    split = (torch.arange(len(labels)) % heldout_every == heldout_every - 1).to(torch.uint8)
    os.makedirs(path, exist_ok=True)
    write_shard(shard_path(path, 0, 0), {"latents": latents, "labels": labels, "split": split},
                {"indices": list(range(len(labels)))})
    atomic_torch_save(channel_stats(latents[split == 0]), os.path.join(path, "latents_stats.pt"))
    classes = [dict(name=n, label=c, train=int(((labels == c) & (split == 0)).sum()),
                    heldout=int(((labels == c) & (split == 1)).sum()), common_original_size=[40, 30])
               for c, n in enumerate(names)]
    write_record(path, DATASET_FILE, dict(classes=classes, color_mode=color_mode, latent_shape=list(shape),
                                          image_size=[shape[1] * 16, shape[2] * 16],
                                          tokenizer=dict(name="test", latent_channels=shape[0])))
    return latents, labels, split
