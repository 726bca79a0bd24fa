"""Stage 3: reproducibility, resume, colour mode, safe names, manifest, class means, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import stage2_train_dit as stage2
import stage3_inference as stage3
from pipeline.common import UsageError
from tests.helpers import MEANS, cli_error, free_port, make_latent_dir, make_tiny_vavae_checkpoint, stage2_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["walk/fast", "../up"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("s3")
    make_latent_dir(base / "latents", MEANS, class_names=NAMES)
    # 100 steps are plenty: sample means are within ~0.07 of the class means from step 60 on (the test allows 0.35)
    stage2.main(stage2_args(base / "latents", base / "run", "train.lr=2e-3", "train.ema_decay=0.99", steps=100))
    return base / "run"


def gen(run_dir, out, *extra):
    # 4-channel latents: the demo tokenizer built with 4 channels decodes them (f16, 64x64 images)
    stage3.main(["--checkpoint", str(run_dir), "--vavae_path", "demo", "--output_dir", str(out), "--num_per_class", "5",
                 "--steps", "8", "--device", "cpu", "--precision", "fp32", *extra])
    return json.loads((out / "samples.json").read_text())


def _pixels(folder):
    return {p: np.asarray(Image.open(os.path.join(folder, p))) for p in sorted(os.listdir(folder))}


def test_safe_names_gray_output_and_manifest(tmp_path, run_dir):
    manifest = gen(run_dir, tmp_path / "out", "--save_latents", "--archive", "tar")
    folders = sorted(p for p in os.listdir(tmp_path / "out") if (tmp_path / "out" / p).is_dir())
    assert folders == ["_up", "walk_fast"]  # no separators, no '..'
    img = Image.open(tmp_path / "out" / "walk_fast" / "walk_fast_00000.png")
    assert img.mode == "L" and img.size == (64, 64)
    assert manifest["complete"] and manifest["settings"]["num_steps"] == 8
    assert {"step", "weights_sha1", "seed", "cfg_scale", "cfg_interval_start", "timestep_shift", "method",
            "stats_source"} <= set(manifest["settings"]) and manifest["checkpoint"].endswith("best.pt")
    assert manifest["images"]["walk/fast"][0]["seed"] != manifest["images"]["walk/fast"][1]["seed"]
    assert (tmp_path / "out" / "grid.png").is_file() and (tmp_path / "out" / "generated.tar").is_file()
    lat = load_file(tmp_path / "out" / "latents.safetensors")
    assert lat["latents"].shape == (10, 4, 4, 4)


def test_samples_near_training_class_means(tmp_path, run_dir):
    gen(run_dir, tmp_path / "out", "--save_latents", "--cfg_scale", "1.0", "--steps", "20")
    lat = load_file(tmp_path / "out" / "latents.safetensors")
    for c, mean in enumerate(MEANS):
        got = lat["latents"][lat["labels"] == c].mean(dim=(0, 2, 3))
        assert (got - mean.flatten()).abs().max() < 0.35, (c, got)


def test_reproducible_across_batch_sizes_and_resume(tmp_path, run_dir):
    gen(run_dir, tmp_path / "a", "--batch_size", "1")
    gen(run_dir, tmp_path / "b", "--batch_size", "7")
    a, b = _pixels(tmp_path / "a" / "_up"), _pixels(tmp_path / "b" / "_up")
    assert a.keys() == b.keys()
    for k in a:
        assert np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1, k
    # interrupted run: some images missing -> a rerun writes exactly those, identical to before
    os.unlink(tmp_path / "b" / "_up" / "_up_00003.png")
    os.unlink(tmp_path / "b" / "walk_fast" / "walk_fast_00000.png")
    manifest = gen(run_dir, tmp_path / "b", "--batch_size", "7")
    assert manifest["generated_this_run"] == 2
    assert np.abs(_pixels(tmp_path / "b" / "_up")["_up_00003.png"].astype(int) - a["_up_00003.png"]).max() <= 1


def test_original_size_and_classes_subset(tmp_path, run_dir):
    manifest = gen(run_dir, tmp_path / "o", "--original_size", "--classes", "1")
    assert list(manifest["classes"]) == ["../up"]
    assert Image.open(tmp_path / "o" / "_up" / "_up_00000.png").size == (40, 30)


def test_bad_input(tmp_path, run_dir, capsys):
    gen(run_dir, tmp_path / "out")
    with pytest.raises(UsageError, match="other settings"):
        gen(run_dir, tmp_path / "out", "--cfg_scale", "3")
    gen(run_dir, tmp_path / "out", "--cfg_scale", "3", "--overwrite")
    with pytest.raises(UsageError, match="unknown class"):
        gen(run_dir, tmp_path / "o2", "--classes", "swim")
    tok, _ = make_tiny_vavae_checkpoint(tmp_path / "tok.pt")
    # the real process, end to end: exit code 2 and the message, no traceback
    r = subprocess.run([sys.executable, "stage3_inference.py", "--checkpoint", str(run_dir), "--vavae_path", str(tok),
                        "--output_dir", str(tmp_path / "o3")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "32 latent channels, expected 4" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # the rest in this process, through run_cli as the script calls it (each subprocess costs a torch import)
    torch.save({"something": torch.zeros(2)}, tmp_path / "notours.pt")
    for ckpt, message in ((tmp_path / "nope", "no such file"), (tmp_path / "notours.pt", "not a stage 2 checkpoint")):
        code, stderr = cli_error(stage3.main, ["--checkpoint", ckpt, "--vavae_path", "demo", "--output_dir",
                                               tmp_path / "o4"], capsys)
        assert code == 2 and message in stderr, stderr
    code, stderr = cli_error(stage3.main, ["--checkpoint", run_dir, "--steps", "0"], capsys)
    assert code == 2 and "positive integer" in stderr


def test_variations_start_from_the_training_images(tmp_path, run_dir, capsys):
    from pipeline.copies import REDRAW_RATIO, latent_copy_ratios
    from pipeline.generate import variation_source
    from pipeline.latents import load_latents
    chosen = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["sampling"]["start_t"]
    assert chosen > 0                                                   # stage 2 chose a start for variations
    settings = gen(run_dir, tmp_path / "default")["settings"]
    assert settings["start_t"] == chosen and settings["sources_sha1"]  # and stage 3 uses it by default
    pure = gen(run_dir, tmp_path / "pure", "--start_t", "0")["settings"]
    assert "start_t" not in pure and "sources_sha1" not in pure         # as runs before start_t existed
    # started at t = 0.9, each image stays nearest to the training latent variation_source picked for it
    gen(run_dir, tmp_path / "near", "--start_t", "0.9", "--save_latents", "--copies", "keep")
    out = load_file(tmp_path / "near" / "latents.safetensors")
    data = load_latents(run_dir.parent / "latents")
    for z, c, k in zip(out["latents"], out["labels"].tolist(), out["index"].tolist()):
        train = data["latents"][(data["split"] == 0) & (data["labels"] == c)]
        assert int(torch.cdist(z.flatten()[None], train.flatten(1)).argmin()) == variation_source(0, c, k, len(train))
    # by default (--copies redraw) those copies are drawn again from earlier starts until none is left
    manifest = gen(run_dir, tmp_path / "redrawn", "--start_t", "0.9", "--save_latents")
    assert manifest["settings"]["copies"] == f"redraw below {REDRAW_RATIO:g}"
    assert sum(manifest["redrawn_this_run"].values()) > 0 and set(manifest["redrawn_this_run"]) == set(NAMES)
    out = load_file(tmp_path / "redrawn" / "latents.safetensors")
    train = data["latents"][data["split"] == 0]
    # saved latents are on the tokenizer's scale already (scale 1); one drawn from pure noise could still be a copy
    assert (latent_copy_ratios(out["latents"], train, torch.ones(1)) >= REDRAW_RATIO).float().mean() >= 0.9
    assert [variation_source(0, 1, k, 7) for k in range(14)][7:] == [variation_source(0, 1, k, 7) for k in range(7)]
    assert sorted(variation_source(0, 1, k, 7) for k in range(7)) == list(range(7))   # each image once per cycle

    # the run's latents gone or changed: one line that says what to do
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    for change, message in (({"latent_dir": str(tmp_path / "moved")}, "not on this machine"),
                            ({"latents_fingerprint": "0" * 16}, "not the ones this run trained on")):
        torch.save(dict(ckpt, **change), tmp_path / "changed.pt")
        code, stderr = cli_error(stage3.main, ["--checkpoint", tmp_path / "changed.pt", "--vavae_path", "demo",
                                               "--output_dir", tmp_path / "o5", "--device", "cpu"], capsys)
        assert code == 2 and message in stderr and "--start_t 0" in stderr, stderr
    # pure noise needs them only for the class check: the same line names the flag that does without
    code, stderr = cli_error(stage3.main, ["--checkpoint", tmp_path / "changed.pt", "--vavae_path", "demo",
                                           "--output_dir", tmp_path / "o6", "--device", "cpu", "--start_t", "0"], capsys)
    assert code == 2 and "not the ones this run trained on" in stderr and "--class_check keep" in stderr, stderr
    gen(tmp_path / "changed.pt", tmp_path / "o6", "--start_t", "0", "--class_check", "keep")


def test_class_check_draws_again_what_looks_like_another_class(tmp_path, run_dir):
    # unguided (cfg 0: the unconditional model) and coarse, many samples look like the other class
    args = ("--start_t", "0", "--cfg_scale", "0", "--steps", "2", "--num_per_class", "10", "--save_latents")
    kept = gen(run_dir, tmp_path / "keep", *args, "--class_check", "keep")
    checked = gen(run_dir, tmp_path / "a", *args, "--batch_size", "1")
    assert kept["settings"]["class_check"] == "keep" and kept["class_redrawn_this_run"] is None
    assert checked["settings"]["class_check"].startswith("redraw")
    assert sum(checked["class_redrawn_this_run"].values()) > 0

    def own_class(out):   # share of samples whose latent channel means lie nearest their own class mean
        lat = load_file(out / "latents.safetensors")
        means = torch.stack([m.flatten() for m in MEANS])
        return float((torch.cdist(lat["latents"].mean(dim=(2, 3)), means).argmin(1) == lat["labels"]).float().mean())
    assert own_class(tmp_path / "a") > own_class(tmp_path / "keep")
    # an image drawn again still depends only on its own seeds, not on the batch it was drawn in
    gen(run_dir, tmp_path / "b", *args, "--batch_size", "7")
    for folder in ("_up", "walk_fast"):
        a, b = _pixels(tmp_path / "a" / folder), _pixels(tmp_path / "b" / folder)
        assert a.keys() == b.keys() and all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in a)


def test_two_ranks_split_the_work_and_match_one_process(tmp_path, run_dir):
    gen(run_dir, tmp_path / "one")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "stage3_inference.py", "--checkpoint", str(run_dir), "--vavae_path", "demo", "--output_dir",
           str(tmp_path / "two"), "--num_per_class", "5", "--steps", "8", "--device", "cpu", "--precision", "fp32"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    for folder in ("_up", "walk_fast"):
        a, b = _pixels(tmp_path / "one" / folder), _pixels(tmp_path / "two" / folder)
        assert a.keys() == b.keys() and len(a) == 5
        assert all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in a)
    assert json.loads((tmp_path / "two" / "samples.json").read_text())["complete"]
