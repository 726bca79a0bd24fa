"""Shared test fixtures: tiny tokenizers in the released checkpoint layouts, hostile pickles."""

import os
from pathlib import Path

import torch

from models.vavae import AutoencoderKL

REFERENCE_DIR = Path(__file__).parent / "reference"  # copies of ../shared/reference (key names and shapes)
# Two classes with known latent means (per channel), used by the stage 2/3 and fault tests.
MEANS = [torch.tensor([-1.5, 1.0, 0.0, 0.5]).view(4, 1, 1), torch.tensor([1.5, -1.0, 0.5, 0.0]).view(4, 1, 1)]
TINY_VAVAE = dict(embed_dim=32, ch_mult=(1, 1, 1, 1, 1), ch=32, num_res_blocks=1, attn_resolutions=(16,))


class Payload:
    """Unpickling this would create `marker` through os.system: proof of code execution if the file appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_tiny_vavae_checkpoint(path, layout="release", model=None, extra=None, seed=0):
    """Save a small f16d32 AutoencoderKL as the release does ({'state_dict': ... + training-only keys}),
    as a bare state dict, or as safetensors. Returns (path, model)."""
    if model is None:
        torch.manual_seed(seed)
        model = AutoencoderKL(**TINY_VAVAE).eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    path = Path(path)
    if layout == "safetensors":
        from safetensors.torch import save_file
        path = path.with_suffix(".safetensors")
        save_file(sd, str(path))
    elif layout == "bare":
        path = path.with_suffix(".pt")
        torch.save(sd, path)
    else:
        path = path.with_suffix(".pt")
        sd.update({"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(4, 3, 4, 4),
                   "foundation_model.model.cls_token": torch.zeros(1, 1, 8),
                   "linear_proj.weight": torch.zeros(16, 32, 1, 1)})
        torch.save({"state_dict": sd, "global_step": 1234, "optimizer_states": [{"state": {}}], **(extra or {})}, path)
    return path, model


def make_latent_dir(path, class_means, **kwargs):
    """A stage-1-like latent dir without images (pipeline.latents.write_synthetic_latent_dir)."""
    from pipeline.latents import write_synthetic_latent_dir
    return write_synthetic_latent_dir(path, class_means, **kwargs)


def free_port():
    """A TCP port nobody listens on now (for torchrun's rendezvous in tests that run side by side)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage2_args(latent_dir, output_dir, *extra, steps=20):
    """argv for a fast CPU stage 2 run of LightningDiT-Tiny/2."""
    return ["--latent_dir", str(latent_dir), "--output_dir", str(output_dir), "--model", "LightningDiT-Tiny/2",
            "--max_steps", str(steps), "--batch_size", "16", "--log_every", "5", "--ckpt_every", "10",
            "--sample_every", "1000", "--device", "cpu", "--precision", "fp32", "sample.num_steps=4",
            # a cheap held-out monitor that never stops early: runs last exactly `steps` (tests of the monitor
            # itself set these back)
            "monitor.patience=0", "monitor.samples_per_class=4", "monitor.num_steps=2", *extra]


def cli_error(main, argv, capsys):
    """Run a stage script's `main` in this process the way `python <script> argv` does (`run_cli(main)`,
    `argv` on sys.argv, the repository root as working directory) and return (exit code, stderr). It must
    exit through SystemExit (run_cli's one-line error, or argparse); any other exception propagates and fails
    the test, as a traceback from the real process would."""
    import sys
    from unittest import mock

    from pipeline.common import run_cli
    capsys.readouterr()   # drop earlier output
    script = f"{main.__module__}.py"
    cwd = os.getcwd()
    os.chdir(Path(__file__).parent.parent)   # relative defaults (pretrained/...) resolve as in the script's runs
    try:
        with mock.patch.object(sys, "argv", [script, *map(str, argv)]):
            run_cli(main)
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    finally:
        os.chdir(cwd)
    raise AssertionError(f"{script} {' '.join(map(str, argv))}: finished without an error")
