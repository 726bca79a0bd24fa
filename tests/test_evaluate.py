"""Evaluation metrics where the truth is known."""

import os
import random
import shutil

import numpy as np
import pytest

import pipeline.evaluate as ev
from pipeline.images import find_classes, split_indices
from pipeline.simulate import simulate_dataset


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    simulate_dataset(base / "real", 24, size=64, seed=11)
    classes = find_classes(str(base / "real"))
    names = list(classes)
    files = [p for n in names for p in classes[n]]
    labels = [c for c, n in enumerate(names) for _ in classes[n]]
    split = split_indices(labels, 0.2, 0)   # the split evaluate() makes of a folder tree (seed 0)
    return base, names, files, labels, split


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "CACHE_DIR", str(tmp_path / "cache"))


def _tree(root, items):
    for name, path in items:
        os.makedirs(root / name, exist_ok=True)
        shutil.copy(path, root / name / os.path.basename(path))
    return root


def test_held_out_as_generated_scores_perfectly(tmp_path, real):
    base, names, files, labels, split = real
    gen = _tree(tmp_path / "gen", [(names[lab], f) for f, lab, s in zip(files, labels, split) if s])
    r = ev.evaluate(str(base / "real"), str(gen), str(tmp_path / "eval.json"), vavae_path="demo")
    assert r["fd_classifier"] < 1e-3 and r["fd_latent"] < 1e-3
    assert r["precision_latent"] == 1.0 and r["recall_latent"] == 1.0
    assert "reconstruction_accuracy" not in r   # a folder tree has no stage 1 latents to decode
    assert r["precision"] == 1.0 and r["recall"] == 1.0
    assert r["real_accuracy"] >= 0.8 and r["generated_accuracy"] == r["real_accuracy"]
    assert r["memorisation_fraction"] < 0.2
    for key in ("tstr_accuracy", "real_only_accuracy", "augmented_accuracy", "num_real", "num_generated", "per_class"):
        assert key in r
    assert (tmp_path / "eval.png").is_file() and (tmp_path / "memorisation.png").is_file()


def test_copies_of_training_images_are_flagged(tmp_path, real):
    base, names, files, labels, split = real
    gen = _tree(tmp_path / "gen", [(names[lab], f) for f, lab, s in zip(files, labels, split) if not s][:40])
    r = ev.evaluate(str(base / "real"), str(gen), str(tmp_path / "eval.json"))
    assert r["memorisation_fraction"] == 1.0


def test_shuffled_class_folders_give_chance_accuracy(tmp_path, real):
    base, names, files, labels, split = real
    rng = random.Random(0)
    gen = _tree(tmp_path / "gen", [(rng.choice(names), f) for f in files])
    r = ev.evaluate(str(base / "real"), str(gen), str(tmp_path / "eval.json"))
    assert r["real_accuracy"] >= 0.8
    assert r["generated_accuracy"] < 0.4   # chance is 0.2 with five classes


def test_missing_class_lowers_its_recall(tmp_path, real):
    base, names, files, labels, split = real
    gen = _tree(tmp_path / "gen", [(names[lab], f) for f, lab, s in zip(files, labels, split) if s and lab != 0])
    r = ev.evaluate(str(base / "real"), str(gen), str(tmp_path / "eval.json"), vavae_path="demo")
    assert r["per_class"][names[0]]["recall"] == 0.0
    assert r["recall_latent"] < 1.0 and r["fd_latent"] > 0.01   # 1.0 and ~0 with every class present
    assert min(r["per_class"][n]["recall"] for n in names[1:]) > 0.5
    # 1.0 with every class present; how much lower depends on how far the classifier's features put the
    # missing class's held-out images from the other classes' samples (0.92 here, 1/5 of them are that class)
    assert r["recall"] < 1.0


def test_deterministic_for_a_fixed_seed_and_stage1_dir_as_real(tmp_path, real):
    base, names, files, labels, split = real
    import stage1_extract_features as stage1
    stage1.main(["--data_dir", str(base / "real"), "--vavae_path", "demo", "--output_dir", str(tmp_path / "lat"),
                 "--image_size", "64", "--num_workers", "0", "--val_fraction", "0.25", "--recon_images", "0"])
    info = __import__("json").loads((tmp_path / "lat" / "dataset.json").read_text())
    assert sum(c["heldout"] for c in info["classes"]) == 30
    gen = _tree(tmp_path / "gen", [(names[lab], f) for f, lab in zip(files, labels)][::4])
    a = ev.evaluate(str(tmp_path / "lat"), str(gen), str(tmp_path / "a.json"), seed=1)
    ev.CACHE_DIR = str(tmp_path / "other_cache")   # no cache: the classifier is retrained, same result
    ev.evaluate(str(tmp_path / "lat"), str(gen), str(tmp_path / "b.json"), seed=1)
    assert a["num_real"] == 30 and a["num_real_train"] == 90
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(0)
    import torch
    a = torch.tensor(rng.standard_normal((4000, 3)))
    b = torch.tensor(rng.standard_normal((4000, 3)) * 2 + 1)
    # N(0, I) vs N(1, 4I): |mu|^2 = 3, trace term = 3 * (1 + 4 - 2*2) = 3
    assert abs(ev.frechet_distance(a, b) - 6.0) < 0.4


