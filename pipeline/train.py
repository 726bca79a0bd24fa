"""
Stage 2 logic: train a class-conditional LightningDiT with rectified flow on stage 1's latents.
`stage2_train_dit.py` is its command line; the loop in `_train()` reads top to bottom.

Recipe (LightningDiT): velocity prediction on the linear path, logit-normal t, MSE + cosine loss,
label dropout for classifier-free guidance, AdamW (betas 0.9/0.95), gradient clipping, EMA with a
warm-up. Latents live on the device; batches are drawn there.

Small data sets overfit: the run length follows the data (`train.epochs` over the training images
unless `train.max_steps` is set), and every `monitor.every` steps the EMA model is scored on held-out
latents (pipeline/heldout.py). The best-scoring step is saved as checkpoints/best.pt (stage 3's
default), training stops after `monitor.patience` checks without improvement, and at the end the
guidance scale and interval are chosen on the held-out set and recorded in best.pt.

Resume restores model, EMA, optimizer, scaler, step, data order, RNG and the held-out monitor: on the
CPU, N steps + resume + N steps equal 2N uninterrupted steps exactly.
"""

import contextlib
import copy
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from tqdm import tqdm

from models.lightningdit import LightningDiT_models, dit_state_dict_from_checkpoint, load_dit_checkpoint
from models.safe_load import CheckpointError
from models.transport import training_losses
from pipeline.checkpoint import (FORMAT_VERSION, latents_fingerprint, latest_checkpoint, read_checkpoint,
                                 save_best, save_checkpoint)
from pipeline.common import (UsageError, autocast, cleanup_distributed, init_distributed, is_temp_file, pick_device,
                             pick_precision, run_lock, write_text_atomic)
from pipeline.config import ADDED_KEYS, config_differences, save_config
from pipeline.generate import decode_latents, denormalise, image_seed, latent_maps, sample_latents
from pipeline.heldout import (GUIDANCE_GRID, MAX_REDRAWN, RECOGNISED_MARGIN, START_GRID, HeldoutSet, choose_start,
                              tune_sampling)
from pipeline.latents import load_latents, read_dataset
from pipeline.plot import labelled_grid, loss_plot
from pipeline.stats import load_stats, pooled_std, read_recommendation

VALIDATION_T = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class RunSettings:
    """What stage 2 needs besides the config: where data and run live, and how to start."""
    latent_dir: str
    output_dir: str
    resume: str = "auto"               # auto | none | a checkpoint file
    init_from: Optional[str] = None
    vavae_path: Optional[str] = None   # decodes the sample grids when given
    device: str = "auto"
    trust_checkpoint: bool = False


# --------------------------------------------------------------------------------
#                                   Data
# --------------------------------------------------------------------------------

def choose_stats(latent_dir, requested, channels, init_stats=None):
    """Returns ({'mean', 'std'}, source). auto: the stats an --init_from model was trained with, else
    stats_recommendation.txt, else this data's own stats."""
    if requested == "auto":
        if init_stats is not None:
            if init_stats.get("mean") is not None:
                return {"mean": init_stats["mean"], "std": init_stats["std"]}, init_stats["source"]
            requested = init_stats["source"]
        else:
            requested = read_recommendation(latent_dir) or "micro_doppler"
    name = {"micro_doppler": "latents_stats.pt", "imagenet": "latents_stats_imagenet.pt"}[requested]
    path = os.path.join(latent_dir, name)
    if not os.path.isfile(path):
        hint = "pass --imagenet_stats to stage 1" if requested == "imagenet" else "rerun stage 1"
        raise UsageError(f"--stats {requested}: {path} is missing; {hint}")
    try:
        return load_stats(path, channels=channels, what=f"{requested} stats"), requested
    except CheckpointError as e:
        raise UsageError(str(e)) from None


def check_classes(labels, classes, latent_dir):
    """Every class needs training latents: a class without any would be sampled from an untrained label."""
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise UsageError(f"--latent_dir {latent_dir}: class(es) {', '.join(empty)} have no training latents "
                         f"(per-class counts {counts}; a shard missing or their images unreadable); rerun stage 1")
    return counts


