"""Redraw the README's example pictures (docs/*_example.png) from a small real CPU run of the whole pipeline:
simulated spectrograms, stage 1 with the demo tokenizer, a short stage 2, stage 3 --eval and the demo grid
(four columns, to keep the file small). About 15 minutes on 2 busy CPU cores.

    python docs/make_plot_examples.py
"""

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import stage1_extract_features as stage1  # noqa: E402
import stage2_train_dit as stage2  # noqa: E402
import stage3_inference as stage3  # noqa: E402
from pipeline import demo  # noqa: E402
from pipeline import evaluate  # noqa: E402
from pipeline.simulate import simulate_dataset  # noqa: E402


def main():
    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        evaluate.CACHE_DIR = str(tmp / "cache")   # the classifier of this throw-away data set is not kept
        simulate_dataset(tmp / "data", 20, size=64, seed=5)
        stage1.main(["--data_dir", str(tmp / "data"), "--vavae_path", "demo", "--image_size", "64",
                     "--output_dir", str(tmp / "lat"), "--val_fraction", "0.2", "--num_workers", "0"])
        stage2.main(["--latent_dir", str(tmp / "lat"), "--output_dir", str(tmp / "run"), "--config",
                     "configs/demo_cpu.yaml", "--max_steps", "400", "--vavae_path", "demo", "--sample_every", "400",
                     "--log_every", "20", "monitor.every=40", "monitor.samples_per_class=8", "monitor.patience=0"])
        stage3.main(["--checkpoint", str(tmp / "run"), "--vavae_path", "demo", "--output_dir", str(tmp / "gen"),
                     "--num_per_class", "8", "--eval", "--preset", "fast"])
        demo.real_vs_generated_grid(tmp / "data", tmp / "gen", docs / "grid_example.png", per_row=4)
        shutil.copyfile(tmp / "run" / "loss.png", docs / "loss_example.png")
        shutil.copyfile(tmp / "gen" / "eval.png", docs / "eval_example.png")
        print("docs/loss_example.png, docs/eval_example.png, docs/grid_example.png")


if __name__ == "__main__":
    main()
