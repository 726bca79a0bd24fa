"""notebooks/kaggle_microdoppler.ipynb: valid nbformat 4, in sync with its generator, and every code cell run top
to bottom in one namespace (as Jupyter would) in demo mode at toy scale: stages 1-3, a resumed training, outputs.
This is also the pipeline's end-to-end test: simulate, stage 1, stage 2 (resumed), stage 3 --eval, the stand-alone
evaluator and the demo summary on the same folders."""

import json
import re
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "kaggle_microdoppler.ipynb"


def load_notebook():
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def test_notebook_is_valid_nbformat4_and_matches_its_generator():
    nb = load_notebook()
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    ids = [cell["id"] for cell in nb["cells"]]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids)
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["metadata"], dict)
        assert isinstance(cell["source"], list) and all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None   # saved without outputs
            # plain Python: no IPython `!`/`%` lines, so exec() below runs exactly what Jupyter runs
            assert not [line for line in cell["source"] if line.lstrip().startswith(("!", "%"))]
    assert nb["cells"][1]["id"] == "parameters"
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_kaggle_notebook", ROOT / "notebooks" / "make_kaggle_notebook.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.render() == NOTEBOOK.read_text(encoding="utf-8"), \
        "the notebook differs from notebooks/make_kaggle_notebook.py: run that script"


