"""
Stage 2 configuration: a typed schema (dataclasses below), YAML files in configs/ (`defaults_from` for
inheritance), then command-line flags and `key=value` overrides on top. Every value is checked for its
type by omegaconf and for its range by `validate` before anything runs; a bad one is a one-line error
naming the key. The resolved config is plain data (a dict) saved with every run.
"""

import os
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.common import UsageError, write_text_atomic

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "kaggle_b1.yaml")


# --------------------------------------------------------------------------------
#                                    Schema
# --------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    name: str = "LightningDiT-B/1"
    use_qknorm: bool = False
    use_swiglu: bool = True
    use_rope: bool = True
    use_rmsnorm: bool = True
    wo_shift: bool = False
    class_dropout_prob: float = 0.1     # label dropout: trains the null class used by guidance


@dataclass
class DataConfig:
    stats: str = "auto"                 # auto | micro_doppler | imagenet (auto follows stats_recommendation.txt)
    std_pooling: str = "per_channel"    # per_channel | pooled: one std for all channels (see stats.pooled_std)
    time_shift: float = 0.0             # augmentation: max circular shift along time, fraction of the width


@dataclass
class TrainConfig:
    max_steps: Optional[int] = None     # None: epochs x train images / batch size, within [min_steps, max_steps_cap]
    epochs: float = 200.0
    min_steps: int = 1000
    max_steps_cap: int = 40000
    batch_size: int = 64                # global, split across GPUs
    lr: float = 2.0e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    cos_loss_weight: float = 1.0        # LightningDiT's cosine-similarity velocity loss
    ema_decay: float = 0.9999
    precision: str = "auto"             # auto | fp32 | fp16 | bf16
    compile: bool = False
    grad_checkpointing: bool = False
    max_bad_steps: int = 10             # non-finite steps in a row that stop the run (fp16: once its scale is 1)
    time_budget: Optional[float] = None  # seconds


@dataclass
class MonitorConfig:
    every: int = 0                      # steps between held-out checks; 0: about 10 per run
    patience: int = 3                   # checks without improvement before training stops; 0: never stop early
                                        # (in 26 benchmark runs no new best came after more than 2)
    samples_per_class: int = 32         # EMA samples per class for the sample-based held-out score
    num_steps: int = 16                 # sampler steps for those samples
    tune_sampling: bool = True          # pick cfg scale and interval on held-out data at the end


@dataclass
class LogConfig:
    log_every: int = 50
    ckpt_every: int = 2000
    sample_every: int = 2000
    keep_last: int = 3
    samples_per_class: int = 8


@dataclass
class SampleConfig:
    num_steps: int = 50
    method: str = "euler"
    cfg_scale: float = 2.0
    cfg_interval_start: float = 0.0
    timestep_shift: float = 0.0
    start_t: float = 0.2                # stage 3: images are variations of training images, the flow started at
                                        # this t (pipeline.generate); stage 2 chooses it when it tunes sampling
                                        # (pipeline.heldout.choose_start); 0: from pure noise


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    seed: int = 0


# (low, high) bounds, inclusive unless noted; choices for strings. Keys not listed only need their type.
POSITIVE = (1, None)
RANGES = {
    "model.class_dropout_prob": (0.0, 0.99), "data.time_shift": (0.0, 0.5),
    "train.max_steps": POSITIVE, "train.epochs": (1e-3, None), "train.min_steps": POSITIVE,
    "train.max_steps_cap": POSITIVE, "train.batch_size": POSITIVE, "train.lr": (1e-12, None),
    "train.beta1": (0.0, 0.99999), "train.beta2": (0.0, 0.99999), "train.weight_decay": (0.0, 10.0),
    "train.warmup_steps": (0, None), "train.grad_clip": (1e-6, None), "train.cos_loss_weight": (0.0, None),
    "train.ema_decay": (0.0, 0.999999), "train.max_bad_steps": POSITIVE, "train.time_budget": (1e-3, None),
    "monitor.every": (0, None), "monitor.patience": (0, None), "monitor.samples_per_class": (2, None),
    "monitor.num_steps": POSITIVE, "log.log_every": POSITIVE, "log.ckpt_every": POSITIVE,
    "log.sample_every": POSITIVE, "log.keep_last": POSITIVE, "log.samples_per_class": POSITIVE,
    "sample.num_steps": POSITIVE, "sample.cfg_scale": (0.0, 100.0), "sample.cfg_interval_start": (0.0, 0.999),
    "sample.start_t": (0.0, 0.95),
    "sample.timestep_shift": (0.0, 100.0), "seed": (0, 2 ** 31 - 1),
}
CHOICES = {"data.stats": ("auto", "micro_doppler", "imagenet"), "data.std_pooling": ("per_channel", "pooled"),
           "train.precision": ("auto", "fp32", "fp16", "bf16"),
           "sample.method": ("euler", "heun")}
