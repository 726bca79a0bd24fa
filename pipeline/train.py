"""
Stage 2 logic: train a class-conditional LightningDiT with rectified flow on stage 1's latents.
`stage2_train_dit.py` is its command line; the loop in `train()` reads top to bottom.

Recipe (LightningDiT): velocity prediction on the linear path, logit-normal t, MSE + cosine loss,
label dropout 0.1 for classifier-free guidance, AdamW (lr 2e-4, betas 0.9/0.95, no weight decay),
gradient clipping, EMA with a warm-up. Latents live on the device; batches are drawn there.
Resume restores model, EMA, optimizer, scaler, step, data order and RNG: on the CPU, N steps +
resume + N steps equal 2N uninterrupted steps exactly.
"""

import copy
import glob
import json
import os
import signal
import subprocess
import time

import torch
import torch.nn as nn

from models.lightningdit import LightningDiT_models, dit_state_dict_from_checkpoint, load_dit_checkpoint
from models.safe_load import CheckpointError, atomic_torch_save
from models.transport import training_losses
from pipeline.common import (UsageError, autocast, cleanup_distributed, init_distributed, pick_device,
                             pick_precision, run_lock, write_text_atomic)
from pipeline.config import config_differences, save_config
from pipeline.generate import decode_latents, denormalise, image_seed, latent_maps, sample_latents
from pipeline.images import make_grid
from pipeline.latents import load_latents
from pipeline.plot import line_plot
from pipeline.stats import load_stats, read_recommendation

VALIDATION_T = (0.1, 0.3, 0.5, 0.7, 0.9)


# --------------------------------------------------------------------------------
#                                   Data
# --------------------------------------------------------------------------------

def load_dataset_manifest(latent_dir):
    path = os.path.join(latent_dir, "dataset.json")
    if not os.path.isfile(path):
        raise UsageError(f"--latent_dir {latent_dir}: no dataset.json; run stage1_extract_features.py (to its end) first")
    return json.load(open(path))


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
    name = {"micro_doppler": "latents_stats.pt", "imagenet": "latents_stats_imagenet.pt"}.get(requested)
    if name is None:
        raise UsageError(f"--stats {requested}: use auto, micro_doppler or imagenet")
    path = os.path.join(latent_dir, name)
    if not os.path.isfile(path):
        hint = "pass --imagenet_stats to stage 1" if requested == "imagenet" else "rerun stage 1"
        raise UsageError(f"--stats {requested}: {path} is missing; {hint}")
    try:
        return load_stats(path, channels=channels, what=f"{requested} stats"), requested
    except CheckpointError as e:
        raise UsageError(str(e)) from None