def batch_indices(seed, step, rank, num_items, batch_size):
    """Indices of the batch at `step` on `rank`: a function of its arguments only, so resuming at any step
    draws the same data as an uninterrupted run. Uniform with replacement (small data sets)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 131 + rank)
    return torch.randint(num_items, (batch_size,), generator=g)


def time_shift(x, max_fraction, seed, step, rank):
    """Augmentation: roll each latent (B, C, h, w) along time (width) by up to max_fraction of its width;
    a spectrogram shifted in time shows the same activity. Stateless like batch_indices."""
    if max_fraction <= 0:
        return x
    g = torch.Generator().manual_seed(seed * 7_000_003 + step * 17 + rank)
    limit = max(1, int(round(max_fraction * x.shape[-1])))
    shifts = torch.randint(-limit, limit + 1, (x.shape[0],), generator=g).tolist()
    return torch.stack([torch.roll(xi, s, dims=-1) for xi, s in zip(x, shifts)])


def resolve_max_steps(tcfg, num_train):
    """train.max_steps when set, else train.epochs passes over the training images, within
    [train.min_steps, train.max_steps_cap]."""
    if tcfg["max_steps"] is not None:
        return int(tcfg["max_steps"])
    steps = math.ceil(tcfg["epochs"] * num_train / tcfg["batch_size"])
    return int(min(max(steps, tcfg["min_steps"]), tcfg["max_steps_cap"]))


# --------------------------------------------------------------------------------
#                                  Model
# --------------------------------------------------------------------------------

def build_model(model_cfg, latent_shape, num_classes):
    name = model_cfg["name"]
    if name not in LightningDiT_models:
        raise UsageError(f"--model {name}: unknown; choose from {', '.join(LightningDiT_models)}")
    channels, h, w = latent_shape
    if h != w:
        raise UsageError(f"latents of {h}x{w}: LightningDiT needs square latents; use a square --image_size in stage 1")
    patch = int(name.rsplit("/", 1)[1])
    if h % patch:
        raise UsageError(f"latents of {h}x{w} cannot be cut into {patch}x{patch} patches ({name}); use a model with "
                         f"patch size 1 or a larger --image_size in stage 1")
    flags = {k: model_cfg[k] for k in ("use_qknorm", "use_swiglu", "use_rope", "use_rmsnorm", "wo_shift")}
    # One class: unconditional training, no null row needed and no guidance.
    dropout = model_cfg["class_dropout_prob"] if num_classes > 1 else 0.0
    return LightningDiT_models[name](input_size=h, in_channels=channels, num_classes=num_classes,
                                     class_dropout_prob=dropout, **flags)


def init_from_checkpoint(model, path, classes, trust=False, log=print):
    """Copy every tensor whose name and shape match; re-initialise the label table unless the classes
    are the same; refuse other architectures. Returns the stats the source model was trained with."""
    try:
        ckpt = load_dit_checkpoint(path, trust=trust)
        source = dit_state_dict_from_checkpoint(ckpt, prefer_ema=True, path=path)
    except CheckpointError as e:
        raise UsageError(f"--init_from: {e}") from None
    target = model.state_dict()
    label_key = "y_embedder.embedding_table.weight"
    same_classes = isinstance(ckpt.get("classes"), list) and ckpt["classes"] == list(classes)
    # The transformer trunk and patch embedding define the architecture: they must all match. Other tensors
    # (output layer, fixed position tables of another input size) are re-initialised when they differ.
    core = [k for k in target if k.startswith(("blocks.", "x_embedder."))]
    matched = [k for k in target if k != label_key and k in source and source[k].shape == target[k].shape]
    if any(k not in matched for k in core) or any(k.startswith("blocks.") and k not in target for k in source):
        bad = [f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}" if k in source else f"{k} missing"
               for k in core if k not in matched][:2] or ["it has more blocks"]
        raise UsageError(f"--init_from {path}: a different architecture ({', '.join(bad)}); "
                         f"pick the matching --model")
    loaded = {k: source[k] for k in matched}
    if same_classes and label_key in source and source[label_key].shape == target[label_key].shape:
        loaded[label_key] = source[label_key]
    model.load_state_dict({**target, **loaded})
    reinit = [k for k in target if k not in loaded]
    skipped = [k for k in source if k not in target or k not in loaded]
    log(f"init_from {path}: loaded {len(loaded)} tensors, re-initialised {len(reinit)} "
        f"({', '.join(reinit[:4])}), skipped {len(skipped)} ({', '.join(skipped[:4])})")
    stats = ckpt.get("stats") if isinstance(ckpt.get("stats"), dict) else None
    if stats and "mean" in stats:
        return {"mean": stats["mean"], "std": stats["std"], "source": stats.get("source", "init_from")}
    return {"source": "imagenet"}  # released ImageNet checkpoints were trained with the ImageNet latent stats


def make_optimizer(params, tcfg):
    """AdamW, fused (one kernel for all parameters, on CUDA and on the CPU: 4x faster steps there); the
    grad scaler passes it its skip-if-not-finite flag without a host sync."""
    return torch.optim.AdamW(params, lr=tcfg["lr"], betas=(tcfg["beta1"], tcfg["beta2"]),
                             weight_decay=tcfg["weight_decay"], fused=True)


def make_grad_scaler(device, dtype):
    """The grad scaler also skips steps whose gradients are not finite, in every precision. With fp32/bf16 its
    scale stays 1 (train_step sets it back after a skip, which would halve it), so scaled and unscaled
    gradients are bit-identical."""
    fp16 = dtype == torch.float16
    return torch.amp.GradScaler(device.type, init_scale=2.0 ** 16 if fp16 else 1.0,
                                growth_interval=2000 if fp16 else 2 ** 30)


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def stop_on_non_finite(bad_steps, max_bad_steps, scale):
    """Stop after `max_bad_steps` non-finite steps in a row, but not while an fp16 grad scaler is still above 1:
    each skipped step halves its scale (from 2^16), so a run of skips there is the scaler finding its scale,
    not divergence. With fp32/bf16 the scale is always 1."""
    return bad_steps >= max_bad_steps and scale <= 1.0


def ema_decay_at(step, target):
    """Warm-up so short runs still get a useful EMA: decay = min(target, (1 + step) / (10 + step))."""
    return min(target, (1 + step) / (10 + step))


def lr_at(step, tcfg):
    return tcfg["lr"] * min(1.0, (step + 1) / tcfg["warmup_steps"]) if tcfg["warmup_steps"] else tcfg["lr"]


# --------------------------------------------------------------------------------
#                               The training step
# --------------------------------------------------------------------------------

def train_step(train_model, params, opt, scaler, x1, y, lr, tcfg, device, dtype):
    """One optimizer step on a batch (x1 (B, C, h, w) normalised latents, y (B,) labels). No host sync.
    Returns (losses (3,) = loss, mse, cos as float32 tensors, gradient norm, finite flag)."""
    for group in opt.param_groups:
        group["lr"] = lr
    train_model.train()
    with autocast(device, dtype):
        losses = training_losses(train_model, x1, y, bounded_cosine=dtype == torch.float16)
    loss = (losses["mse"] + tcfg["cos_loss_weight"] * losses["cos"]).mean()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg["grad_clip"])
    scaler.step(opt)   # skipped when gradients are not finite
    scaler.update(None if dtype == torch.float16 else 1.0)   # only fp16 moves its scale (a skip would halve it)
    finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
    values = torch.stack([loss.detach(), losses["mse"].mean().detach(), losses["cos"].mean().detach()]).float()
    return values, grad_norm, finite


# --------------------------------------------------------------------------------
#                                Checkpoints
# --------------------------------------------------------------------------------

def code_version():
    try:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _rng_state():
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_rng(world):
    """Every rank's RNG state (collective under DDP)."""
    if world == 1:
        return [_rng_state()]
    import torch.distributed as dist
    rngs = [None] * world
    dist.all_gather_object(rngs, _rng_state())
    return rngs