# Keys added after runs already existed, with the value that reproduces what those runs did: a run saved
# without the key resumes as if it had this value.
ADDED_KEYS = {"data.std_pooling": "per_channel"}
# Keys that may change when a run is resumed (everything else must match the run being continued).
RESUMABLE_KEYS = ("train.max_steps", "train.max_steps_cap", "train.time_budget", "train.compile", "train.precision",
                  "log.", "monitor.patience", "sample.start_t")


# --------------------------------------------------------------------------------
#                                 Load and check
# --------------------------------------------------------------------------------

def load_config(path=None, overrides=None, dotlist=()):
    """Schema defaults <- YAML (following `defaults_from`) <- overrides {dotted key: value} (None values
    ignored) <- dotlist ["key=value"]. Returns the validated config as a plain dict."""
    path = path or DEFAULT_CONFIG
    cfg = OmegaConf.structured(Config)
    try:
        for layer in _yaml_layers(path):
            cfg = OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as e:
        raise UsageError(f"--config {path}: {_first_line(e)}") from None
    items = [(k, v, f"--{k.split('.')[-1]}") for k, v in (overrides or {}).items() if v is not None]
    for item in dotlist:
        if "=" not in item:
            raise UsageError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
        key, value = item.split("=", 1)
        items.append((key.strip(), OmegaConf.from_dotlist([f"x={value}"]).x, f"override {item!r}"))
    for key, value, where in items:
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" or isinstance(
                OmegaConf.select(cfg, key), type(cfg)):
            raise UsageError(f"{where}: unknown key {key} (known: {', '.join(sorted(flatten(_plain(cfg))))})")
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as e:
            raise UsageError(f"{where}: {_first_line(e)}") from None
    plain = _plain(cfg)
    validate(plain)
    return plain


def _yaml_layers(path):
    """The YAML files from the root of the `defaults_from` chain down to `path`."""
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: no such file (see {CONFIG_DIR})")
    layer = OmegaConf.load(path)
    parent = layer.pop("defaults_from", None)
    parents = _yaml_layers(os.path.join(os.path.dirname(os.path.abspath(path)), parent)) if parent else []
    return parents + [layer]


def validate(cfg):
    """Range and choice checks of a plain config dict; raises UsageError naming the first bad key."""
    flat = flatten(cfg)
    for key, (low, high) in RANGES.items():
        value = flat.get(key)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise UsageError(f"{key}={value}: must be {bounds}")
    for key, options in CHOICES.items():
        if flat.get(key) not in options:
            raise UsageError(f"{key}={flat.get(key)}: use one of {', '.join(options)}")


def _plain(cfg):
    return OmegaConf.to_container(cfg, resolve=True)


def _first_line(e):
    return str(e).strip().splitlines()[0]


# --------------------------------------------------------------------------------
#                                   Helpers
# --------------------------------------------------------------------------------

def flatten(cfg, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old, new, ignore=RESUMABLE_KEYS, added=None):
    """Dotted keys whose values differ between two configs, ignoring keys that may change on resume;
    `added` ({dotted key: value}) stands in for keys `old` was saved without (see ADDED_KEYS)."""
    a, b = {**(added or {}), **flatten(old)}, flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(ignore))


def save_config(cfg, path):
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(cfg)))