def batch_indices(seed, step, rank, num_items, batch_size):
    """Indices of the batch at `step` on `rank`: a function of its arguments only, so resuming at any step
    draws the same data as an uninterrupted run. Uniform with replacement (small data sets)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 131 + rank)
    return torch.randint(num_items, (batch_size,), generator=g)


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


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def ema_decay_at(step, target):
    """Warm-up so short runs still get a useful EMA: decay = min(target, (1 + step) / (10 + step))."""
    return min(target, (1 + step) / (10 + step))


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


def latest_checkpoint(run_dir):
    """Path of the checkpoint named by checkpoints/latest (falling back to the newest complete file)."""
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    pointer = os.path.join(ckpt_dir, "latest")
    if os.path.isfile(pointer):
        path = os.path.join(ckpt_dir, open(pointer).read().strip())
        if os.path.isfile(path):
            return path
    files = sorted(glob.glob(os.path.join(ckpt_dir, "[0-9]" * 7 + ".pt")))
    return files[-1] if files else None


def save_checkpoint(run_dir, state, keep_last):
    """Write checkpoints/NNNNNNN.pt atomically, then the `latest` pointer, then prune old ones."""
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    name = f"{state['step']:07d}.pt"
    atomic_torch_save(state, os.path.join(ckpt_dir, name))
    write_text_atomic(os.path.join(ckpt_dir, "latest"), name + "\n")
    for old in sorted(glob.glob(os.path.join(ckpt_dir, "[0-9]" * 7 + ".pt")))[:-keep_last]:
        os.unlink(old)
    return os.path.join(ckpt_dir, name)


def _rng_state():
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


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


def save_sample_grid(path, ema, meta, cfg, device, dtype, tokenizer):
    """One row per class, fixed noise across the run, EMA weights; decoded when a tokenizer is given."""
    per_class = cfg["log"]["samples_per_class"]
    classes = meta["classes"]
    labels = [c for c in range(len(classes)) for _ in range(per_class)]
    seeds = [image_seed(cfg["seed"], c, k) for c in range(len(classes)) for k in range(per_class)]
    sampling = dict(cfg["sample"], cfg_scale=cfg["sample"]["cfg_scale"] if len(classes) > 1 else 1.0)
    z = sample_latents(ema, labels, seeds, meta["latent_shape"], sampling, device, dtype)
    if tokenizer is not None:
        images = decode_latents(tokenizer, denormalise(z, meta["stats"]), device, dtype)
    else:
        images = latent_maps(z)
    rows = [list(images[c * per_class:(c + 1) * per_class]) for c in range(len(classes))]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    make_grid(rows, gray=meta.get("color_mode") == "gray").save(path)


def plot_log(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl")) if line.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    series = {"train loss": ([r["step"] for r in train], [r["loss"] for r in train])}
    if val:
        series["held-out loss (fixed t)"] = ([r["step"] for r in val], [r["val_loss"] for r in val])
    line_plot(series, os.path.join(run_dir, "loss.png"), title="stage 2 loss (mse + cos)", xlabel="step",
              ylabel="loss", log_y=True)


# --------------------------------------------------------------------------------
#                                 Training
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
        diff = config_differences(old, cfg)
        if diff:
            raise UsageError(f"--output_dir {run_dir}: holds a run with a different config ({', '.join(diff[:6])}); "
                             f"choose a new --output_dir (with --resume none) or restore those settings")
        if resume == "none" and existing:
            raise UsageError(f"--output_dir {run_dir}: already holds checkpoints and --resume none was given; "
                             f"choose a new --output_dir")
    return existing if resume == "auto" else None


def train(cfg, args):
    """The whole of stage 2. `cfg`: resolved config dict; `args`: latent_dir, output_dir, resume,
    init_from, vavae_path, device, trust_checkpoint."""
    rank, world, local_rank = init_distributed()
    try:
        if rank == 0:
            with run_lock(args.output_dir):
                # temp files of checkpoint writes that a killed run left behind are never read; remove them
                for stale in glob.glob(os.path.join(args.output_dir, "checkpoints", ".tmp_*")):
                    os.unlink(stale)
                return _train(cfg, args, rank, world, local_rank)
        return _train(cfg, args, rank, world, local_rank)
    finally:
        cleanup_distributed(world)


def _train(cfg, args, rank, world, local_rank):
    tcfg, lcfg = cfg["train"], cfg["log"]
    log = print if rank == 0 else (lambda *a, **k: None)
    device = pick_device(args.device, local_rank)
    dtype, _ = pick_precision(tcfg["precision"], device)
    if tcfg["batch_size"] % world:
        raise UsageError(f"--batch_size {tcfg['batch_size']} is not divisible by the {world} processes")
    local_batch = tcfg["batch_size"] // world
    resume_path = prepare_run_dir(args.output_dir, cfg, args.resume)

    # ---- data: every train latent on the device, normalised once --------------------------
    manifest = load_dataset_manifest(args.latent_dir)
    data = load_latents(args.latent_dir)
    classes = [c["name"] for c in manifest["classes"]]
    latent_shape = list(data["latents"].shape[1:])
    train_mask, val_mask = data["split"] == 0, data["split"] == 1

    # ---- model, EMA, optimizer -------------------------------------------------------------
    torch.manual_seed(cfg["seed"] + rank)
    model = build_model(cfg["model"], latent_shape, len(classes)).to(device)
    init_stats = None
    if args.init_from and resume_path is None:
        init_stats = init_from_checkpoint(model, args.init_from, classes, args.trust_checkpoint, log)
    ckpt = None
    if resume_path:
        try:
            ckpt = load_dit_checkpoint(resume_path, trust=args.trust_checkpoint)
        except CheckpointError as e:
            raise UsageError(f"cannot resume: {e}") from None
        missing = [k for k in ("model", "ema", "opt", "scaler", "step", "stats", "classes", "latent_shape") if k not in ckpt]
        if missing:
            raise UsageError(f"cannot resume from {resume_path}: not a stage 2 checkpoint (no {', '.join(missing)}); "
                             f"to start from other weights use --init_from")
        if list(ckpt["latent_shape"]) != latent_shape or ckpt["classes"] != classes:
            raise UsageError(f"--latent_dir {args.latent_dir}: latents {latent_shape} of classes {classes} do not match "
                             f"the run being resumed ({ckpt['latent_shape']}, {ckpt['classes']}): another tokenizer "
                             f"or data set; use a new --output_dir")
        init_stats = ckpt.get("init_stats")
    if ckpt is not None:
        stats, stats_source = {"mean": ckpt["stats"]["mean"], "std": ckpt["stats"]["std"]}, ckpt["stats"]["source"]
    else:
        stats, stats_source = choose_stats(args.latent_dir, cfg["data"]["stats"], latent_shape[0], init_stats)
    mean, std = stats["mean"].to(device), stats["std"].to(device)
    latents = ((data["latents"][train_mask].to(device) - mean) / std)
    latents_flip = ((data["latents_flip"][train_mask].to(device) - mean) / std) if "latents_flip" in data else None
    labels = data["labels"][train_mask].to(device)
    val_latents = ((data["latents"][val_mask][:256].to(device) - mean) / std)
    val_labels = data["labels"][val_mask][:256].to(device)
    if len(latents) == 0:
        raise UsageError(f"--latent_dir {args.latent_dir}: no training latents (is every image held out?)")

    ema = copy.deepcopy(model).requires_grad_(False).eval()
    model.use_checkpoint = bool(tcfg["grad_checkpointing"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, tcfg)
    # The grad scaler also skips steps whose gradients are not finite, in every precision. With fp32/bf16 its
    # scale stays a power of two, so scaled and unscaled gradients are bit-identical.
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 16 if dtype == torch.float16 else 1.0,
                                  growth_interval=2000 if dtype == torch.float16 else 2 ** 30)
    step = 0
    if ckpt is not None:
        model.load_state_dict(dit_state_dict_from_checkpoint(ckpt, prefer_ema=False))
        ema.load_state_dict(dit_state_dict_from_checkpoint(ckpt, prefer_ema=True))
        opt.load_state_dict(ckpt["opt"])
        scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        rng = ckpt.get("rng") or []
        if len(rng) == world:
            _set_rng_state(rng[rank])
        else:
            log(f"resume with {world} processes instead of {len(rng)}: random streams are re-seeded")
            torch.manual_seed(cfg["seed"] * 7919 + step * 31 + rank)
        log(f"resumed from {resume_path} at step {step}")
    if rank == 0:
        _truncate_log(os.path.join(args.output_dir, "log.jsonl"), step)
    train_model = torch.compile(model) if tcfg["compile"] else model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=[local_rank] if device.type == "cuda" else None)

    meta = dict(classes=classes, latent_shape=latent_shape, color_mode=manifest.get("color_mode", "rgb"),
                stats={"mean": stats["mean"].cpu(), "std": stats["std"].cpu(), "source": stats_source},
                image_size=manifest.get("image_size"), tokenizer=manifest.get("tokenizer", {}),
                original_sizes={c["name"]: c.get("common_original_size") for c in manifest["classes"]},
                latent_dir=os.path.abspath(args.latent_dir))
    tokenizer = None
    if rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        save_config(cfg, os.path.join(args.output_dir, "config.yaml"))
        if args.vavae_path:
            from models.vavae import load_vavae
            tokenizer = load_vavae(args.vavae_path, device=device, latent_channels=latent_shape[0],
                                   trust=args.trust_checkpoint)
    log(f"training {cfg['model']['name']} ({sum(p.numel() for p in params) / 1e6:.1f} M params) on {len(latents)} "
        f"latents {latent_shape} of {len(classes)} classes, stats: {stats_source}, device {device}, "
        f"precision {dtype or 'fp32'}, {world} process(es), batch {tcfg['batch_size']}")

    def checkpoint_state():
        rngs = [_rng_state()]
        if world > 1:
            import torch.distributed as dist
            rngs = [None] * world
            dist.all_gather_object(rngs, _rng_state())
        return dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), scaler=scaler.state_dict(),
                    step=step, rng=rngs, config=cfg, stats=meta["stats"], classes=classes, latent_shape=latent_shape,
                    color_mode=meta["color_mode"], image_size=meta["image_size"], tokenizer=meta["tokenizer"],
                    original_sizes=meta["original_sizes"], latent_dir=meta["latent_dir"], init_stats=init_stats,
                    code_version=code_version(), model_config=model.config, model_name=cfg["model"]["name"])

    def save(reason):
        state = checkpoint_state()  # collective under DDP: every rank takes part
        if rank == 0:
            path = save_checkpoint(args.output_dir, state, lcfg["keep_last"])
            log(f"step {step}: checkpoint {path} ({reason})")

    # ---- the loop ----------------------------------------------------------------------------
    max_steps, budget = int(tcfg["max_steps"]), tcfg["time_budget"]
    t_start = t_log = time.time()
    sum_loss = torch.zeros(3, device=device)   # loss, mse, cos summed over the log interval (no host sync)
    bad_steps = torch.zeros((), device=device)  # consecutive non-finite steps
    bad_total = torch.zeros((), device=device)
    steps_in_interval, stop_reason = 0, None
    log_path = os.path.join(args.output_dir, "log.jsonl")
    with StopFlag() as stop:
        while step < max_steps:
            # data
            idx = batch_indices(cfg["seed"], step, rank, len(latents), local_batch).to(device, non_blocking=True)
            x1, y = latents[idx], labels[idx]
            if latents_flip is not None:
                use_flip = torch.rand(local_batch, device=device) < 0.5
                x1 = torch.where(use_flip.view(-1, 1, 1, 1), latents_flip[idx], x1)
            # forward / backward
            lr = tcfg["lr"] * min(1.0, (step + 1) / tcfg["warmup_steps"]) if tcfg["warmup_steps"] else tcfg["lr"]
            for group in opt.param_groups:
                group["lr"] = lr
            train_model.train()
            with autocast(device, dtype):
                losses = training_losses(train_model, x1, y)
            loss = (losses["mse"] + tcfg["cos_loss_weight"] * losses["cos"]).mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg["grad_clip"])
            scaler.step(opt)   # skipped when gradients are not finite
            scaler.update()
            ema_update(ema, model, ema_decay_at(step, tcfg["ema_decay"]))
            finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
            bad_steps = torch.where(finite, torch.zeros_like(bad_steps), bad_steps + 1)
            bad_total += (~finite).float()
            sum_loss += torch.where(finite, torch.stack([loss.detach(), losses["mse"].mean().detach(),
                                                         losses["cos"].mean().detach()]).float(), 0.0)
            step += 1
            steps_in_interval += 1

            # logging, stopping, checkpoints and samples (the only host syncs)
            at_log = step % lcfg["log_every"] == 0 or step == max_steps
            if at_log or world == 1:
                stop_reason = _stop_reason(stop, budget, t_start, world, device)
            if at_log:
                if int(bad_steps) >= tcfg["max_bad_steps"]:
                    stop_reason = f"{int(bad_steps)} non-finite steps in a row"
                sums = sum_loss.clone()
                if world > 1:
                    import torch.distributed as dist
                    dist.all_reduce(sums)
                    sums /= world
                good = max(1, steps_in_interval - int(bad_total))
                elapsed = time.time() - t_log
                row = dict(step=step, loss=float(sums[0]) / good, mse=float(sums[1]) / good, cos=float(sums[2]) / good,
                           grad_norm=float(grad_norm), lr=lr, images_per_s=steps_in_interval * tcfg["batch_size"] / elapsed,
                           skipped_steps=int(bad_total), time_s=round(time.time() - t_start, 1),
                           peak_mem_gb=torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None)
                if rank == 0:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    log(f"step {step}: loss {row['loss']:.4f} (mse {row['mse']:.4f}, cos {row['cos']:.4f}), "
                        f"grad {row['grad_norm']:.2f}, {row['images_per_s']:.0f} img/s"
                        + (f", {row['skipped_steps']} non-finite steps skipped" if row["skipped_steps"] else ""))
                sum_loss.zero_()
                bad_total.zero_()
                steps_in_interval, t_log = 0, time.time()
            if stop_reason:
                break
            if step % lcfg["sample_every"] == 0 and rank == 0:
                _monitor(args.output_dir, step, ema, val_latents, val_labels, meta, cfg, device, dtype, tokenizer)
            if step % lcfg["ckpt_every"] == 0 and step < max_steps:
                save(f"every {lcfg['ckpt_every']} steps")
        save(stop_reason or "end of training")
    if rank == 0:
        if os.path.isfile(log_path):
            plot_log(args.output_dir)
    if stop_reason and "non-finite" in stop_reason:
        raise UsageError(f"training stopped at step {step}: {stop_reason} (checkpoint saved); lower --lr or check the "
                         f"latents")
    return dict(step=step, stopped=stop_reason, run_dir=args.output_dir, stats_source=stats_source)


def _truncate_log(path, step):
    """Drop log rows of steps an interrupted run did past its last checkpoint (all of them on a fresh start)."""
    if os.path.isfile(path):
        rows = [line for line in open(path) if line.strip() and json.loads(line)["step"] <= step]
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


def _monitor(run_dir, step, ema, val_latents, val_labels, meta, cfg, device, dtype, tokenizer):
    if len(val_latents):
        row = dict(step=step, **validation_loss(ema, val_latents, val_labels, cfg["seed"], device, dtype))
        with open(os.path.join(run_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    save_sample_grid(os.path.join(run_dir, "samples", f"step_{step:07d}.png"), ema, meta, cfg, device, dtype, tokenizer)
