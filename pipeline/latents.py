"""
Latent shards on disk (the reference layout, see tests/reference/latent_dataset_format.json):
`latents_rankRR_shardSSS.safetensors` with `latents` float32 (N, C, h, w), `labels` int64 (N,),
`split` uint8 (N,) (0 train, 1 held-out) and optionally `latents_flip`; string metadata names the
image indices the shard holds. Shards are written atomically.
"""

import glob
import json
import os
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.common import UsageError, atomic_path

SHARD_PATTERN = re.compile(r"latents_rank(\d+)_shard(\d+)\.safetensors$")


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
