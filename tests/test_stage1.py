"""Stage 1: every input kind, split, stats, recommendation, resume, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import stage1_extract_features as stage1
from models.vavae import load_vavae
from pipeline.common import UsageError
from pipeline.images import find_classes, load_for_tokenizer, split_indices
from pipeline.latents import list_shards, load_latents
from pipeline.stats import format_recommendation, recommend
from tests.helpers import Payload, cli_error, free_port, make_tiny_vavae_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gradient(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return (np.linspace(0, 1, w)[None, :] * np.linspace(1, 0.2, h)[:, None] * 200 + rng.random((h, w)) * 50)


def make_all_kinds(folder):
    """One file per supported input kind; returns the number of readable images written."""
    a = folder / "walk"
    (a / "nested" / "deeper").mkdir(parents=True)
    base = _gradient(40, 60).astype(np.uint8)
    Image.fromarray(base).save(a / "gray8.PNG")
    Image.fromarray((base.astype(np.uint16) * 257)).save(a / "gray16.png")
    Image.fromarray(base).convert("P").save(a / "palette.gif")
    Image.fromarray(base).convert("LA").save(a / "graya.png")
    rgb = np.stack([base, base // 2, 255 - base], -1)
    Image.fromarray(rgb).save(a / "color.jpg")
    Image.fromarray(rgb).convert("RGBA").save(a / "rgba.webp")
    Image.fromarray(rgb).convert("CMYK").save(a / "cmyk.TIFF")
    Image.fromarray(rgb).save(a / "nested" / "deeper" / "x.bmp")
    Image.fromarray(base[:5, :7]).save(a / "tiny.jpeg")                         # upsampled
    Image.fromarray(_gradient(1200, 1600).astype(np.uint8)).save(a / "large.tif")
    frames = [Image.fromarray(base), Image.fromarray(255 - base)]
    frames[0].save(a / "anim.gif", save_all=True, append_images=frames[1:])
    (a / ".hidden.png").write_bytes(b"not read")
    (a / "notes.txt").write_text("ignored")
    b = folder / "run"
    b.mkdir()
    for i in range(4):
        Image.fromarray(_gradient(50, 50, seed=i + 1).astype(np.uint8)).save(b / f"r{i}.png")
    # every file written above except the hidden one and the text file is a readable image
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix != ".txt")


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    path, _ = make_tiny_vavae_checkpoint(tmp_path_factory.mktemp("tok") / "vae.pt")
    return path


def run_stage1(data, out, tok, *extra):
    argv = ["--data_dir", str(data), "--vavae_path", str(tok), "--output_dir", str(out), "--image_size", "32",
            "--num_workers", "0", "--batch_size", "4", "--imagenet_stats", "none.pt", *extra]
    stage1.main(argv)
    return json.loads((out / "dataset.json").read_text())


def test_every_input_kind_and_outputs(tmp_path, tokenizer_path):
    n = make_all_kinds(tmp_path / "data")
    (tmp_path / "data" / "run" / "broken.png").write_bytes((tmp_path / "data" / "run" / "r0.png").read_bytes()[:60])
    info = run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--val_fraction", "0.25")
    assert info["num_images"] == n
    assert [c["name"] for c in info["classes"]] == ["run", "walk"]
    assert len(info["skipped"]) == 1 and info["skipped"][0]["path"].endswith("broken.png")
    assert info["color_mode"] == "rgb"  # the colour files make the set RGB
    assert any(f.endswith("x.bmp") for f in info["files"]) and not any("hidden" in f for f in info["files"])
    data = load_latents(tmp_path / "out")
    assert data["latents"].shape == (n, 32, 2, 2) and data["labels"].dtype == torch.int64
    assert data["split"].dtype == torch.uint8
    for name in ("latents_stats.pt", "stats_recommendation.txt", "stats_report.json", "reconstruction.png"):
        assert (tmp_path / "out" / name).is_file(), name
    report = json.loads((tmp_path / "out" / "stats_report.json").read_text())
    assert set(report["reconstruction"]["per_class"]) == {"run", "walk"}
    assert "could not be compared" in (tmp_path / "out" / "stats_recommendation.txt").read_text()


def test_latents_equal_direct_encoding_and_stats_exact(tmp_path, tokenizer_path):
    make_all_kinds(tmp_path / "data")
    run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path)
    data = load_latents(tmp_path / "out")
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    model = load_vavae(tokenizer_path)
    for row in (0, 5, len(info["files"]) - 1):
        x, _, _ = load_for_tokenizer(str(tmp_path / "data" / info["files"][row]), (32, 32))
        with torch.no_grad():
            direct = model.encode(x[None]).mean[0]
        torch.testing.assert_close(data["latents"][row], direct, atol=1e-5, rtol=1e-5)
    train = data["latents"][data["split"] == 0].double()
    stats = torch.load(tmp_path / "out" / "latents_stats.pt", weights_only=True)
    assert stats["mean"].shape == (1, 32, 1, 1)
    torch.testing.assert_close(stats["mean"].double().flatten(), train.mean(dim=(0, 2, 3)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats["std"].double().flatten(), train.std(dim=(0, 2, 3), unbiased=False),
                               atol=1e-6, rtol=1e-6)


def test_gray_in_gray_metadata_and_flip(tmp_path, tokenizer_path):
    d = tmp_path / "data" / "only"
    d.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(_gradient(30, 45, i).astype(np.uint8)).save(d / f"{i}.png")
    info = run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--flip", "time")
    assert info["color_mode"] == "gray" and info["flip"] == "time"
    assert info["original_sizes"][0] == [45, 30]
    data = load_latents(tmp_path / "out")
    assert "latents_flip" in data and not torch.equal(data["latents_flip"], data["latents"])


def test_warnings_for_enlarged_images_and_colour_with_the_demo_tokenizer(tmp_path, tokenizer_path):
    small, rgb = tmp_path / "small" / "a", tmp_path / "rgb" / "a"
    small.mkdir(parents=True)
    rgb.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_gradient(16, 16, i).astype(np.uint8)).save(small / f"{i}.png")
        base = _gradient(40, 40, i).astype(np.uint8)
        Image.fromarray(np.stack([base, base // 2, 255 - base], -1)).save(rgb / f"{i}.png")
    info = run_stage1(tmp_path / "small", tmp_path / "o1", tokenizer_path, "--image_size", "64")
    assert any("at most 16 px and is enlarged to 64x64" in w and "4x the latent tokens of --image_size 32" in w
               and "smooth ones do not" in w
               for w in info["warnings"]), info["warnings"]
    info = run_stage1(tmp_path / "small", tmp_path / "o0", tokenizer_path)   # 32 px: the smallest size already
    assert not any("enlarged" in w for w in info["warnings"])
    info = run_stage1(tmp_path / "rgb", tmp_path / "o2", tokenizer_path)             # 40 px -> 32: no warning
    assert not any("enlarged" in w or "demo tokenizer" in w for w in info["warnings"]), info["warnings"]
    info = run_stage1(tmp_path / "rgb", tmp_path / "o3", "demo")
    assert info["color_mode"] == "rgb" and any("demo tokenizer keeps no colour" in w for w in info["warnings"])


def test_default_decoding_workers_fit_the_machine():
    from pipeline.extract import ExtractSettings
    assert 1 <= ExtractSettings(data_dir=".").num_workers <= min(4, os.cpu_count() or 1)


def test_images_directly_in_data_dir_form_one_class(tmp_path):
    d = tmp_path / "walking"
    d.mkdir()
    Image.fromarray(_gradient(20, 20).astype(np.uint8)).save(d / "a.png")
    assert list(find_classes(str(d))) == ["walking"]


def test_split_is_deterministic_per_class():
    labels = [0] * 20 + [1] * 10
    a, b = split_indices(labels, 0.2, 3), split_indices(labels, 0.2, 3)
    assert np.array_equal(a, b) and a[:20].sum() == 4 and a[20:].sum() == 2
    assert not np.array_equal(a, split_indices(labels, 0.2, 4))
    assert split_indices(labels, 0.0, 3).sum() == 0


def test_recommendation_flips_with_the_data():
    imagenet = {"mean": torch.zeros(1, 4, 1, 1), "std": torch.ones(1, 4, 1, 1)}
    close = {"mean": torch.full((1, 4, 1, 1), 0.05), "std": torch.full((1, 4, 1, 1), 1.05)}
    far = {"mean": torch.full((1, 4, 1, 1), 2.0), "std": torch.full((1, 4, 1, 1), 0.3)}
    assert recommend(close, imagenet)["recommendation"] == "imagenet"
    report = recommend(far, imagenet)
    assert report["recommendation"] == "micro_doppler"
    text = format_recommendation(report)
    assert text.startswith("recommendation: micro_doppler\n") and "kl" in text and "rule:" in text


def test_recommendation_with_imagenet_stats_file(tmp_path, tokenizer_path):
    make_all_kinds(tmp_path / "data")
    torch.save({"mean": torch.zeros(1, 32, 1, 1), "std": torch.ones(1, 32, 1, 1) * 50}, tmp_path / "in.pt")
    stage1.main(["--data_dir", str(tmp_path / "data"), "--vavae_path", str(tokenizer_path), "--output_dir",
                 str(tmp_path / "out"), "--image_size", "32", "--num_workers", "0", "--imagenet_stats",
                 str(tmp_path / "in.pt")])
    assert (tmp_path / "out" / "latents_stats_imagenet.pt").is_file()
    first = (tmp_path / "out" / "stats_recommendation.txt").read_text().splitlines()[0]
    assert first == "recommendation: micro_doppler"  # std 50 shrinks the data to near-zero variance


def test_resume_after_interruption_and_settings_guard(tmp_path, tokenizer_path):
    make_all_kinds(tmp_path / "data")
    info = run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--shard_size", "4")
    shards = list_shards(tmp_path / "out")
    reference = load_latents(tmp_path / "out")
    # Simulate a run killed after two shards: later shards and the final files are missing.
    for k in list(shards)[2:]:
        os.unlink(shards[k])
    os.unlink(tmp_path / "out" / "dataset.json")
    info2 = run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--shard_size", "4")
    assert info2["files"] == info["files"]
    resumed = load_latents(tmp_path / "out")
    assert torch.equal(resumed["latents"], reference["latents"])
    with pytest.raises(UsageError, match=r"other settings \(resize stretch there, pad now\)"):
        run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--shard_size", "4", "--resize", "pad")
    run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--shard_size", "4", "--resize", "pad", "--overwrite")


def test_shard_of_only_unreadable_images(tmp_path, tokenizer_path):
    make_all_kinds(tmp_path / "data")
    (tmp_path / "data" / "run" / "aaa.png").write_bytes(b"broken")   # first file of the first class
    info = run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--shard_size", "1")
    assert len(list_shards(tmp_path / "out")) == info["num_images"] + 1
    assert info["skipped"][0]["path"].endswith("aaa.png")
    assert load_latents(tmp_path / "out")["latents"].shape[0] == info["num_images"]


def test_strict_stops_at_first_unreadable(tmp_path, tokenizer_path):
    make_all_kinds(tmp_path / "data")
    (tmp_path / "data" / "run" / "zzz.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UsageError, match="zzz.png"):
        run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--strict")


def _cli(*argv):
    return subprocess.run([sys.executable, "stage1_extract_features.py", *argv], cwd=ROOT, capture_output=True, text=True)


def _assert_one_line_error(code, stderr, argv, message):
    assert code == 2, (argv, stderr)
    assert message in stderr, (argv, stderr)
    assert "Traceback" not in stderr
    assert sum("error" in line for line in stderr.splitlines()) == 1  # one error line (argparse adds usage)


def test_bad_inputs_are_one_line_errors_with_exit_code_2(tmp_path, tokenizer_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "x.txt").write_text("no")
    (tmp_path / "arrays" / "a").mkdir(parents=True)
    np.save(tmp_path / "arrays" / "a" / "x.npy", np.zeros((4, 4), np.float32))
    good = tmp_path / "good" / "a"
    good.mkdir(parents=True)
    Image.fromarray(_gradient(20, 20).astype(np.uint8)).save(good / "a.png")
    marker = tmp_path / "pwned"
    import pickle
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Payload(str(marker)), f)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(tokenizer_path.read_bytes()[:1000])
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}}, tmp_path / "arch.pt")
    tail = ["--output_dir", str(tmp_path / "o"), "--num_workers", "0"]
    # the real process, end to end: a refused hostile tokenizer is one error line and exit code 2, no traceback
    argv = ["--data_dir", str(tmp_path / "good"), "--vavae_path", str(tmp_path / "evil.pt"), *tail]
    r = _cli(*argv)
    _assert_one_line_error(r.returncode, r.stderr, argv, "--trust_checkpoint")
    # the rest in this process, through run_cli as the script calls it (each subprocess costs a torch import)
    cases = [
        (["--data_dir", str(tmp_path / "missing")], "no such folder"),
        (["--data_dir", str(tmp_path / "empty")], "no images"),
        (["--data_dir", str(tmp_path / "noimg")], "without images: a"),
        (["--data_dir", str(tmp_path / "arrays")], "x.npy: numpy array, not an image: save it as a float TIFF"),
        (["--data_dir", str(tmp_path / "good"), "--vavae_path", str(tmp_path / "nope.pt")], "download.py"),
        (["--data_dir", str(tmp_path / "good"), "--vavae_path", str(tmp_path / "evil.pt")], "--trust_checkpoint"),
        (["--data_dir", str(tmp_path / "good"), "--vavae_path", str(trunc)], "truncated"),
        (["--data_dir", str(tmp_path / "good"), "--vavae_path", str(tmp_path / "arch.pt")], "missing"),
        (["--data_dir", str(tmp_path / "good"), "--image_size", "30"], "multiples of 16"),
        (["--data_dir", str(tmp_path / "good"), "--val_fraction", "1.5"], "fraction"),
        (["--data_dir", str(tmp_path / "good"), "--batch_size", "zero"], "positive integer"),
    ]
    for argv, message in cases:
        code, stderr = cli_error(stage1.main, [*argv, *tail], capsys)
        _assert_one_line_error(code, stderr, argv, message)
    assert not marker.exists()


def test_two_ranks_encode_disjoint_shards_and_match_one_process(tmp_path, tokenizer_path):
    make_all_kinds(tmp_path / "data")
    # --image_size auto: rank 0 decides (here 256: the largest image is 1600 px) and the other rank follows it
    run_stage1(tmp_path / "data", tmp_path / "one", tokenizer_path, "--shard_size", "3", "--image_size", "auto")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "stage1_extract_features.py", "--data_dir", str(tmp_path / "data"), "--vavae_path", str(tokenizer_path),
           "--output_dir", str(tmp_path / "two"), "--image_size", "auto", "--num_workers", "0", "--batch_size", "4",
           "--imagenet_stats", "none.pt", "--shard_size", "3"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    ranks = {os.path.basename(p).split("_")[1] for p in list_shards(tmp_path / "two").values()}
    assert ranks == {"rank00", "rank01"}
    a, b = load_latents(tmp_path / "one"), load_latents(tmp_path / "two")
    assert a["latents"].shape[-1] == 256 // 16
    torch.testing.assert_close(a["latents"], b["latents"])
    assert json.loads((tmp_path / "two" / "dataset.json").read_text())["files"] == \
        json.loads((tmp_path / "one" / "dataset.json").read_text())["files"]


def test_sizes_stage2_cannot_train_are_refused_before_encoding(tmp_path, tokenizer_path):
    d = tmp_path / "data" / "a"
    d.mkdir(parents=True)
    Image.fromarray(_gradient(20, 20).astype(np.uint8)).save(d / "a.png")
    with pytest.raises(UsageError, match=r"--image_size 64x128: stage 2 trains only square latents"):
        run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--image_size", "64x128")
    with pytest.raises(UsageError, match=r"--image_size 16: gives 1x1 latents .* too few tokens"):
        run_stage1(tmp_path / "data", tmp_path / "out", tokenizer_path, "--image_size", "16")
    assert not (tmp_path / "out").exists()   # refused before anything was written
