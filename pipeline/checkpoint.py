"""
The one owner of a run's checkpoint format: what a stage 2 checkpoint holds, where it lives in a run
dir, how it is written (atomically, pruned), found (`latest`, `best`) and read (keys and version checked).

Run dir layout:
    checkpoints/NNNNNNN.pt    the last `keep_last` training states (step NNNNNNN)
    checkpoints/latest        name of the newest of them (resume starts there)
    checkpoints/best.pt       weights of the step with the best held-out score (stage 3's default);
                              never pruned, rewritten whenever the held-out score improves

A checkpoint is a dict with every key of CHECKPOINT_KEYS. `format_version` is read: files of a newer
format are refused, older ones are read with defaults for the keys they lack (listed in UPGRADE_DEFAULTS).
"""

import glob
import hashlib
import os

import torch

from models.lightningdit import load_dit_checkpoint
from models.safe_load import CheckpointError
from pipeline.common import UsageError, atomic_torch_save, write_text_atomic

FORMAT_VERSION = 2
CHECKPOINT_KEYS = (
    "format_version",
    "model", "ema", "opt", "scaler",           # state dicts (best.pt: opt and scaler are None)
    "step", "rng",                             # progress and every rank's RNG state (bit-exact resume)
    "config", "model_name", "model_config",    # resolved run config; LightningDiT constructor arguments
    "classes", "latent_shape", "stats",        # class names, (C, h, w), {mean, std, source}
    "color_mode", "image_size", "original_sizes", "tokenizer", "latent_dir", "data",  # what stage 3 needs of stage 1
    "latents_fingerprint",                     # sha1 of the latents trained on: resume refuses other data
    "init_stats",                              # stats of an --init_from model (None otherwise)
    "monitor",                                 # held-out signal: best score and step so far, patience counter
    "sampling",                                # sampling settings chosen on held-out data (None: the config's)
    "code_version",
)
# Keys a version-1 checkpoint lacks, and what they mean for it.
UPGRADE_DEFAULTS = dict(format_version=1, latents_fingerprint=None, monitor=None, sampling=None, data={},
                        init_stats=None)
CKPT_PATTERN = "[0-9]" * 7 + ".pt"


# --------------------------------------------------------------------------------
#                                   Writing
# --------------------------------------------------------------------------------

def save_checkpoint(run_dir, state, keep_last):
    """Write checkpoints/NNNNNNN.pt atomically, then the `latest` pointer, then prune to `keep_last` files."""
    _check_keys(state)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    name = f"{state['step']:07d}.pt"
    atomic_torch_save(state, os.path.join(ckpt_dir, name))
    write_text_atomic(os.path.join(ckpt_dir, "latest"), name + "\n")
    for old in sorted(glob.glob(os.path.join(ckpt_dir, CKPT_PATTERN)))[:-keep_last]:
        os.unlink(old)
    return os.path.join(ckpt_dir, name)


def save_best(run_dir, state):
    """checkpoints/best.pt: the state without optimizer and scaler (weights for stage 3, half the size)."""
    _check_keys(state)
    path = os.path.join(run_dir, "checkpoints", "best.pt")
    atomic_torch_save(dict(state, opt=None, scaler=None), path)
    return path


def _check_keys(state):
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    extra = [k for k in state if k not in CHECKPOINT_KEYS]
    assert not missing and not extra, f"checkpoint keys: missing {missing}, unknown {extra}"


# --------------------------------------------------------------------------------
#                                   Finding
# --------------------------------------------------------------------------------

def latest_checkpoint(run_dir):
    """Path of the checkpoint named by checkpoints/latest (falling back to the newest complete file), or None."""
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    pointer = os.path.join(ckpt_dir, "latest")
    if os.path.isfile(pointer):
        with open(pointer) as f:
            path = os.path.join(ckpt_dir, f.read().strip())
        if os.path.isfile(path):
            return path
    files = sorted(glob.glob(os.path.join(ckpt_dir, CKPT_PATTERN)))
    return files[-1] if files else None


def latest_step(run_dir):
    """The training step of the run's latest checkpoint (its file name is the step), or None."""
    path = latest_checkpoint(run_dir)
    return int(os.path.basename(path)[:-len(".pt")]) if path else None


def best_checkpoint(run_dir):
    path = os.path.join(run_dir, "checkpoints", "best.pt")
    return path if os.path.isfile(path) else None


def run_checkpoint(run_dir, which="best"):
    """(path, what) for stage 3: `best` falls back to `latest` for runs without a held-out signal."""
    if which == "best" and best_checkpoint(run_dir):
        return best_checkpoint(run_dir), "best"
    found = latest_checkpoint(run_dir)
    return found, ("latest (the run has no best.pt: no held-out images)" if which == "best" and found else "latest")


# --------------------------------------------------------------------------------
#                                   Reading
# --------------------------------------------------------------------------------

def read_checkpoint(path, trust=False, what="--checkpoint", need_training_state=False):
    """Load one of our checkpoints: every key present (older formats upgraded), or a one-line UsageError."""
    try:
        ckpt = load_dit_checkpoint(path, trust=trust)
    except CheckpointError as e:
        raise UsageError(f"{what}: {e}") from None
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in ("model", "model_config", "stats", "classes",
                                                                  "latent_shape", "step", "config")):
        raise UsageError(f"{what} {path}: not a stage 2 checkpoint of this project; a released ImageNet model "
                         f"must be fine-tuned first (stage 2 --init_from)")
    version = ckpt.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise UsageError(f"{what} {path}: checkpoint format {version} is newer than this code reads "
                         f"({FORMAT_VERSION}); update the project")
    ckpt = {**UPGRADE_DEFAULTS, **{k: None for k in CHECKPOINT_KEYS}, **ckpt}
    if need_training_state and (ckpt["opt"] is None or ckpt["scaler"] is None):
        raise UsageError(f"{what} {path}: holds weights only (a best.pt); resume from checkpoints/latest")
    return ckpt


# --------------------------------------------------------------------------------
#                                 Fingerprints
# --------------------------------------------------------------------------------

def tensor_fingerprint(tensors):
    """sha1 (hex, 16 chars) of named tensors' dtypes, shapes and bytes, in name order."""
    h = hashlib.sha1()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def latents_fingerprint(data):
    """Fingerprint of what stage 2 trains on: latents (and flipped copies), labels and split."""
    return tensor_fingerprint({k: data[k] for k in ("latents", "latents_flip", "labels", "split") if k in data})