# --------------------------------------------------------------------------------
#                                 Monitoring
# --------------------------------------------------------------------------------

@torch.no_grad()
def validation_loss(model, latents, labels, seed, device, dtype):
    """Mean loss on held-out latents at fixed t values with fixed noise: comparable across the run."""
    out = {}
    g = torch.Generator().manual_seed(seed + 17)
    x0 = torch.randn(latents.shape, generator=g).to(device)
    for t in VALIDATION_T:
        with autocast(device, dtype):
            losses = training_losses(model, latents, labels, x0=x0, t=torch.full((len(latents),), t, device=device))
        out[f"val_loss_t{t}"] = float(losses["loss"].mean())
    out["val_loss"] = sum(out.values()) / len(VALIDATION_T)
    return out


def new_monitor():
    """The held-out monitor's state, saved in every checkpoint so that a resumed run keeps its best-so-far."""
    return dict(best_score=None, best_step=None, checks_since_best=0, turned_at=None)


def update_monitor(monitor, step, score):
    """Record a held-out score (lower is better). Returns (improved, turned): turned is True the first time
    the score gets worse than the best so far."""
    improved = monitor["best_score"] is None or score < monitor["best_score"]
    turned = False
    if improved:
        monitor.update(best_score=score, best_step=step, checks_since_best=0)
    else:
        monitor["checks_since_best"] += 1
        turned = monitor["turned_at"] is None
        if turned:
            monitor["turned_at"] = step
    return improved, turned


def judging_sampling(cfg, num_classes, **changes):
    """Sampling settings for stage 2's own samples (grids, held-out checks, the choices at the end): the
    config's, from pure noise (stage 2 judges the model itself; start_t is stage 3's), unguided for one class."""
    return dict(cfg["sample"], cfg_scale=cfg["sample"]["cfg_scale"] if num_classes > 1 else 1.0, start_t=0.0,
                **changes)


def save_sample_grid(path, ema, meta, cfg, device, dtype, tokenizer, step=None):
    """One row per class, fixed noise across the run, EMA weights; decoded when a tokenizer is given. Each row
    is labelled with its class (all rows are generated)."""
    per_class = cfg["log"]["samples_per_class"]
    classes = meta["classes"]
    labels = [c for c in range(len(classes)) for _ in range(per_class)]
    seeds = [image_seed(cfg["seed"], c, k) for c in range(len(classes)) for k in range(per_class)]
    # stage 2 judges the model itself: its samples start from pure noise (start_t is stage 3's)
    sampling = judging_sampling(cfg, len(classes))
    z = sample_latents(ema, labels, seeds, meta["latent_shape"], sampling, device, dtype)
    if tokenizer is not None:
        images = decode_latents(tokenizer, denormalise(z, meta["stats"]), device, dtype)
    else:
        images = latent_maps(z)
    rows = [list(images[c * per_class:(c + 1) * per_class]) for c in range(len(classes))]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    at = "" if step is None else f" at step {step}"
    shown = "decoded" if tokenizer is not None else "latent channel 0: no --vavae_path"
    labelled_grid(rows, path, classes, gray=meta["color_mode"] == "gray", row_kinds=["generated"] * len(rows),
                  title=f"stage 2 samples{at} (EMA weights, {shown})")