def _recoloured(root, files, labels, names, paint):
    """Copies of real images as class folders, each pixel painted by paint(gray uint8 (H, W)) -> uint8 image."""
    from PIL import Image
    out = []
    for f, lab in zip(files, labels):
        os.makedirs(root / names[lab], exist_ok=True)
        path = root / names[lab] / (os.path.splitext(os.path.basename(f))[0] + ".png")
        Image.fromarray(paint(np.asarray(Image.open(f).convert("L")))).save(path)
        out.append(str(path))
    return out


def _jet(gray):
    from pipeline.colormaps import apply_colormap
    return (apply_colormap(gray / 255.0, "jet") * 255).round().astype(np.uint8)


def test_color_gray_on_colour_data_evaluates_in_gray(tmp_path, real):
    """--color gray on jet data: stage 3 writes luminance, and the real side is compared as luminance too."""
    import json
    from PIL import Image
    import stage1_extract_features as stage1
    from pipeline.latents import load_latents
    base, names, files, labels, split = real
    _recoloured(tmp_path / "jet", files, labels, names, _jet)
    stage1.main(["--data_dir", str(tmp_path / "jet"), "--vavae_path", "demo", "--output_dir", str(tmp_path / "lat"),
                 "--image_size", "64", "--num_workers", "0", "--val_fraction", "0.25", "--recon_images", "0",
                 "--color", "gray"])
    info = json.loads((tmp_path / "lat" / "dataset.json").read_text())
    assert info["color_mode"] == "gray" and info["colormap"] is None
    held = load_latents(tmp_path / "lat")["split"].numpy().astype(bool)
    gen = tmp_path / "gen"
    for rel, h in zip(info["files"], held):
        if h:   # what stage 3 writes in gray mode: one channel
            os.makedirs(gen / os.path.dirname(rel), exist_ok=True)
            Image.open(tmp_path / "jet" / rel).convert("L").save(gen / rel)
    r = ev.evaluate(str(tmp_path / "lat"), str(gen), str(tmp_path / "eval.json"))
    assert r["preprocessing"]["color"] == "gray"
    assert r["real_accuracy"] >= 0.8 and r["generated_accuracy"] == r["real_accuracy"]   # not chance (0.2)


