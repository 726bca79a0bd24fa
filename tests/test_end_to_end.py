"""The demo pipeline end to end at toy scale: simulate, stage 1, stage 2, stage 3 --eval, demo summary."""

import json

import pytest

import pipeline.evaluate as ev
import stage1_extract_features as stage1
import stage2_train_dit as stage2
import stage3_inference as stage3
from pipeline import demo
from pipeline.simulate import ACTIVITIES, simulate_dataset


def test_simulate_encode_train_generate_evaluate(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ev, "CACHE_DIR", str(tmp_path / "cache"))
    simulate_dataset(tmp_path / "data", 10, size=64, seed=5)
    stage1.main(["--data_dir", str(tmp_path / "data"), "--vavae_path", "demo", "--image_size", "64",
                 "--output_dir", str(tmp_path / "lat"), "--val_fraction", "0.2", "--num_workers", "0"])
    stage2.main(["--latent_dir", str(tmp_path / "lat"), "--output_dir", str(tmp_path / "run"), "--config",
                 "configs/demo_cpu.yaml", "--max_steps", "30", "--vavae_path", "demo", "--sample_every", "30",
                 # the demo's held-out monitor, at toy scale: 2 checks of 8 samples per class, then the sampling choice
                 "monitor.every=15", "monitor.samples_per_class=8"])
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "run" / "samples" / "step_0000030.png").is_file()   # decoded grid
    stage3.main(["--checkpoint", str(tmp_path / "run"), "--vavae_path", "demo", "--output_dir", str(tmp_path / "gen"),
                 "--num_per_class", "4", "--eval", "--preset", "fast"])
    result = json.loads((tmp_path / "gen" / "eval.json").read_text())
    assert result["num_generated"] == 4 * len(ACTIVITIES) and result["num_real"] == 2 * len(ACTIVITIES)
    # every class folder of the output was read under its own label: the per-class rows add up to the totals
    per_class = result["per_class"]
    assert set(per_class) == set(ACTIVITIES) and all(c["num_generated"] == 4 for c in per_class.values())
    assert sum(c["generated_accuracy"] * 4 for c in per_class.values()) / result["num_generated"] == \
        pytest.approx(result["generated_accuracy"])
    assert result["fd_classifier"] > 0 and result["fd_latent"] > 0   # 30 steps cannot reproduce held-out images
    assert "reconstruction_accuracy" in result                         # the demo tokenizer's ceiling (--eval)
    # stage 3 --eval and the stand-alone evaluator give the same report for the same folders
    alone = ev.evaluate(str(tmp_path / "lat"), str(tmp_path / "gen"), str(tmp_path / "alone.json"), vavae_path="demo")
    for key in ("real_accuracy", "generated_accuracy", "tstr_accuracy", "augmented_accuracy", "precision", "recall",
                "memorisation_fraction", "fd_classifier", "fd_latent", "reconstruction_accuracy"):
        assert alone[key] == pytest.approx(result[key]), key
    samples = json.loads((tmp_path / "gen" / "samples.json").read_text())
    assert samples["settings"]["method"] == "heun" and samples["settings"]["num_steps"] == 16
    demo.main(["--real", str(tmp_path / "data"), "--generated", str(tmp_path / "gen"), "--out", str(tmp_path)])
    assert (tmp_path / "grid.png").is_file() and "generated_accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--real", "nowhere", "--generated", "nowhere"], "no such folder"),
])
def test_evaluate_cli_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        ev.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
