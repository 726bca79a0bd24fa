"""Reliability: interruptions, full disks, concurrency, hostile files, numerical faults, bad command lines.

Every case injects one fault and checks that nothing is lost and the error is one clear line."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import stage1_extract_features as stage1
import stage2_train_dit as stage2
import stage3_inference as stage3
from pipeline.common import UsageError
from pipeline.latents import list_shards, load_latents, shard_path, write_shard
from pipeline.checkpoint import latest_checkpoint
from tests.helpers import MEANS, Payload, make_latent_dir, stage2_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable



def _weights(run_dir):
    return torch.load(latest_checkpoint(run_dir), weights_only=True)


def _assert_same_weights(a, b):
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def _rows(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    return len(open(path).read().splitlines()) if os.path.isfile(path) else 0


# --------------------------------------------------------------------------------
#                                  Interruption
# --------------------------------------------------------------------------------

def test_stage2_sigkill_at_random_points_resumes_to_the_same_result(tmp_path, latent_dir):
    steps = 60
    argv = stage2_args(latent_dir, tmp_path / "run", "--log_every", "1", steps=steps)
    stage2.main(stage2_args(latent_dir, tmp_path / "straight", "--log_every", "1", steps=steps))
    rng = random.Random(7)
    kills = 0
    # four kills at random steps (between and during the every-10-steps checkpoint writes) ...
    for _ in range(4):
        target = _rows(tmp_path / "run") + rng.randint(3, 12)
        proc = subprocess.Popen([PY, "stage2_train_dit.py", *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        while _rows(tmp_path / "run") < target and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    # ... and two inside a checkpoint write, leaving a partial temp file behind
    for nth in (1, 2):
        r = subprocess.run([PY, "tests/fault_runner.py", "kill_in_save", str(nth), "stage2_train_dit.py", *argv],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == -signal.SIGKILL
        kills += 1
    partials = [p for p in os.listdir(tmp_path / "run" / "checkpoints") if p.startswith(".tmp_")]
    assert partials, "the kill inside torch.save should leave a partial temp file"
    for name in os.listdir(tmp_path / "run" / "checkpoints"):   # every visible checkpoint is complete
        if name.endswith(".pt") and not name.startswith("."):
            torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)
    stage2.main(argv)   # resume to the end (stale lock and partial files are handled)
    assert kills >= 5
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "run"))
    assert not [p for p in os.listdir(tmp_path / "run" / "checkpoints") if p.startswith(".tmp_")]
    rows = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    steps_logged = [r["step"] for r in rows if "loss" in r]
    assert steps_logged == sorted(set(steps_logged))   # no replayed duplicates in the log


def _images(folder, n_per_class=6):
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(n_per_class):
            rng = np.random.default_rng([ord(c), i])
            Image.fromarray((rng.random((32, 48)) * 255).astype(np.uint8)).save(folder / c / f"{i}.png")


def test_stage1_killed_mid_run_resumes_with_identical_outputs(tmp_path):
    _images(tmp_path / "data", 20)
    argv = ["--data_dir", str(tmp_path / "data"), "--vavae_path", "demo", "--image_size", "32", "--num_workers", "0",
            "--batch_size", "2", "--shard_size", "4", "--recon_images", "0"]
    stage1.main(argv + ["--output_dir", str(tmp_path / "straight")])
    out = tmp_path / "out"
    proc = subprocess.Popen([PY, "stage1_extract_features.py", *argv, "--output_dir", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(list_shards(out)) < 2 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists()
    stage1.main(argv + ["--output_dir", str(out)])
    a, b = load_latents(tmp_path / "straight"), load_latents(out)
    assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["labels"], b["labels"])
    assert json.loads((out / "dataset.json").read_text())["num_images"] == 40


def test_stage3_killed_mid_run_resumes_with_identical_images(tmp_path, latent_dir):
    stage2.main(stage2_args(latent_dir, tmp_path / "run", steps=10))
    argv = ["--checkpoint", str(tmp_path / "run"), "--vavae_path", "demo", "--num_per_class", "30", "--batch_size", "2",
            "--steps", "2", "--device", "cpu"]
    stage3.main(argv + ["--output_dir", str(tmp_path / "straight")])
    out = tmp_path / "out"
    proc = subprocess.Popen([PY, "stage3_inference.py", *argv, "--output_dir", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "class0" / "class0_00004.png").exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not json.loads((out / "samples.json").read_text())["complete"]
    stage3.main(argv + ["--output_dir", str(out)])
    for c in ("class0", "class1"):
        names = sorted(os.listdir(tmp_path / "straight" / c))
        assert names == sorted(os.listdir(out / c)) and len(names) == 30
        for n in names:
            assert np.array_equal(np.asarray(Image.open(tmp_path / "straight" / c / n)), np.asarray(Image.open(out / c / n)))


# --------------------------------------------------------------------------------
#                           Full disk, unwritable dir, concurrency
# --------------------------------------------------------------------------------

def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, latent_dir):
    argv = stage2_args(latent_dir, tmp_path / "run", "monitor.every=1000", steps=40)   # no best.pt writes in between
    r = subprocess.run([PY, "tests/fault_runner.py", "enospc_in_save", "2", "stage2_train_dit.py", *argv], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "No space left on device" in r.stderr and "Traceback" not in r.stderr
    ckpt = _weights(tmp_path / "run")
    assert ckpt["step"] == 10   # the first checkpoint is intact and still the latest
    assert not [p for p in os.listdir(tmp_path / "run" / "checkpoints") if p.startswith(".tmp_")]


def test_gpu_out_of_memory_is_a_one_line_error(capsys):
    from pipeline.common import run_cli

    def main():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 14.75 GiB total)\n"
                                          "details on the allocator")
    with pytest.raises(SystemExit) as e:
        run_cli(main)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "Tried to allocate 2.00 GiB" in err and "--batch_size" in err and "--grad_checkpointing" in err


def test_unwritable_output_dir_is_a_clear_error(tmp_path, latent_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for script, argv in (("stage2_train_dit.py", stage2_args(latent_dir, blocker / "run", steps=2)),
                         ("stage1_extract_features.py", ["--data_dir", str(latent_dir), "--vavae_path", "demo",
                                                         "--output_dir", str(blocker / "x")])):
        r = subprocess.run([PY, script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-400:]
        assert "error:" in r.stderr


def test_second_process_on_a_run_dir_in_use_refuses_and_stale_locks_are_taken(tmp_path, latent_dir):
    run = tmp_path / "run"
    proc = subprocess.Popen([PY, "stage2_train_dit.py", *stage2_args(latent_dir, run, steps=100000)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run / ".lock").exists() or not (run / ".lock").read_text():
        time.sleep(0.05)
    r = subprocess.run([PY, "stage2_train_dit.py", *stage2_args(latent_dir, run, steps=5)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert r.returncode == 2 and f"in use by process {proc.pid}" in r.stderr
    assert (run / ".lock").read_text() == str(proc.pid)   # the killed run's lock file remains, its lock is gone
    stage2.main(stage2_args(latent_dir, run, steps=5))    # and is taken over
    assert (run / ".lock").read_text() == ""


def test_lock_file_naming_a_live_process_does_not_block(tmp_path, latent_dir):
    """A run dir copied to a new machine keeps its .lock; the pid in it may belong to any live process there."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(str(os.getpid()))
    stage2.main(stage2_args(latent_dir, run, steps=2))
    assert latest_checkpoint(run)