def test_run_helper_stops_the_notebook_when_a_stage_fails(tmp_path, monkeypatch, capsys):
    """Unlike a `!python ...` line, a failing stage raises, so Run All stops there (and the test below fails)."""
    import sys
    monkeypatch.setenv("MICRODOPPLER_NOTEBOOK_DEMO", "1")
    monkeypatch.setenv("MICRODOPPLER_NOTEBOOK_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("MICRODOPPLER_REPO", str(ROOT))
    monkeypatch.chdir(tmp_path)
    ns = {}
    for cell in load_notebook()["cells"][:3]:   # intro, parameters, set-up
        if cell["cell_type"] == "code":
            exec("".join(cell["source"]), ns)
    assert ns["run"]([sys.executable, "-c", "print('fine')"]) == "fine\n"
    with pytest.raises(RuntimeError, match="exit code 3"):
        ns["run"]([sys.executable, "-c", "print('broken'); raise SystemExit(3)"])
    assert "broken" in capsys.readouterr().out


# Toy scale (35 s of CPU time): 3 classes of 10 spectrograms of 64 px, 20 steps, then 10 more in the continue
# cell, a cheap held-out monitor, 4 images per class with Euler 4 steps.
TOY_ENV = {
    "MICRODOPPLER_NOTEBOOK_DEMO": "1",
    "MICRODOPPLER_NOTEBOOK_PER_CLASS": "10",
    "MICRODOPPLER_NOTEBOOK_SIMULATE_ARGS": "--activities walking,running,boxing",
    "MICRODOPPLER_NOTEBOOK_IMAGE_SIZE": "64",
    "MICRODOPPLER_NOTEBOOK_STEPS": "20",
    "MICRODOPPLER_NOTEBOOK_MORE_STEPS": "10",
    "MICRODOPPLER_NOTEBOOK_NUM_PER_CLASS": "4",
    "MICRODOPPLER_NOTEBOOK_TIME_BUDGET": "10m",
    "MICRODOPPLER_NOTEBOOK_STAGE2_OVERRIDES": "train.batch_size=16 log.log_every=10 log.sample_every=10 "
                                             "monitor.every=10 monitor.samples_per_class=4 monitor.num_steps=2 "
                                             "monitor.patience=0 monitor.tune_sampling=false sample.num_steps=4",
    "MICRODOPPLER_NOTEBOOK_STAGE3_ARGS": "--steps 4 --method euler",
}


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_in_demo_mode(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    for key, value in TOY_ENV.items():
        monkeypatch.setenv(key, value)
    # one thread per stage: these toy models gain nothing from more, and a CPU shared with other jobs loses a lot
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MICRODOPPLER_NOTEBOOK_WORK", str(work))
    monkeypatch.setenv("MICRODOPPLER_REPO", str(ROOT))
    monkeypatch.setenv("MICRODOPPLER_CACHE", str(tmp_path / "cache"))   # the evaluation's classifier cache
    monkeypatch.chdir(tmp_path)
    ns = {"__name__": "__main__"}
    for cell in load_notebook()["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            exec(compile("".join(cell["source"]), f"<notebook cell {cell['id']}>", "exec"), ns)
        except Exception as e:   # any failing cell fails the test, named
            raise AssertionError(f"notebook cell {cell['id']!r} failed: {type(e).__name__}: {e}") from e
    out = capsys.readouterr().out

    assert ns["DEMO"] and ns["VAVAE_PATH"] == "demo" and ns["CONFIG"] == "configs/demo_cpu.yaml"
    assert ns["WORK_DIR"] == str(work) and ns["REPO_DIR"] == str(ROOT)
    classes = sorted(p.name for p in (work / "demo_data").iterdir())
    assert classes == ["boxing", "running", "walking"]
    # stage 1
    assert (work / "latent_features" / "reconstruction.png").is_file()
    # stage 2, then the continue cell resumed the run from its checkpoint at step 20 and went on to 30
    run_dir = work / "runs" / "exp1"
    assert (run_dir / "loss.png").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "samples" / "step_0000030.png").is_file()
    assert f"resumed from {run_dir}/checkpoints/0000020.pt at step 20" in out
    assert "continued from step 20 to step 30" in out and ns["checkpoint_step"](str(run_dir)) == 30
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert max(steps) == 30
    # stage 3: images for every class, the evaluation, the archive
    gen = work / "generated"
    samples = json.loads((gen / "samples.json").read_text())
    assert samples["complete"] and sorted(samples["classes"]) == classes
    for name in classes:
        assert len(samples["images"][name]) == 4
        assert all((gen / item["file"]).is_file() for item in samples["images"][name])
    result = json.loads((gen / "eval.json").read_text())
    assert result["num_generated"] == 4 * len(classes) and result["num_real"] == 2 * len(classes)
    # every class folder of the output was read under its own label: the per-class rows add up to the totals
    per_class = result["per_class"]
    assert set(per_class) == set(classes) and all(c["num_generated"] == 4 for c in per_class.values())
    assert sum(c["generated_accuracy"] * 4 for c in per_class.values()) / result["num_generated"] == \
        pytest.approx(result["generated_accuracy"])
    assert result["fd_classifier"] > 0 and result["fd_latent"] > 0   # 30 steps cannot reproduce held-out images
    for key in ("reconstruction_accuracy", "reconstruction_tstr_accuracy"):   # the demo tokenizer's references (--eval)
        assert 0.0 <= result[key] <= 1.0, key
    # stage 3 --eval and the stand-alone evaluator give the same report for the same folders
    import pipeline.evaluate as ev
    monkeypatch.setattr(ev, "CACHE_DIR", str(tmp_path / "cache"))
    alone = ev.evaluate(str(work / "latent_features"), str(gen), str(tmp_path / "alone.json"), vavae_path="demo")
    for key in ("real_accuracy", "generated_accuracy", "tstr_accuracy", "augmented_accuracy", "precision", "recall",
                "memorisation_fraction", "fd_classifier", "fd_latent", "reconstruction_accuracy",
                "reconstruction_tstr_accuracy"):
        assert alone[key] == pytest.approx(result[key]), key
    # the offline demo's summary grid from the same folders
    from pipeline import demo
    demo.main(["--real", str(work / "demo_data"), "--generated", str(gen), "--out", str(tmp_path / "demo")])
    assert (tmp_path / "demo" / "grid.png").is_file() and "generated_accuracy" in capsys.readouterr().out
    with zipfile.ZipFile(gen / "generated.zip") as z:
        assert len([n for n in z.namelist() if n.endswith(".png")]) == 4 * len(classes)
    # the output cells named what they show (no IPython here: paths are printed)
    for path in (work / "latent_features" / "reconstruction.png", run_dir / "loss.png", gen / "grid.png",
                 gen / "generated.zip"):
        assert str(path) in out, path
    assert "generated_accuracy" in out
