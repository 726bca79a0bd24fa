"""Stage 2: learning, checkpoints, resume equality, init_from, precision, signals, DDP, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import stage2_train_dit as stage2
from pipeline.common import UsageError, pick_precision
from pipeline.generate import denormalise, sample_latents
from pipeline.inference import load_run
from pipeline.stats import load_stats, pooled_std
from pipeline.checkpoint import CHECKPOINT_KEYS, FORMAT_VERSION, latest_checkpoint
from tests.helpers import MEANS, cli_error, free_port, make_latent_dir, stage2_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def _weights(run_dir):
    ckpt = torch.load(latest_checkpoint(run_dir), weights_only=True)
    return ckpt


def test_tiny_model_learns_class_means(tmp_path, latent_dir):
    stage2.main(stage2_args(latent_dir, tmp_path / "run", "train.lr=2e-3", "train.ema_decay=0.99", steps=300))
    model, ckpt = load_run(latest_checkpoint(tmp_path / "run"))
    sampling = dict(num_steps=20, method="euler", cfg_scale=1.0, cfg_interval_start=0.0, timestep_shift=0.0)
    for c, mean in enumerate(MEANS):
        z = sample_latents(model, [c] * 32, list(range(32)), [4, 4, 4], sampling, torch.device("cpu"))
        got = denormalise(z, ckpt["stats"]).mean(dim=(0, 2, 3))
        assert (got - mean.flatten()).abs().max() < 0.3, (c, got)


def test_checkpoint_contents_logs_and_outputs(tmp_path, latent_dir):
    stage2.main(stage2_args(latent_dir, tmp_path / "run", "log.sample_every=10", "log.keep_last=1", steps=20))
    run = tmp_path / "run"
    ckpt = _weights(run)
    for key in ("model", "ema", "opt", "scaler", "step", "rng", "config", "stats", "classes", "latent_shape",
                "code_version", "color_mode"):
        assert key in ckpt, key
    assert ckpt["step"] == 20 and ckpt["classes"] == ["class0", "class1"]
    assert ckpt["stats"]["source"] == "micro_doppler" and ckpt["stats"]["mean"].shape == (1, 4, 1, 1)
    assert sorted(os.listdir(run / "checkpoints")) == ["0000020.pt", "best.pt", "latest"]  # keep_last=1
    assert set(ckpt) == set(CHECKPOINT_KEYS) and ckpt["format_version"] == FORMAT_VERSION
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "mse", "cos", "grad_norm", "lr", "images_per_s"} <= set(next(r for r in rows if "loss" in r))
    assert any("val_loss" in r for r in rows)
    assert (run / "loss.png").is_file() and (run / "samples" / "step_0000010.png").is_file()
    assert (run / "config.yaml").read_text().count("LightningDiT-Tiny/2") == 1


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, latent_dir):
    stage2.main(stage2_args(latent_dir, tmp_path / "straight", steps=20))
    stage2.main(stage2_args(latent_dir, tmp_path / "split", steps=10))
    stage2.main(stage2_args(latent_dir, tmp_path / "split", steps=20))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert b["step"] == 20
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_init_from_partial_loading_and_wrong_architecture(tmp_path, latent_dir, capsys):
    stage2.main(stage2_args(latent_dir, tmp_path / "src", steps=10))
    three = tmp_path / "three"
    make_latent_dir(three, MEANS + [torch.zeros(4, 1, 1)])
    stage2.main(stage2_args(three, tmp_path / "dst", "--init_from", str(latest_checkpoint(tmp_path / "src")), steps=2))
    out = capsys.readouterr().out
    assert "re-initialised 1 (y_embedder.embedding_table.weight)" in out
    src = torch.load(latest_checkpoint(tmp_path / "src"), weights_only=True)
    dst = torch.load(tmp_path / "dst" / "checkpoints" / "0000002.pt", weights_only=True)
    assert dst["init_stats"]["source"] == "micro_doppler"
    # trunk weights start from the source: after 2 small steps they are still close
    k = "blocks.0.attn.qkv.weight"
    assert (dst["model"][k] - src["ema"][k]).abs().max() < 0.05
    with pytest.raises(UsageError, match="different architecture"):
        stage2.main(stage2_args(latent_dir, tmp_path / "bad", "--init_from", str(latest_checkpoint(tmp_path / "src")),
                                "--model", "LightningDiT-Tiny/1", steps=2))


def test_precision_selection(monkeypatch):
    assert pick_precision("auto", torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))   # T4
    assert pick_precision("auto", torch.device("cuda:0")) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))   # A100
    assert pick_precision("auto", torch.device("cuda:0")) == torch.bfloat16
    assert pick_precision("fp16", torch.device("cuda:0")) == torch.float16
    assert pick_precision("fp32", torch.device("cuda:0")) is None


def test_pooled_std_keeps_means_and_gives_every_channel_the_rms_std(tmp_path, latent_dir, capsys):
    stats = {"mean": torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1), "std": torch.tensor([3.0, 4.0]).reshape(1, 2, 1, 1)}
    pooled = pooled_std(stats)
    assert torch.equal(pooled["mean"], stats["mean"]) and torch.allclose(pooled["std"].flatten(), torch.tensor([12.5 ** 0.5] * 2))
    assert stats["std"].flatten().tolist() == [3.0, 4.0]          # the caller's stats are not changed
    own = load_stats(os.path.join(latent_dir, "latents_stats.pt"))
    stage2.main(stage2_args(latent_dir, tmp_path / "pooled", "data.std_pooling=pooled", steps=2))
    assert "stats: micro_doppler, std pooled over channels" in capsys.readouterr().out
    stage2.main(stage2_args(latent_dir, tmp_path / "default", steps=2))
    pooled, default = _weights(tmp_path / "pooled")["stats"], _weights(tmp_path / "default")["stats"]
    assert pooled["source"] == "micro_doppler, std pooled over channels" and default["source"] == "micro_doppler"
    assert torch.allclose(pooled["std"], pooled_std(own)["std"]) and torch.equal(pooled["mean"], own["mean"])
    assert torch.equal(default["std"], own["std"])                # the reference's per-channel stds by default


def test_a_run_saved_before_std_pooling_existed_resumes_as_it_ran(tmp_path, latent_dir, capsys):
    import yaml
    run = tmp_path / "run"
    stage2.main(stage2_args(latent_dir, run, steps=2))
    # what the version before data.std_pooling wrote: the key is in neither config.yaml nor the checkpoints
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    del cfg["data"]["std_pooling"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for path in (run / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=True)
        del ckpt["config"]["data"]["std_pooling"]
        torch.save(ckpt, path)
    code, err = cli_error(stage2.main, stage2_args(latent_dir, run, "data.std_pooling=pooled", steps=4), capsys)
    assert code == 2 and "data.std_pooling" in err          # it ran per channel: pooling now would change it
    stage2.main(stage2_args(latent_dir, run, steps=4))
    assert _weights(run)["step"] == 4


def _run(*argv, **kw):
    return subprocess.run([sys.executable, "stage2_train_dit.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kw)


def test_sigterm_writes_a_checkpoint_and_stops(tmp_path, latent_dir):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "stage2_train_dit.py", *stage2_args(latent_dir, run, steps=100000)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "signal SIGTERM" in out
    step = torch.load(latest_checkpoint(run), weights_only=True)["step"]
    assert 5 <= step < 100000


def test_time_budget_stops_cleanly(tmp_path, latent_dir):
    r = _run(*stage2_args(latent_dir, tmp_path / "run", "--time_budget", "2s", steps=100000))
    assert r.returncode == 0, r.stderr
    assert "time budget reached" in r.stdout and latest_checkpoint(tmp_path / "run")


def test_non_finite_loss_stops_with_checkpoint(tmp_path, latent_dir):
    r = _run(*stage2_args(latent_dir, tmp_path / "run", "train.lr=1e30", "train.max_bad_steps=3", "train.grad_clip=1e30",
                          steps=200))
    assert r.returncode == 2, r.stderr
    assert "non-finite steps in a row" in r.stderr and latest_checkpoint(tmp_path / "run")


def test_an_fp16_scaler_finding_its_scale_is_not_divergence():
    from pipeline.train import make_grad_scaler, stop_on_non_finite
    assert stop_on_non_finite(10, 10, 1.0) and stop_on_non_finite(12, 10, 0.25)
    assert not stop_on_non_finite(9, 10, 1.0)
    # fp16: 10 skips halve 2^16 to 2^6; the scaler is still searching, so the run goes on
    scaler = make_grad_scaler(torch.device("cpu"), torch.float16)
    assert not stop_on_non_finite(10, 10, scaler.get_scale() / 2 ** 10)
    assert stop_on_non_finite(16, 10, scaler.get_scale() / 2 ** 16)


def test_a_skipped_fp32_step_leaves_the_scale_at_1():
    """A skip halves a grad scaler's scale; outside fp16 train_step keeps it at 1 (else ~150 skips over a long run
    would drive it to 0 and every later step to NaN)."""
    from models.lightningdit import LightningDiT
    from pipeline.train import make_grad_scaler, make_optimizer, train_step
    torch.manual_seed(0)
    model = LightningDiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2,
                         num_classes=2)
    params = [p for p in model.parameters() if p.requires_grad]
    tcfg = dict(lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.0, grad_clip=1.0, cos_loss_weight=1.0)
    opt, cpu = make_optimizer(params, tcfg), torch.device("cpu")
    scaler = make_grad_scaler(cpu, None)
    x1, y = torch.randn(2, 4, 8, 8), torch.tensor([0, 1])
    for bad in (True, False):
        _, _, ok = train_step(model, params, opt, scaler, x1 * (float("inf") if bad else 1.0), y, tcfg["lr"], tcfg,
                              cpu, None)
        assert bool(ok) is not bad and scaler.get_scale() == 1.0


def test_two_process_gloo_ddp(tmp_path, latent_dir):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "stage2_train_dit.py", *stage2_args(latent_dir, tmp_path / "ddp", steps=10)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2 process(es), batch 16" in r.stdout
    ckpt = torch.load(latest_checkpoint(tmp_path / "ddp"), weights_only=True)
    assert ckpt["step"] == 10 and len(ckpt["rng"]) == 2
    cmd[-len(stage2_args(latent_dir, tmp_path / "x", steps=10)):] = stage2_args(latent_dir, tmp_path / "odd", steps=10)
    cmd[cmd.index("--batch_size") + 1] = "15"
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "not divisible" in r.stderr


def test_bad_inputs_exit_2(tmp_path, latent_dir, capsys):
    wrong = tmp_path / "wrong"
    make_latent_dir(wrong, MEANS)
    torch.save({"mean": torch.zeros(1, 3, 1, 1), "std": torch.ones(1, 3, 1, 1)}, wrong / "latents_stats.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    future = tmp_path / "future"     # dataset.json from a newer version of this code: refused, not misread
    make_latent_dir(future, MEANS)
    info = json.loads((future / "dataset.json").read_text())
    (future / "dataset.json").write_text(json.dumps(dict(info, schema_version=99)))
    stage2.main(stage2_args(latent_dir, tmp_path / "used", steps=2))
    # the real process, end to end (through train(): run lock, data checks): exit code 2, no traceback
    r = _run(*stage2_args(wrong, tmp_path / "o3"))
    assert r.returncode == 2, r.stderr[-500:]
    assert "3 channels" in r.stderr and "Traceback" not in r.stderr, r.stderr[-500:]
    # the rest in this process, through run_cli as the script calls it (each subprocess costs a torch import)
    cases = [
        (stage2_args(tmp_path / "missing", tmp_path / "o1"), "no such folder"),
        (stage2_args(empty, tmp_path / "o2"), "dataset.json"),
        (stage2_args(future, tmp_path / "o2b"), "dataset.json has schema version 99"),
        (stage2_args(wrong, tmp_path / "o3"), "3 channels"),
        (stage2_args(latent_dir, tmp_path / "o4", "--model", "LightningDiT-Huge/9"), "unknown"),
        (stage2_args(latent_dir, tmp_path / "used", "train.lr=0.5"), "different config (train.lr)"),
        (stage2_args(latent_dir, tmp_path / "o5", "--init_from", str(wrong / "latents_stats.pt")), "--init_from"),
        (stage2_args(latent_dir, tmp_path / "o6", "--max_steps", "-3"), "must be >= 1"),
        (stage2_args(latent_dir, tmp_path / "o7", "--time_budget", "soon"), "duration"),
        (stage2_args(latent_dir, tmp_path / "o8", "--lr", "-7"), "train.lr=-7.0: must be >= 1e-12"),
        (stage2_args(latent_dir, tmp_path / "o9", "nokey=1"), "unknown key"),
    ]
    for argv, message in cases:
        code, stderr = cli_error(stage2.main, argv, capsys)
        assert code == 2, (argv, stderr[-500:])
        assert message in stderr, (message, stderr[-500:])
        assert "Traceback" not in stderr


def test_single_class_trains_unconditionally(tmp_path):
    make_latent_dir(tmp_path / "one", MEANS[:1])
    stage2.main(stage2_args(tmp_path / "one", tmp_path / "run", steps=4))
    ckpt = _weights(tmp_path / "run")
    assert ckpt["model_config"]["class_dropout_prob"] == 0.0
    assert ckpt["model"]["y_embedder.embedding_table.weight"].shape[0] == 1   # no null row: nothing to guide
    model, _ = load_run(latest_checkpoint(tmp_path / "run"))
    sampling = dict(num_steps=2, method="euler", cfg_scale=1.0, cfg_interval_start=0.0, timestep_shift=0.0)
    assert sample_latents(model, [0, 0], [1, 2], [4, 4, 4], sampling, torch.device("cpu")).shape == (2, 4, 4, 4)