# --------------------------------------------------------------------------------
#                               Hostile or wrong files
# --------------------------------------------------------------------------------

def test_hostile_and_wrong_files(tmp_path, latent_dir):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Payload(str(marker)), "ema": Payload(str(marker))}, f)
    stage2.main(stage2_args(latent_dir, tmp_path / "run", steps=2))
    good = latest_checkpoint(tmp_path / "run")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    wrong_stats = tmp_path / "wrong_stats"
    make_latent_dir(wrong_stats, MEANS)
    torch.save({"mean": torch.zeros(1, 8, 1, 1), "std": torch.ones(1, 8, 1, 1)}, wrong_stats / "latents_stats.pt")
    other_tok = tmp_path / "other_tok"
    make_latent_dir(other_tok, [torch.zeros(8, 1, 1), torch.ones(8, 1, 1)], shape=(8, 4, 4))
    cases = [
        ("stage2_train_dit.py", stage2_args(latent_dir, tmp_path / "o1", "--init_from", str(evil)), "--trust_checkpoint"),
        ("stage3_inference.py", ["--checkpoint", str(evil), "--vavae_path", "demo"], "--trust_checkpoint"),
        ("stage3_inference.py", ["--checkpoint", str(truncated), "--vavae_path", "demo"], "truncated"),
        ("stage2_train_dit.py", stage2_args(latent_dir, tmp_path / "o2", "--init_from", str(truncated)), "truncated"),
        ("stage2_train_dit.py", stage2_args(wrong_stats, tmp_path / "o3"), "8 channels"),
        ("stage2_train_dit.py", stage2_args(other_tok, tmp_path / "run", steps=4), "another tokenizer"),
        ("stage2_train_dit.py", stage2_args(latent_dir, tmp_path / "o4", "--init_from", str(wrong_stats / "latents_stats.pt")),
         "different architecture"),
    ]
    for script, argv, message in cases:
        r = subprocess.run([PY, script, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, (script, argv, r.stderr[-300:])
        assert message in r.stderr and "Traceback" not in r.stderr, (message, r.stderr[-300:])
    assert not marker.exists()


# --------------------------------------------------------------------------------
#                                 Numerical faults
# --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latents_are_named_at_load(tmp_path, bad):
    make_latent_dir(tmp_path / "lat", MEANS)
    path = shard_path(tmp_path / "lat", 0, 0)
    from safetensors.torch import load_file
    data = load_file(path)
    data["latents"][7, 2, 1, 1] = bad
    write_shard(path, data, {"indices": list(range(len(data["labels"])))})
    with pytest.raises(UsageError, match=r"latents_rank00_shard000.safetensors: non-finite .* row 7 \(image index 7\)"):
        load_latents(tmp_path / "lat")
    r = subprocess.run([PY, "stage2_train_dit.py", *stage2_args(tmp_path / "lat", tmp_path / "run")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "row 7" in r.stderr


# --------------------------------------------------------------------------------
#                                Bad command lines
# --------------------------------------------------------------------------------

BAD_FLAGS = {
    stage1: [("--image_size", "big"), ("--image_size", "0"), ("--resize", "zoom"), ("--color", "cmyk"),
             ("--flip", "both"), ("--val_fraction", "x"), ("--val_fraction", "-0.1"), ("--val_fraction", "1"),
             ("--seed", "-1"), ("--seed", "1.5"), ("--batch_size", "0"), ("--batch_size", "many"),
             ("--num_workers", "-2"), ("--shard_size", "0"), ("--precision", "fp8"), ("--recon_images", "-1"),
             ("--recon_images", "all")],
    # stage 2's config flags are checked by the config schema (tests/test_data_safety.py::test_8_bad_stage2_flags)
    stage2: [("--time_budget", "-1h"), ("--time_budget", "forever")],
    stage3: [("--num_per_class", "0"), ("--num_per_class", "lots"), ("--cfg_scale", "-1"), ("--cfg_scale", "big"),
             ("--cfg_interval_start", "2"), ("--timestep_shift", "-0.5"), ("--start_t", "1"), ("--start_t", "-0.1"),
             ("--steps", "0"), ("--steps", "1.5"),
             ("--method", "rk4"), ("--seed", "-3"), ("--batch_size", "0"), ("--decode_chunk", "-1"),
             ("--precision", "fp64"), ("--archive", "rar"), ("--preset", "turbo")],
}
REQUIRED = {stage1: ["--data_dir", "d"], stage2: ["--latent_dir", "d"], stage3: []}


@pytest.mark.parametrize("module,flag,value", [(m, f, v) for m, cases in BAD_FLAGS.items() for f, v in cases],
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_bad_flag_values_are_argparse_errors(module, flag, value, capsys):
    argv = [*REQUIRED[module], flag, value]
    try:
        module.parse_args(argv)
        if module is stage1 and flag == "--image_size":   # checked when the run starts (multiple of 16)
            from pipeline.extract import parse_image_size
            with pytest.raises(UsageError):
                parse_image_size(value)
            return
        pytest.fail(f"{flag} {value} was accepted")
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
        assert f"error: argument {flag}" in err and "Traceback" not in err