def plot_log(run_dir, best_step=None):
    """loss.png: train loss, held-out loss at fixed t and the held-out score, the chosen checkpoint marked."""
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]

    def series(key):
        return [r["step"] for r in rows if key in r], [r[key] for r in rows if key in r]

    loss_plot(os.path.join(run_dir, "loss.png"), series("loss"), series("val_loss"), series("heldout_score"), best_step)


# --------------------------------------------------------------------------------
#                              Run dir and resume
# --------------------------------------------------------------------------------

class StopFlag:
    """Set by SIGINT/SIGTERM so the loop can write a checkpoint before it exits."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def prepare_run_dir(run_dir, cfg, resume):
    """Check the run dir against `cfg`: returns the checkpoint to resume from, or None."""
    cfg_path = os.path.join(run_dir, "config.yaml")
    existing = latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    if resume not in ("auto", "none"):
        if not os.path.isfile(resume):
            raise UsageError(f"--resume {resume}: no such checkpoint file")
        return resume
    if os.path.isfile(cfg_path):
        from omegaconf import OmegaConf
        old = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
        diff = config_differences(old, cfg, added=ADDED_KEYS)
        if diff:
            raise UsageError(f"--output_dir {run_dir}: holds a run with a different config ({', '.join(diff[:6])}); "
                             f"choose a new --output_dir (with --resume none) or restore those settings")
        if resume == "none" and existing:
            raise UsageError(f"--output_dir {run_dir}: already holds checkpoints and --resume none was given; "
                             f"choose a new --output_dir")
    return existing if resume == "auto" else None


def load_resume(path, cfg, classes, latent_shape, fingerprint, settings, trust):
    """Read the checkpoint to resume from and check it belongs to this config and these latents."""
    ckpt = read_checkpoint(path, trust=trust, what="cannot resume:", need_training_state=True)
    diff = config_differences(ckpt["config"], cfg, added=ADDED_KEYS)
    if diff:
        raise UsageError(f"cannot resume from {path}: it was trained with another config ({', '.join(diff[:6])}); "
                         f"use a new --output_dir or the same settings")
    if list(ckpt["latent_shape"]) != latent_shape or ckpt["classes"] != classes:
        raise UsageError(f"--latent_dir {settings.latent_dir}: latents {latent_shape} of classes {classes} do not match "
                         f"the run being resumed ({ckpt['latent_shape']}, {ckpt['classes']}): another tokenizer "
                         f"or data set; use a new --output_dir")
    if ckpt["latents_fingerprint"] not in (None, fingerprint):
        raise UsageError(f"--latent_dir {settings.latent_dir}: holds other latents than the run at step {ckpt['step']} "
                         f"was trained on (fingerprint {fingerprint} vs {ckpt['latents_fingerprint']}; stage 1 was "
                         f"rerun on changed data); use a new --output_dir")
    return ckpt


def _truncate_log(path, step):
    """Drop log rows of steps an interrupted run did past its last checkpoint (all of them on a fresh start)."""
    if os.path.isfile(path):
        with open(path) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        write_text_atomic(path, "".join(rows))


def _stop_reason(stop, budget, t_start, world, device):
    """Signal or time budget; agreed on by every rank under DDP."""
    reason = 0
    if stop.signal:
        reason = 1
    elif budget and time.time() - t_start > float(budget):
        reason = 2
    if world > 1:
        import torch.distributed as dist
        flag = torch.tensor([reason], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        reason = int(flag)
    return {0: None, 1: f"signal {stop.signal or 'on another rank'}", 2: "time budget reached"}[reason]


# --------------------------------------------------------------------------------
#                                 Training
# --------------------------------------------------------------------------------

def train(cfg, settings):
    """The whole of stage 2. `cfg`: validated config dict; `settings`: RunSettings."""
    rank, world, local_rank = init_distributed()
    created = not os.path.exists(settings.output_dir)
    try:
        if rank == 0:
            with run_lock(settings.output_dir):
                # temp files of checkpoint writes that a killed run left behind are never read; remove them
                for stale in glob.glob(os.path.join(settings.output_dir, "checkpoints", ".tmp_*")):
                    if is_temp_file(stale):
                        os.unlink(stale)
                return _train(cfg, settings, rank, world, local_rank)
        return _train(cfg, settings, rank, world, local_rank)
    except UsageError:
        if rank == 0 and created and os.path.isdir(settings.output_dir) and os.listdir(settings.output_dir) == [".lock"]:
            # refused before anything was written: leave no run dir behind
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(settings.output_dir, ".lock"))
                os.rmdir(settings.output_dir)
        raise
    finally:
        cleanup_distributed(world)


@dataclass
class Run:
    """Everything the loop works with, set up (or restored) by `setup_run`."""
    cfg: dict
    settings: RunSettings
    rank: int
    world: int
    device: torch.device
    dtype: Optional[torch.dtype]
    latents: torch.Tensor                  # (N, C, h, w) normalised training latents on the device
    latents_flip: Optional[torch.Tensor]
    labels: torch.Tensor                   # (N,)
    heldout: Optional[HeldoutSet]
    meta: dict                             # checkpoint keys that describe the data (see pipeline/checkpoint.py)
    model: nn.Module
    train_model: nn.Module                 # the model as trained: compiled and/or DDP-wrapped
    ema: nn.Module
    params: list
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    max_steps: int
    check_every: int
    tokenizer: object = None
    step: int = 0
    monitor: dict = None
    sampling: Optional[dict] = None

    @property
    def log_path(self):
        return os.path.join(self.settings.output_dir, "log.jsonl")

    def log(self, text):
        if self.rank == 0:
            tqdm.write(text)   # print, above the progress bar when one is drawn

    def state(self, rng):
        """This run's checkpoint (pipeline/checkpoint.py CHECKPOINT_KEYS)."""
        return dict(self.meta, format_version=FORMAT_VERSION, model=self.model.state_dict(), ema=self.ema.state_dict(),
                    opt=self.opt.state_dict(), scaler=self.scaler.state_dict(), step=self.step, rng=rng,
                    config=self.cfg, monitor=dict(self.monitor), sampling=self.sampling, code_version=code_version())

    def save(self, reason):
        snapshot = self.state(_gather_rng(self.world))  # collective under DDP: every rank takes part
        if self.rank == 0:
            path = save_checkpoint(self.settings.output_dir, snapshot, self.cfg["log"]["keep_last"])
            self.log(f"step {self.step}: checkpoint {path} ({reason})")


