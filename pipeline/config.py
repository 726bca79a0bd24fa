"""
Configuration: YAML files in configs/ loaded with omegaconf, `defaults_from` for inheritance,
command-line flags and `key=value` dotlist overrides on top. The resolved config is plain data
(a dict) saved with every run.
"""

import os

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.common import UsageError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "kaggle_b1.yaml")

# Keys that may change when a run is resumed (everything else must match the run being continued).
RESUMABLE_KEYS = ("train.max_steps", "train.time_budget", "train.compile", "train.precision", "log.", "latent_dir",
                  "vavae_path", "device", "output_dir", "resume")


def load_config(path=None, overrides=None, dotlist=()):
    """YAML (following `defaults_from`) + overrides {dotted key: value} (None values ignored) + dotlist."""
    path = path or DEFAULT_CONFIG
    if not os.path.isfile(path):
        raise UsageError(f"--config {path}: no such file (see {CONFIG_DIR})")
    try:
        cfg = OmegaConf.load(path)
        parent = cfg.pop("defaults_from", None)
        if parent:
            base = load_config(os.path.join(os.path.dirname(os.path.abspath(path)), parent))
            cfg = OmegaConf.merge(base, cfg)
        for key, value in (overrides or {}).items():
            if value is not None:
                OmegaConf.update(cfg, key, value, force_add=True)
        for item in dotlist:
            if "=" not in item:
                raise UsageError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
            key, value = item.split("=", 1)
            if OmegaConf.select(cfg, key) is None and key.split(".")[0] not in cfg:
                raise UsageError(f"override {item!r}: unknown key {key} (see {path})")
            OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"x={value}"]).x, force_add=True)
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise UsageError(f"--config {path}: {str(e).splitlines()[0]}") from None


def flatten(cfg, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old, new, ignore=RESUMABLE_KEYS):
    """Dotted keys whose values differ between two configs, ignoring keys that may change on resume."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(ignore))


def save_config(cfg, path):
    from pipeline.common import write_text_atomic
    write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(cfg)))
