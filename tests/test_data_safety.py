"""Never lose or silently corrupt a user's data: one test per case of the reliability list in the README
(stage 3 owns only what it wrote, content fingerprints in stage 1 and 2, empty classes, name collisions,
misplaced output dirs, one-line errors instead of tracebacks)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import stage1_extract_features as stage1
import stage2_train_dit as stage2
import stage3_inference as stage3
from models.safe_load import CheckpointError
from pipeline.checkpoint import latest_checkpoint
from pipeline.common import UsageError
from pipeline.config import load_config
from pipeline.images import unique_folder_names
from pipeline.latents import load_latents, shard_path, write_shard
from tests.helpers import MEANS, make_latent_dir, stage2_args


def _images(folder, classes=("walk", "run"), per_class=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = (rng.random((size, size)) * 80 + 60 * c).astype(np.uint8)
            Image.fromarray(arr).save(folder / name / f"{name}{i}.png")


def _stage1(data, out, *extra):
    stage1.main(["--data_dir", str(data), "--vavae_path", "demo", "--output_dir", str(out), "--image_size", "32",
                 "--num_workers", "0", "--batch_size", "4", "--imagenet_stats", "none.pt", "--recon_images", "0",
                 "--device", "cpu", "--val_fraction", "0.25", *extra])


def _gen(run, out, *extra):
    return stage3.main(["--checkpoint", str(run), "--vavae_path", "demo", "--output_dir", str(out), "--num_per_class",
                        "2", "--steps", "2", "--device", "cpu", "--precision", "fp32", *extra])


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("safety")
    make_latent_dir(base / "latents", MEANS, class_names=["walk:fast", "walk?fast"])
    stage2.main(stage2_args(base / "latents", base / "run", steps=10))
    return base / "run"


# ---- 1. stage 3 never counts, mixes with or deletes the user's files -----------------------------

def test_1_stage3_refuses_the_real_data_folder_and_overwrite_deletes_nothing(tmp_path, run):
    _images(tmp_path / "data", classes=("walk_fast", "other"))
    before = _snapshot(tmp_path / "data")
    for extra in ((), ("--overwrite",)):
        with pytest.raises(UsageError, match="did not write"):
            _gen(run, tmp_path / "data", *extra)
        assert _snapshot(tmp_path / "data") == before


def test_1_a_user_file_dropped_into_our_output_is_never_deleted(tmp_path, run):
    _gen(run, tmp_path / "gen")
    (tmp_path / "gen" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="notes.txt"):
        _gen(run, tmp_path / "gen", "--steps", "3", "--overwrite")
    assert (tmp_path / "gen" / "notes.txt").read_text() == "mine"


def test_1_a_killed_runs_half_written_image_is_removed_on_resume(tmp_path, run):
    _gen(run, tmp_path / "gen")
    (tmp_path / "gen" / "walk_fast" / ".tmp_abc123.partial").write_bytes(b"half a png")   # what SIGKILL leaves
    _gen(run, tmp_path / "gen", "--num_per_class", "3")
    assert sorted(p.name for p in (tmp_path / "gen" / "walk_fast").iterdir()) == \
        ["walk_fast_00000.png", "walk_fast_00001.png", "walk_fast_00002.png"]


# ---- 2. stage 1 re-encodes images whose content changed under the same name ----------------------

def test_2_changed_pixels_same_name_are_re_encoded(tmp_path):
    _images(tmp_path / "data")
    _stage1(tmp_path / "data", tmp_path / "lat", "--shard_size", "4")
    old = load_latents(tmp_path / "lat")
    arr = np.full((32, 32), 255, dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "data" / "run" / "run0.png")       # same name, new pixels
    _stage1(tmp_path / "data", tmp_path / "lat", "--shard_size", "4")
    new = load_latents(tmp_path / "lat")
    _stage1(tmp_path / "data", tmp_path / "fresh", "--shard_size", "4")
    fresh = load_latents(tmp_path / "fresh")
    assert torch.equal(new["latents"], fresh["latents"])
    assert not torch.equal(new["latents"], old["latents"])
    changed = (new["latents"] != old["latents"]).flatten(1).any(1)
    assert changed.sum() == 1                                                   # only that image


# ---- 3. a resumed run refuses latents it was not trained on ---------------------------------------

def test_3_resume_refuses_other_latents_in_the_same_dir(tmp_path):
    make_latent_dir(tmp_path / "lat", MEANS, seed=0)
    stage2.main(stage2_args(tmp_path / "lat", tmp_path / "run", steps=10))
    make_latent_dir(tmp_path / "lat", MEANS, seed=1)                           # stage 1 rerun on other data
    with pytest.raises(UsageError, match="other latents"):
        stage2.main(stage2_args(tmp_path / "lat", tmp_path / "run", steps=20))


# ---- 4. a class without training latents is refused -------------------------------------------------

def test_4_class_without_training_latents_is_refused(tmp_path):
    latents, labels, split = make_latent_dir(tmp_path / "lat", MEANS + [MEANS[0]], class_names=["a", "b", "c"])
    keep = labels != 2                                                          # class c's shard rows are gone
    write_shard(shard_path(tmp_path / "lat", 0, 0), {"latents": latents[keep], "labels": labels[keep],
                                                     "split": split[keep]}, {"indices": list(range(int(keep.sum())))})
    with pytest.raises(UsageError, match="class.*c have no training latents"):
        stage2.main(stage2_args(tmp_path / "lat", tmp_path / "run", steps=2))
    assert not (tmp_path / "run").exists()


# ---- 5. class names that map to the same folder stay apart -------------------------------------------

def test_5_colliding_class_names_get_unique_folders(tmp_path, run):
    assert unique_folder_names(["walk:fast", "walk?fast", "Walk_fast"]) == \
        {"walk:fast": "walk_fast", "walk?fast": "walk_fast_2", "Walk_fast": "Walk_fast_3"}
    _gen(run, tmp_path / "gen")
    samples = json.loads((tmp_path / "gen" / "samples.json").read_text())
    assert {c["folder"] for c in samples["classes"].values()} == {"walk_fast", "walk_fast_2"}
    assert len(list((tmp_path / "gen").glob("walk_fast*/*.png"))) == 4


# ---- 6. --overwrite removes every file stage 3 wrote in that dir, of every earlier run ----------------

def test_6_overwrite_removes_images_of_all_earlier_classes(tmp_path, run):
    _gen(run, tmp_path / "gen", "--classes", "walk:fast")
    _gen(run, tmp_path / "gen", "--classes", "walk?fast", "--num_per_class", "3")
    first = json.loads((tmp_path / "gen" / "samples.json").read_text())
    assert len(first["files"]) == 5                                            # both runs' images are ours
    _gen(run, tmp_path / "gen", "--classes", "walk?fast", "--steps", "3", "--overwrite")
    samples = json.loads((tmp_path / "gen" / "samples.json").read_text())
    on_disk = sorted(str(p.relative_to(tmp_path / "gen")) for p in (tmp_path / "gen").glob("*/*.png"))
    assert on_disk == samples["files"] == ["walk_fast_2/walk_fast_2_00000.png", "walk_fast_2/walk_fast_2_00001.png"]
    assert samples["settings"]["num_steps"] == 3


# ---- 7. stage 1's output inside the data folder is refused -----------------------------------------

def test_7_stage1_output_inside_data_dir_is_refused(tmp_path):
    _images(tmp_path / "data")
    before = _snapshot(tmp_path / "data")
    with pytest.raises(UsageError, match="inside --data_dir"):
        _stage1(tmp_path / "data", tmp_path / "data" / "latent_features")
    assert _snapshot(tmp_path / "data") == before


# ---- 8. one-line errors instead of tracebacks --------------------------------------------------------

def test_8_latents_too_small_for_the_patch_size(tmp_path):
    make_latent_dir(tmp_path / "lat", MEANS, shape=(4, 1, 1))
    with pytest.raises(UsageError, match="cannot be cut into 2x2 patches"):
        stage2.main(stage2_args(tmp_path / "lat", tmp_path / "run", steps=2))
    assert not (tmp_path / "run").exists()


def test_8_resume_from_another_models_checkpoint(tmp_path, latent_dir, run):
    with pytest.raises(UsageError, match="cannot resume"):
        stage2.main(stage2_args(latent_dir, tmp_path / "run", "--resume", latest_checkpoint(run), "--model",
                                "LightningDiT-Tiny/1", steps=2))


@pytest.mark.parametrize("override,message", [
    ("train.batch_size=abc", "could not be converted"), ("train.batch_size=1e3", "could not be converted"),
    ("train.max_steps=-5", "train.max_steps=-5: must be >= 1"), ("train.lr=abc", "could not be converted"),
    ("train.lr=-1", "train.lr=-1.0: must be >= 1e-12"), ("sample.method=rk4", "use one of euler, heun"),
    ("train.nonsense=1", "unknown key train.nonsense"), ("monitor.patience=-1", "must be >= 0"), ("model=3", "unknown key model"),
    ("sample.start_t=0.99", r"sample.start_t=0.99: must be in \[0.0, 0.95\]"),
])
def test_8_ill_typed_or_out_of_range_overrides(override, message):
    with pytest.raises(UsageError, match=message):
        load_config(None, dotlist=[override])


@pytest.mark.parametrize("flag,value", [("--max_steps", "0"), ("--max_steps", "ten"), ("--batch_size", "-4"),
                                        ("--lr", "fast"), ("--lr", "0"), ("--lr", "-2"), ("--ema_decay", "1.5"),
                                        ("--precision", "int8"), ("--stats", "coco"), ("--ckpt_every", "0"),
                                        ("--sample_every", "x"), ("--log_every", "-1"), ("--seed", "abc"),
                                        ("--epochs", "0")])
def test_8_bad_stage2_flags_name_the_flag(tmp_path, latent_dir, flag, value):
    with pytest.raises(UsageError, match=f"{flag}|{stage2.CONFIG_FLAGS[flag[2:]][0]}"):
        stage2.main(stage2_args(latent_dir, tmp_path / "run", flag, value))
    assert not (tmp_path / "run").exists()


def test_8_unknown_device_and_text_file_tokenizer(tmp_path, latent_dir):
    with pytest.raises(UsageError, match="--device foo: unknown device"):
        stage2.main(stage2_args(latent_dir, tmp_path / "run", "--device", "foo"))
    _images(tmp_path / "data")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        stage1.main(["--data_dir", str(tmp_path / "data"), "--vavae_path", str(tmp_path / "notes.txt"),
                     "--output_dir", str(tmp_path / "lat"), "--device", "cpu"])


# ---- 9. --eval without held-out images stops before generating; stage 1 warns -------------------------

def test_9_eval_without_heldout_images_fails_before_generating(tmp_path, capsys):
    _images(tmp_path / "data", per_class=3)
    _stage1(tmp_path / "data", tmp_path / "lat", "--val_fraction", "0.1")   # 0.1 of 3 rounds to 0 held out
    assert "has no held-out image" in capsys.readouterr().out
    stage2.main(stage2_args(tmp_path / "lat", tmp_path / "run", "--model", "LightningDiT-Tiny/1", steps=2))
    with pytest.raises(UsageError, match="no held-out images.*--val_fraction"):
        _gen(tmp_path / "run", tmp_path / "gen", "--eval")
    assert not (tmp_path / "gen").exists()


# ---- 10. honest final messages and records --------------------------------------------------------------

def test_10_messages_and_samples_json_name_what_exists(tmp_path, latent_dir, run, capsys):
    stage2.main(stage2_args(latent_dir, tmp_path / "r", steps=2))
    assert "samples/" not in capsys.readouterr().out.splitlines()[-1]
    _gen(run, tmp_path / "gen")
    samples = json.loads((tmp_path / "gen" / "samples.json").read_text())
    ckpt = torch.load(samples["checkpoint"], weights_only=True)
    assert samples["settings"]["step"] == ckpt["step"] and len(samples["settings"]["weights_sha1"]) == 16


def test_run_demo_never_deletes_a_folder_it_did_not_make(tmp_path):
    """run_demo.sh starts from an empty OUT, but a folder without its marker (someone's data) is refused."""
    import subprocess
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    r = subprocess.run(["bash", "run_demo.sh"], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       env=dict(os.environ, OUT=str(precious)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "was not made by this demo" in r.stderr
    assert (precious / "notes.txt").read_text() == "keep me"