def setup_run(cfg, settings, rank, world, local_rank):
    """Load and check the data, build model/EMA/optimizer/scaler, restore a run being resumed. Everything is
    checked before the first write to the run dir."""
    tcfg = cfg["train"]
    log = print if rank == 0 else (lambda *a, **k: None)
    device = pick_device(settings.device, local_rank)
    dtype = pick_precision(tcfg["precision"], device)
    if tcfg["batch_size"] % world:
        raise UsageError(f"--batch_size {tcfg['batch_size']} is not divisible by the {world} processes")

    # ---- data and the run being resumed ------------------------------------------------------------------
    manifest = read_dataset(settings.latent_dir)
    data = load_latents(settings.latent_dir)
    classes = [c["name"] for c in manifest["classes"]]
    latent_shape = list(data["latents"].shape[1:])
    train_mask, val_mask = data["split"] == 0, data["split"] == 1
    counts = check_classes(data["labels"][train_mask], classes, settings.latent_dir)
    fingerprint = latents_fingerprint(data)
    torch.manual_seed(cfg["seed"] + rank)
    model = build_model(cfg["model"], latent_shape, len(classes)).to(device)
    resume_path = prepare_run_dir(settings.output_dir, cfg, settings.resume)
    ckpt = init_stats = None
    if resume_path:
        ckpt = load_resume(resume_path, cfg, classes, latent_shape, fingerprint, settings, settings.trust_checkpoint)
        init_stats = ckpt["init_stats"]
    elif settings.init_from:
        init_stats = init_from_checkpoint(model, settings.init_from, classes, settings.trust_checkpoint, log)
    if ckpt is not None:
        stats, stats_source = {"mean": ckpt["stats"]["mean"], "std": ckpt["stats"]["std"]}, ckpt["stats"]["source"]
    else:
        stats, stats_source = choose_stats(settings.latent_dir, cfg["data"]["stats"], latent_shape[0], init_stats)
        if cfg["data"]["std_pooling"] == "pooled" and init_stats is None:   # fine-tuning keeps the model's stats
            stats, stats_source = pooled_std(stats), f"{stats_source}, std pooled over channels"
    mean, std = stats["mean"].to(device), stats["std"].to(device)
    latents = (data["latents"][train_mask].to(device) - mean) / std
    heldout = None
    if val_mask.any():
        heldout = HeldoutSet(latents, data["labels"][train_mask], (data["latents"][val_mask].to(device) - mean) / std,
                             data["labels"][val_mask], len(classes), scale=stats["std"].flatten())
    meta = dict(classes=classes, latent_shape=latent_shape, color_mode=manifest.get("color_mode", "rgb"),
                stats={"mean": stats["mean"].cpu(), "std": stats["std"].cpu(), "source": stats_source},
                image_size=manifest.get("image_size"), tokenizer=manifest.get("tokenizer", {}),
                original_sizes={c["name"]: c.get("common_original_size") for c in manifest["classes"]},
                latent_dir=os.path.abspath(settings.latent_dir),
                data={k: manifest.get(k) for k in ("colormap", "value_range", "trim")},
                latents_fingerprint=fingerprint, init_stats=init_stats, model_name=cfg["model"]["name"],
                model_config=model.config)

    # ---- model, EMA, optimizer, scaler (restored when resuming) --------------------------------------------
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    model.use_checkpoint = bool(tcfg["grad_checkpointing"])
    params = [p for p in model.parameters() if p.requires_grad]
    max_steps = resolve_max_steps(tcfg, len(latents))
    run = Run(cfg=cfg, settings=settings, rank=rank, world=world, device=device, dtype=dtype, latents=latents,
              latents_flip=((data["latents_flip"][train_mask].to(device) - mean) / std) if "latents_flip" in data
              else None, labels=data["labels"][train_mask].to(device), heldout=heldout, meta=meta, model=model,
              train_model=model, ema=ema, params=params, opt=make_optimizer(params, tcfg),
              scaler=make_grad_scaler(device, dtype), max_steps=max_steps,
              check_every=cfg["monitor"]["every"] or max(1, max_steps // 10), monitor=new_monitor())
    if ckpt is not None:
        restore(run, ckpt, resume_path)
    if tcfg["compile"]:
        run.train_model = torch.compile(model)
    if world > 1:
        run.train_model = nn.parallel.DistributedDataParallel(
            run.train_model, device_ids=[local_rank] if device.type == "cuda" else None)

    # ---- the run dir (rank 0) ----------------------------------------------------------------------------
    if rank == 0:
        os.makedirs(settings.output_dir, exist_ok=True)
        _truncate_log(run.log_path, run.step)
        save_config(cfg, os.path.join(settings.output_dir, "config.yaml"))
        if settings.vavae_path:
            from models.vavae import load_vavae
            run.tokenizer = load_vavae(settings.vavae_path, device=device, latent_channels=latent_shape[0],
                                       trust=settings.trust_checkpoint)
    log(f"training {cfg['model']['name']} ({sum(p.numel() for p in params) / 1e6:.1f} M params) on {len(latents)} "
        f"latents {latent_shape} of {len(classes)} classes (per class {counts}), stats: {stats_source}, device "
        f"{device}, precision {dtype or 'fp32'}, {world} process(es), batch {tcfg['batch_size']}, {max_steps} steps "
        f"({max_steps * tcfg['batch_size'] / len(latents):.0f} epochs)"
        + (f", held-out check every {run.check_every} steps (patience {cfg['monitor']['patience']})" if heldout else
           ", no held-out images: the last checkpoint is used"))
    return run


def restore(run, ckpt, path):
    """Weights, optimizer, scaler, step, monitor, sampling and RNG of the run being resumed."""
    try:
        run.model.load_state_dict(dit_state_dict_from_checkpoint(ckpt, prefer_ema=False))
        run.ema.load_state_dict(dit_state_dict_from_checkpoint(ckpt, prefer_ema=True))
        run.opt.load_state_dict(ckpt["opt"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UsageError(f"cannot resume from {path}: its weights do not fit {run.cfg['model']['name']} "
                         f"({str(e).splitlines()[0][:120]}); use a new --output_dir") from None
    run.scaler.load_state_dict(ckpt["scaler"])
    run.step, run.monitor, run.sampling = int(ckpt["step"]), ckpt["monitor"] or new_monitor(), ckpt["sampling"]
    if len(ckpt["rng"] or []) == run.world:
        _set_rng_state(ckpt["rng"][run.rank])
    else:
        run.log(f"resume with {run.world} processes instead of {len(ckpt['rng'] or [])}: random streams are re-seeded")
        torch.manual_seed(run.cfg["seed"] * 7919 + run.step * 31 + run.rank)
    run.log(f"resumed from {path} at step {run.step}")


def held_out_check(run):
    """Score the EMA on held-out data (rank 0); best.pt follows the best score. Returns a stop reason or None."""
    cfg, mcfg = run.cfg, run.cfg["monitor"]
    row = dict(step=run.step, **validation_loss(run.ema, run.heldout.latents.to(run.device),
                                                run.heldout.labels.to(run.device), cfg["seed"], run.device, run.dtype))
    sampling = judging_sampling(cfg, run.heldout.num_classes, num_steps=mcfg["num_steps"])
    result = run.heldout.score_model(run.ema, sampling, mcfg["samples_per_class"], cfg["seed"], run.meta["latent_shape"],
                                     run.device, run.dtype)
    row.update(heldout_score=result["score"], heldout_fd=result["fd"], heldout_tstr=result["tstr"])
    with open(run.log_path, "a") as f:
        f.write(json.dumps(row) + "\n")
    improved, turned = update_monitor(run.monitor, run.step, result["score"])
    run.log(f"step {run.step}: held-out score {result['score']:.4g} (FD {result['fd']:.4g}, tstr {result['tstr']:.2f}), "
            f"loss at fixed t {row['val_loss']:.4f}" + (" - best so far, saved as checkpoints/best.pt" if improved else ""))
    if improved:
        save_best(run.settings.output_dir, run.state(rng=[]))
    best = run.monitor["best_step"]
    if turned:
        # say by how much: a first worse score may be noise, overfitting shows as a rise that goes on
        rise = result["score"] / run.monitor["best_score"] - 1 if run.monitor["best_score"] else 0.0
        run.log(f"step {run.step}: the held-out score turned (worse than step {best} by {rise:.1%}): the first sign "
                f"of overfitting if it keeps rising; best.pt keeps step {best}")
    if mcfg["patience"] and run.monitor["checks_since_best"] >= mcfg["patience"]:
        return f"early stop: no held-out improvement in {mcfg['patience']} checks (best at step {best})"
    return None


def log_interval(run, sums, steps, bad_total, grad_norm, lr, t_log, t_start):
    """Average the summed losses of the last `steps` steps over every rank and write one log row (rank 0).
    Returns the row."""
    if run.world > 1:
        import torch.distributed as dist
        dist.all_reduce(sums)
        sums /= run.world
    good = max(1, steps - int(bad_total))
    batch = run.cfg["train"]["batch_size"]
    row = dict(step=run.step, loss=float(sums[0]) / good, mse=float(sums[1]) / good, cos=float(sums[2]) / good,
               grad_norm=float(grad_norm), lr=lr, images_per_s=steps * batch / (time.time() - t_log),
               skipped_steps=int(bad_total), time_s=round(time.time() - t_start, 1),
               peak_mem_gb=torch.cuda.max_memory_allocated(run.device) / 2 ** 30 if run.device.type == "cuda" else None)
    if run.rank == 0:
        with open(run.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        run.log(f"step {run.step}: loss {row['loss']:.4f} (mse {row['mse']:.4f}, cos {row['cos']:.4f}), "
                f"grad {row['grad_norm']:.2f}, {row['images_per_s']:.0f} img/s"
                + (f", {row['skipped_steps']} non-finite steps skipped" if row["skipped_steps"] else ""))
    return row


def progress_enabled(rank=0):
    """The progress bar is for a person watching a terminal: rank 0 only, and neither under CI=true nor with
    stdout or stderr redirected (a log file, a notebook): there the log lines alone are printed."""
    if rank != 0 or os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        return False
    return all(callable(getattr(f, "isatty", None)) and f.isatty() for f in (sys.stdout, sys.stderr))


def eta_seconds(steps_done, elapsed_s, steps_left, budget_left_s=None):
    """(seconds, what) until training ends: `steps_left` at the rate so far ('max_steps'), or the rest of the time
    budget ('time budget'), whichever comes first; (None, None) while neither is known."""
    ends = []
    if steps_done > 0 and elapsed_s > 0:
        ends.append((steps_left * elapsed_s / steps_done, "max_steps"))
    if budget_left_s is not None:
        ends.append((max(0.0, budget_left_s), "time budget"))
    return min(ends) if ends else (None, None)


class TrainProgress:
    """tqdm bar over the training steps: step/max_steps, images/s, the last logged loss and the ETA to max_steps
    or the time budget. Disabled as progress_enabled() says; it reads no tensors (no host sync)."""

    def __init__(self, run, t_start, budget):
        self.t_start, self.budget, self.first = t_start, budget, run.step
        self.batch, self.loss = run.cfg["train"]["batch_size"], ""
        self.bar = tqdm(total=run.max_steps, initial=run.step, desc="stage 2", unit="step", dynamic_ncols=True,
                        disable=not progress_enabled(run.rank),
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def update(self, step):
        if self.bar.disable:
            return
        elapsed = time.time() - self.t_start
        eta, until = eta_seconds(step - self.first, elapsed, self.bar.total - step,
                                 float(self.budget) - elapsed if self.budget else None)
        text = f"{(step - self.first) * self.batch / max(elapsed, 1e-9):.0f} img/s" + self.loss
        if eta is not None:
            text += f", ETA {tqdm.format_interval(eta)} ({until})"
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(step - self.bar.n)

    def logged(self, row):
        self.loss = f", loss {row['loss']:.4f}"


def _train(cfg, settings, rank, world, local_rank):
    run = setup_run(cfg, settings, rank, world, local_rank)
    tcfg, lcfg, seed = cfg["train"], cfg["log"], cfg["seed"]
    local_batch, device = tcfg["batch_size"] // world, run.device
    t_start = t_log = time.time()
    sum_loss = torch.zeros(3, device=device)   # loss, mse, cos summed over the log interval (no host sync)
    bad_steps = torch.zeros((), device=device)  # consecutive non-finite steps
    bad_total = torch.zeros((), device=device)
    steps_in_interval, stop_reason = 0, None
    with StopFlag() as stop, TrainProgress(run, t_start, tcfg["time_budget"]) as progress:
        while run.step < run.max_steps:
            step = run.step
            idx = batch_indices(seed, step, rank, len(run.latents), local_batch).to(device, non_blocking=True)
            x1, y = run.latents[idx], run.labels[idx]
            if run.latents_flip is not None:
                use_flip = torch.rand(local_batch, device=device) < 0.5
                x1 = torch.where(use_flip.view(-1, 1, 1, 1), run.latents_flip[idx], x1)
            x1 = time_shift(x1, cfg["data"]["time_shift"], seed, step, rank)
            lr = lr_at(step, tcfg)
            values, grad_norm, finite = train_step(run.train_model, run.params, run.opt, run.scaler, x1, y, lr, tcfg,
                                                   device, run.dtype)
            ema_update(run.ema, run.model, ema_decay_at(step, tcfg["ema_decay"]))
            bad_steps = torch.where(finite, torch.zeros_like(bad_steps), bad_steps + 1)
            bad_total += (~finite).float()
            sum_loss += torch.where(finite, values, 0.0)
            run.step = step = step + 1
            steps_in_interval += 1
            progress.update(step)

            # logging, stopping, held-out checks, checkpoints and samples (the only host syncs)
            at_log = step % lcfg["log_every"] == 0 or step == run.max_steps
            if at_log or world == 1:
                stop_reason = _stop_reason(stop, tcfg["time_budget"], t_start, world, device)
            if at_log:
                if stop_on_non_finite(int(bad_steps), tcfg["max_bad_steps"], run.scaler.get_scale()):
                    stop_reason = f"{int(bad_steps)} non-finite steps in a row"
                progress.logged(log_interval(run, sum_loss.clone(), steps_in_interval, bad_total, grad_norm, lr, t_log,
                                             t_start))
                sum_loss.zero_()
                bad_total.zero_()
                steps_in_interval, t_log = 0, time.time()
            if stop_reason:
                break
            if run.heldout is not None and (step % run.check_every == 0 or step == run.max_steps):
                stop_reason = _agree(held_out_check(run) if rank == 0 else None, world, device)
                if stop_reason:
                    break
            if step % lcfg["sample_every"] == 0 and rank == 0:
                save_sample_grid(os.path.join(settings.output_dir, "samples", f"step_{step:07d}.png"), run.ema,
                                 run.meta, cfg, device, run.dtype, run.tokenizer, step=step)
            if step % lcfg["ckpt_every"] == 0 and step < run.max_steps:
                run.save(f"every {lcfg['ckpt_every']} steps")
        diverged = bool(stop_reason and "non-finite" in stop_reason)
        if rank == 0 and not stop.signal and not diverged:
            choose_sampling(run)
        run.save(stop_reason or "end of training")
    if rank == 0 and os.path.isfile(run.log_path):
        plot_log(settings.output_dir, run.monitor["best_step"])
    if diverged:
        raise UsageError(f"training stopped at step {run.step}: {stop_reason} (checkpoint saved); lower --lr or check "
                         f"the latents")
    outputs = ["config.yaml", "checkpoints/", "log.jsonl", "loss.png"]
    if os.path.isdir(os.path.join(settings.output_dir, "samples")):
        outputs.append("samples/")
    return dict(step=run.step, stopped=stop_reason, run_dir=settings.output_dir, best_step=run.monitor["best_step"],
                stats_source=run.meta["stats"]["source"], sampling=run.sampling, outputs=outputs)


def _agree(reason, world, device):
    """Rank 0's held-out decision (stop or go on) shared with every rank."""
    if world == 1:
        return reason
    import torch.distributed as dist
    box = [reason]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def choose_sampling(run):
    """Pick guidance scale and interval for best.pt on held-out data (not for one class: nothing to guide
    towards), then the variation start with that guidance; record them in best.pt (once per best step)."""
    best_step, mcfg = run.monitor["best_step"], run.cfg["monitor"]
    sampling = run.sampling or {}
    done = sampling.get("step") == best_step and "start_t" in sampling   # runs from before start_t: choose it now
    if not mcfg["tune_sampling"] or best_step is None or done:
        return
    best = read_checkpoint(os.path.join(run.settings.output_dir, "checkpoints", "best.pt"), what="best.pt")
    model = copy.deepcopy(run.ema)   # not a new LightningDiT: building one would draw from the training RNG
    model.load_state_dict(dit_state_dict_from_checkpoint(best, prefer_ema=True))
    chosen = judging_sampling(run.cfg, len(run.meta["classes"]), num_steps=mcfg["num_steps"])
    draw = dict(per_class=mcfg["samples_per_class"], seed=run.cfg["seed"], latent_shape=run.meta["latent_shape"],
                device=run.device, dtype=run.dtype)
    run.sampling = dict(step=best_step)
    run.log(f"choosing the sampling settings for best.pt (step {best_step}) on held-out data: "
            f"{len(GUIDANCE_GRID) if len(run.meta['classes']) > 1 else 0} guidance settings, then up to "
            f"{len(START_GRID)} variation starts")
    if len(run.meta["classes"]) > 1:
        chosen, tried = tune_sampling(lambda s: run.heldout.score_model(model, s, **draw), chosen)
        run.sampling.update(cfg_scale=chosen["cfg_scale"], cfg_interval_start=chosen["cfg_interval_start"])
        table = ", ".join(f"cfg {s['cfg_scale']:g}/{s['cfg_interval_start']:g}: {r['recognised']:.2f}" for s, r in tried)
        chance = 1.0 / len(run.meta["classes"])
        top = max(r["recognised"] for _, r in tried)
        if top < chance + 0.1:
            run.log(f"warning: even the best guidance makes samples recognised as their class only {top:.2f} of the "
                    f"time (chance: {chance:.2f}): the model has not learnt the classes yet, so the choice below is "
                    f"arbitrary; train longer (train.epochs or train.max_steps)")
        run.log(f"sampling chosen on held-out data for best.pt (step {best_step}): cfg_scale {chosen['cfg_scale']:g}, "
                f"cfg_interval_start {chosen['cfg_interval_start']:g}, the weakest guidance recognised within "
                f"{RECOGNISED_MARGIN:g} of the best (share of samples recognised as their class: {table})")
    start, tried = choose_start(lambda t: run.heldout.memorised_fraction(model, dict(chosen, start_t=t), **draw))
    run.sampling["start_t"] = start
    run.log(f"variation start for stage 3: start_t {start:g}, the largest at which stage 3 redraws at most "
            f"{MAX_REDRAWN:.0%} of its images as copies of a training image (share of copies: "
            + ", ".join(f"{t:g}: {share:.3f}" for t, share in tried) + ")")
    save_best(run.settings.output_dir, dict(best, sampling=run.sampling))