def test_colour_map_run_evaluates_outputs_on_its_map_and_refuses_a_mismatch(tmp_path, real):
    base, names, files, labels, split = real
    jet = _recoloured(tmp_path / "jet", files, labels, names, _jet)
    # folder tree of jet images: detected, inverted; generated images drawn on jet are inverted alike
    gen = _tree(tmp_path / "gen", [(names[lab], f) for f, lab, s in zip(jet, labels, split) if s])
    r = ev.evaluate(str(tmp_path / "jet"), str(gen), str(tmp_path / "eval.json"))
    assert r["preprocessing"]["colormap"] == "jet" and r["preprocessing"]["color_mode"] == "gray"
    assert r["generated_accuracy"] == r["real_accuracy"] >= 0.8 and r["fd_classifier"] < 1e-3
    # colour on no map (real) against gray generated images: no number, one line naming the way out
    odd = _recoloured(tmp_path / "odd", files, labels, names,
                      lambda g: np.stack([g, 255 - g, (g // 3 + 80).astype(np.uint8)], axis=-1))
    gray_gen = _recoloured(tmp_path / "gray_gen", [f for f, s in zip(files, split) if s],
                           [lab for lab, s in zip(labels, split) if s], names, lambda g: g)
    with pytest.raises(ev.UsageError, match="are gray but the real images are colour.*--color gray"):
        ev.evaluate(str(tmp_path / "odd"), str(tmp_path / "gray_gen"), str(tmp_path / "x.json"))
    assert len(odd) > len(gray_gen) > 0
    with pytest.raises(SystemExit) as stop:
        ev.main(["--real", str(tmp_path / "odd"), "--generated", str(tmp_path / "gray_gen"), "--out",
                 str(tmp_path / "x.json")])
    assert stop.value.code == 2
    # gray real images against colour generated ones that are on no map: refused the other way round
    with pytest.raises(ev.UsageError, match="are colour but the real images are gray"):
        ev.evaluate(str(base / "real"), str(tmp_path / "odd"), str(tmp_path / "y.json"))


def test_round_trips_take_the_generated_images_path(tmp_path):
    """round_trips() writes the decoded real latents as stage 3 writes its images and reads them back as
    generated images: a smooth image comes back close to itself and in its class folder; a tokenizer that
    loses everything gives flat grey."""
    import torch
    from models.vavae import load_vavae
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    x = (0.5 + 0.4 * torch.sin(3 * xx) * torch.cos(2 * yy)).expand(2, 3, 64, 64).clone()
    demo = load_vavae("demo", device=torch.device("cpu"))
    prep = dict(color="auto", colormap=None, value_range=None, color_mode="gray", real_colour=False)
    rec, labels = ev.round_trips(demo, demo.encode(x * 2 - 1).mean, torch.tensor([1, 0]), ["a", "b"], prep,
                                 str(tmp_path / "rt"))
    assert sorted(os.listdir(tmp_path / "rt")) == ["a", "b"] and labels.tolist() == [0, 1]   # read back by folder
    assert rec.shape == x.shape and (rec - x[[1, 0]]).abs().mean() < 0.02
    assert torch.equal(rec[:, 0], rec[:, 1])

    class Lossy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("unused", torch.zeros(1))

        def decode(self, z):
            return torch.zeros(z.shape[0], 3, z.shape[2] * 16, z.shape[3] * 16)

    lost, _ = ev.round_trips(Lossy(), torch.zeros(2, 4, 4, 4), torch.tensor([0, 1]), ["a", "b"], prep,
                             str(tmp_path / "lost"))
    assert torch.allclose(lost, torch.full_like(x, 128 / 255))   # mid grey, through 8 bits as stage 3 writes it


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory, real):
    base = real[0]
    out = tmp_path_factory.mktemp("stage1") / "lat"
    import stage1_extract_features as stage1
    stage1.main(["--data_dir", str(base / "real"), "--vavae_path", "demo", "--output_dir", str(out),
                 "--image_size", "64", "--num_workers", "0", "--val_fraction", "0.25", "--recon_images", "0"])
    return out


def test_tokenizer_references_come_from_the_stage1_latents(tmp_path, real, stage1_dir):
    """With a stage 1 dir as --real the references are computed from its own latents (a folder tree has none:
    test_held_out_as_generated_scores_perfectly)."""
    base, names, files, labels, split = real
    gen = _tree(tmp_path / "gen", [(names[lab], f) for f, lab in zip(files, labels)][::4])
    r = ev.evaluate(str(stage1_dir), str(gen), str(tmp_path / "a.json"), vavae_path="demo")
    assert r["reconstruction_accuracy"] >= 0.6 and r["reconstruction_tstr_accuracy"] >= 0.6   # chance: 0.2


def test_accuracies_are_means_over_classifier_seeds(tmp_path, real, stage1_dir, monkeypatch):
    """Two classifier seeds give the mean of what each seed gives alone, and their spread."""
    base, names, files, labels, split = real
    gen = _tree(tmp_path / "gen", [(names[lab], f) for f, lab in zip(files, labels)][1::3])
    alone = [ev.evaluate(str(stage1_dir), str(gen), str(tmp_path / f"s{s}.json"), seed=s) for s in (0, 1)]
    monkeypatch.setenv("MICRODOPPLER_CLASSIFIER_SEEDS", "2")
    both = ev.evaluate(str(stage1_dir), str(gen), str(tmp_path / "both.json"))
    assert both["classifier_seeds"] == 2 and alone[0]["classifier_seeds"] == 1
    for key in ("real_accuracy", "generated_accuracy", "tstr_accuracy", "augmented_accuracy"):
        values = [a[key] for a in alone]
        assert abs(both[key] - sum(values) / 2) < 1e-6
        assert abs(both["accuracy_spread"][key] - abs(values[0] - values[1])) < 1e-6
    monkeypatch.setenv("MICRODOPPLER_CLASSIFIER_SEEDS", "0")
    with pytest.raises(ev.UsageError, match="MICRODOPPLER_CLASSIFIER_SEEDS=0"):
        ev.evaluate(str(stage1_dir), str(gen), str(tmp_path / "bad.json"))


@pytest.mark.parametrize("argv,message", [
    (["--real", "nowhere", "--generated", "nowhere"], "no such folder"),
])
def test_evaluate_cli_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        ev.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_memorisation_ratio_is_distance_over_local_spacing():
    import torch
    torch.manual_seed(0)
    train = torch.randn(50, 3, 4, 4)
    gen = torch.cat([train[:5] + 0.01 * torch.randn(5, 3, 4, 4), torch.randn(20, 3, 4, 4)])
    ratio, which = ev.memorisation(gen, train)
    d = torch.cdist(train.flatten(1), train.flatten(1))
    d.fill_diagonal_(float("inf"))
    expected = torch.cdist(gen.flatten(1), train.flatten(1)).min(dim=1).values / d.min(dim=1).values[which]
    torch.testing.assert_close(ratio, expected)   # computed on the needed rows only, same as the full matrix
    assert (ratio[:5] < 0.05).all() and which[:5].tolist() == list(range(5)) and (ratio[5:] > 0.5).all()
