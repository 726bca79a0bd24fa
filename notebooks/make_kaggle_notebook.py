"""Write notebooks/kaggle_microdoppler.ipynb (nbformat 4) from the cells below: `python notebooks/make_kaggle_notebook.py`.

Edit the cells here, not in the .ipynb; tests/test_notebook.py checks that the two agree and runs every code
cell top to bottom in demo mode. The cells are plain Python (no `!` or `%` lines): a `run()` helper starts
the stages as subprocesses, shows their output as it comes and stops the notebook when one fails.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOK = os.path.join(HERE, "kaggle_microdoppler.ipynb")

CELLS = []


def md(cell_id, text):
    CELLS.append(("markdown", cell_id, text.strip("\n")))


def code(cell_id, text):
    CELLS.append(("code", cell_id, text.strip("\n")))


md("intro", r"""
# Radar micro-Doppler spectrograms with a latent diffusion model (Kaggle notebook)

This notebook runs the three stages of the project on your own spectrograms:

1. **stage 1** encodes every image with the VA-VAE tokenizer into 32-channel latents,
2. **stage 2** trains a class-conditional LightningDiT on them (within a time budget, resumable in a later session),
3. **stage 3** generates new spectrograms per class, evaluates them and packs them into one zip file.

**On Kaggle** (*File > Import Notebook*, then in the right-hand panel):

* *Add Input*: your data set, **one subfolder per class** (`walk/`, `run/`, ...), and the project's code (the
  repository uploaded as a data set, or set `REPO_URL` below to clone it);
* *Accelerator*: **GPU T4 x1 or x2** (the P100 is not supported by Kaggle's PyTorch build);
* the tokenizer weights: either turn *Internet* on (the notebook runs `python pretrained/download.py`) or attach
  `vavae-imagenet256-f16d32-dinov2.pt` and `latents_stats.pt` as a data set (found automatically).

Then edit the **parameters cell** (at least `DATA_DIR`) and *Run All*. Everything the notebook writes goes to
`/kaggle/working` (latents, the training run with its checkpoints, the generated images), which Kaggle keeps
as the notebook's output when you *Save Version*: see *Continue in a later session* below.

**Demo mode**: without a GPU (or with the environment variable `MICRODOPPLER_NOTEBOOK_DEMO=1`) the same cells run
a small offline demo on the CPU: simulated spectrograms of five activities, the training-free demo tokenizer
(`--vavae_path demo`) and `configs/demo_cpu.yaml`. Nothing is downloaded.
""")

code("parameters", r'''
# ---- Parameters: the only cell to edit -----------------------------------------------------------------------
import os, sys, time
NOTEBOOK_START = time.time()

# The project's code. None: $MICRODOPPLER_REPO, this folder and its parents, then /kaggle/input/* (a data set
# holding the repository). Or REPO_URL = "https://<your git host>/<you>/microdoppler-ldm.git" (Internet on).
REPO_DIR = None
REPO_URL = ""

DATA_DIR = "/kaggle/input/my-spectrograms"   # your data set: one subfolder per class
IMAGE_SIZE = "auto"   # stage 1 --image_size: auto (the smallest of own size, 192, 256 that keeps the classes) or N
# VA-VAE tokenizer. None: look for vavae-imagenet256-f16d32-dinov2.pt (and latents_stats.pt next to it) in
# /kaggle/input, else download both (python pretrained/download.py; HF_ENDPOINT / HF_TOKEN for a mirror).
VAVAE_PATH = None
IMAGENET_STATS = None

WORK_DIR = "/kaggle/working" if os.path.isdir("/kaggle/working") else os.path.abspath("microdoppler_work")
RUN_NAME = "exp1"                  # the run dir is WORK_DIR/runs/RUN_NAME; keep it to resume, change it for a new run
CONFIG = "configs/kaggle_b1.yaml"  # LightningDiT-B/1 for 16 GB T4s
SESSION_HOURS = 11.5               # Kaggle ends a GPU session after 12 h
RESERVE_HOURS = 1.0                # kept free for stage 3 and saving the outputs
TIME_BUDGET = None                 # stage 2 --time_budget, e.g. "10h"; None: SESSION_HOURS - RESERVE_HOURS - time used
MAX_STEPS = None                   # None: the config's epochs, stopped early by the held-out score
TRAIN_MORE_STEPS = None            # "Continue training" cell: None continues a run the budget stopped; N trains N more steps
PREVIOUS_SESSION = None            # a saved earlier session (its output attached as input); None: search /kaggle/input
NUM_PER_CLASS = 500                # images generated per class in stage 3
STAGE1_ARGS, STAGE2_ARGS, STAGE3_ARGS = [], [], []   # more flags, e.g. STAGE2_ARGS = ["--batch_size", "128"]
STAGE2_OVERRIDES = ["log.keep_last=2"]  # config key=value (two resumable checkpoints keep the output small)
DEVICE_ARGS = []                   # [] lets every stage pick the GPU
SIMULATE_PER_CLASS = None          # demo mode: simulate this many spectrograms per class instead of DATA_DIR
SIMULATE_ARGS = []                 # demo mode: more pipeline.simulate flags, e.g. ["--activities", "walking,running"]

# ---- Demo mode: no GPU, or MICRODOPPLER_NOTEBOOK_DEMO=1. Its scale can be set with MICRODOPPLER_NOTEBOOK_ + WORK,
# PER_CLASS, SIMULATE_ARGS, IMAGE_SIZE, TIME_BUDGET, STEPS, MORE_STEPS, NUM_PER_CLASS, STAGE2_OVERRIDES, STAGE3_ARGS
try:
    import torch
    NUM_GPUS = torch.cuda.device_count()
except ImportError:
    NUM_GPUS = 0
DEMO = os.environ.get("MICRODOPPLER_NOTEBOOK_DEMO", "0") == "1" or NUM_GPUS == 0
if DEMO:
    _env = lambda name, default: os.environ.get("MICRODOPPLER_NOTEBOOK_" + name) or default
    WORK_DIR = _env("WORK", WORK_DIR)
    SIMULATE_PER_CLASS = int(_env("PER_CLASS", 60))
    SIMULATE_ARGS = _env("SIMULATE_ARGS", "").split()
    DATA_DIR = os.path.join(WORK_DIR, "demo_data")
    IMAGE_SIZE = int(_env("IMAGE_SIZE", 128))
    VAVAE_PATH, IMAGENET_STATS = "demo", None
    CONFIG = "configs/demo_cpu.yaml"
    TIME_BUDGET = _env("TIME_BUDGET", "2m")   # a short "session": the continue cell below picks the run up again
    MAX_STEPS = _env("STEPS", None)
    TRAIN_MORE_STEPS = _env("MORE_STEPS", None)
    NUM_PER_CLASS = int(_env("NUM_PER_CLASS", 40))
    STAGE1_ARGS = ["--val_fraction", "0.2", "--num_workers", "0"]
    STAGE2_OVERRIDES = _env("STAGE2_OVERRIDES", "").split()
    STAGE3_ARGS = _env("STAGE3_ARGS", "").split()
    DEVICE_ARGS = ["--device", "cpu"]
    print("DEMO mode (CPU, simulated data, demo tokenizer):",
          "MICRODOPPLER_NOTEBOOK_DEMO=1" if NUM_GPUS else "no GPU found (turn on a GPU accelerator for your data)")
    NUM_GPUS = 0
else:
    print(f"real mode: {NUM_GPUS} GPU(s):", torch.cuda.get_device_name(0))
    if torch.cuda.get_device_capability(0) < (7, 0):
        print("warning: this GPU (a P100?) is not supported by Kaggle's PyTorch build: choose GPU T4 x1 or x2")
print("outputs in", WORK_DIR)
''')

code("setup", r'''
# ---- Set-up: the code, its dependencies and a few helpers (nothing to edit) ------------------------------------
import glob, importlib.util, json, re, shlex, shutil, signal, subprocess

def find_repo():
    """The project folder: REPO_DIR, $MICRODOPPLER_REPO, here or a parent, /kaggle/input/*, else a clone of REPO_URL."""
    is_repo = lambda d: d and os.path.isfile(os.path.join(d, "stage1_extract_features.py"))
    here = os.path.abspath(os.getcwd())
    candidates = [REPO_DIR, os.environ.get("MICRODOPPLER_REPO")]
    while True:
        candidates.append(here)
        if os.path.dirname(here) == here:
            break
        here = os.path.dirname(here)
    for depth in ("*", "*/*", "*/*/*"):
        candidates += [os.path.dirname(p) for p in sorted(glob.glob(f"/kaggle/input/{depth}/stage1_extract_features.py"))]
    found = next((os.path.abspath(d) for d in candidates if is_repo(d)), None)
    # outside /kaggle/working, so that the code and the 2.15 GB of weights do not become the notebook's output
    copy = "/tmp/microdoppler-ldm" if os.path.isdir("/kaggle/input") else os.path.join(WORK_DIR, "microdoppler-ldm")
    if found and found.startswith("/kaggle/input/"):
        # a data set is read-only: copy the code (not the weights) where pretrained/download.py can write
        shutil.copytree(found, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.pt", "*.safetensors", ".git"))
        found = copy
    if not found and REPO_URL:
        if not is_repo(copy):
            subprocess.run(["git", "clone", "--depth", "1", REPO_URL, copy], check=True)
        found = copy
    if not found:
        raise RuntimeError("the project's code was not found: attach the repository as a data set (Add Input), "
                           "set REPO_DIR to it, or set REPO_URL to clone it")
    return found

REPO_DIR = find_repo()
PY = sys.executable
with open(os.path.join(REPO_DIR, "requirements.txt")) as f:   # the runtime part, above "# Tests"
    needed = [re.split(r"[<>=!~\[;\s#]", line.strip())[0] for line in f.read().split("# Tests")[0].splitlines()
              if line.strip() and not line.startswith("#")]
module = {"pyyaml": "yaml", "pillow": "PIL"}
missing = [pkg for pkg in needed if importlib.util.find_spec(module.get(pkg.lower(), pkg)) is None]
if missing:   # Kaggle's image has all of them but omegaconf, perhaps; installing needs Internet on once
    subprocess.run([PY, "-m", "pip", "install", "-q", *missing], check=True)
print("code:", REPO_DIR, "| missing packages installed:" if missing else "", *missing)

LATENT_DIR = os.path.join(WORK_DIR, "latent_features")
RUN_DIR = os.path.join(WORK_DIR, "runs", RUN_NAME)
GEN_DIR = os.path.join(WORK_DIR, "generated")
os.makedirs(WORK_DIR, exist_ok=True)

def run(args):
    """Run one stage like a `!python ...` line (in the project folder), show its output as it comes, and stop
    the notebook with an error if it fails (a failing `!` line would not). Returns the output."""
    args = [str(a) for a in args]
    print("$ " + " ".join("python" if a == PY else shlex.quote(a) for a in args), flush=True)
    proc = subprocess.Popen(args, cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = []
    try:
        while True:
            chunk = proc.stdout.read1(65536).decode("utf-8", "replace")
            if not chunk:
                break
            out.append(chunk)
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:   # the notebook's stop button: stage 2 writes a checkpoint, then stops
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    if proc.wait():
        name = next((os.path.basename(a) for a in args if a.endswith(".py")), " ".join(args[1:3]))
        raise RuntimeError(f"{name} failed (exit code {proc.returncode}): see its output above")
    return "".join(out)

def show(*paths, width=900):
    """Show images inline (IPython) or print their paths; say which are missing."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
        inline = get_ipython() is not None
    except ImportError:
        inline = False
    for path in paths:
        if not os.path.isfile(path):
            print("(not written)", path)
            continue
        print(path)
        if inline:
            display(Image(filename=path, width=width))

sys.path.insert(0, REPO_DIR)   # the project's own reader of a run's checkpoints
from pipeline.checkpoint import latest_step as checkpoint_step   # step of checkpoints/latest, or None

def hours_left():
    """Hours left for training in this session (SESSION_HOURS - RESERVE_HOURS - time since the first cell)."""
    return SESSION_HOURS - RESERVE_HOURS - (time.time() - NOTEBOOK_START) / 3600

def find_input(pattern):
    """First file matching pattern one to three folders below /kaggle/input (attached data sets)."""
    for depth in ("*", "*/*", "*/*/*"):
        hits = sorted(glob.glob(f"/kaggle/input/{depth}/{pattern}"))
        if hits:
            return hits[0]
    return None
''')

md("data_md", r"""
## Data and tokenizer

Real mode: `DATA_DIR` must hold one subfolder per class. The tokenizer is taken from an attached data set when
one holds `vavae-imagenet256-f16d32-dinov2.pt`, else downloaded once into the code's `pretrained/` folder
(`python pretrained/download.py`: 2.15 GB through huggingface_hub; needs *Internet* on; it resumes a partial
download and checks each file's SHA-256). For a Hugging Face mirror set `HF_ENDPOINT`, and `HF_TOKEN` if it
needs a token, at the top of this cell (`os.environ["HF_ENDPOINT"] = "https://..."`). Demo mode simulates the
data instead.
""")

code("data", r'''
if SIMULATE_PER_CLASS:
    run([PY, "-m", "pipeline.simulate", "--out", DATA_DIR, "--per_class", SIMULATE_PER_CLASS, "--size", IMAGE_SIZE,
         "--seed", 0, *SIMULATE_ARGS])
if not os.path.isdir(DATA_DIR):
    raise RuntimeError(f"DATA_DIR {DATA_DIR} does not exist: attach your data set (Add Input) and set DATA_DIR")
print("classes:", sorted(d for d in os.listdir(DATA_DIR) if os.path.isdir(os.path.join(DATA_DIR, d))))

if VAVAE_PATH is None:
    VAVAE_PATH = find_input("vavae-imagenet256-f16d32-dinov2.pt")
    if VAVAE_PATH is None:
        VAVAE_PATH = os.path.join(REPO_DIR, "pretrained", "vavae-imagenet256-f16d32-dinov2.pt")
        if not os.path.isfile(VAVAE_PATH):
            run([PY, "pretrained/download.py"])
    if IMAGENET_STATS is None:
        stats = os.path.join(os.path.dirname(VAVAE_PATH), "latents_stats.pt")
        IMAGENET_STATS = stats if os.path.isfile(stats) else find_input("latents_stats.pt")
print("tokenizer:", VAVAE_PATH, "| ImageNet stats:", IMAGENET_STATS)
''')

md("previous_md", r"""
## Continue in a later session

A Kaggle session ends after 9-12 hours (see your account's limits), without warning. Stage 2 therefore
trains within a **time budget** (`--time_budget`, computed below from `SESSION_HOURS`) and then stops cleanly
with a checkpoint; SIGTERM writes one too. Everything needed to go on is in `/kaggle/working`:

* `runs/<RUN_NAME>/`: `checkpoints/NNNNNNN.pt` + `checkpoints/latest` (model, EMA, optimizer, grad scaler, step,
  data order, RNG, config, stats, held-out monitor: the run continues exactly where it stopped),
  `checkpoints/best.pt` (what stage 3 uses), `config.yaml`, `log.jsonl`, `loss.png`, `samples/`;
* `latent_features/`: stage 1's latents (the resumed run checks that they are the same ones);
* `generated/`: stage 3's images, `eval.json` and `generated.zip`.

**Keep them**: *Save Version* > *Save & Run All (Commit)* runs the notebook top to bottom in the background
and keeps `/kaggle/working` as that version's output. Or make a data set of the output (from the version's
*Output* tab, or with the Kaggle API: `kaggle datasets create -p <folder>`, later `kaggle datasets version`).
Where your account offers it, the notebook's *Persistence* setting (files) keeps `/kaggle/working` from one
interactive session to the next.

**Next session**: *Add Input* > your notebook's output (or that data set), then *Run All* with the same
parameters. The next cell finds `runs/<RUN_NAME>` in `/kaggle/input` (or takes `PREVIOUS_SESSION`), copies
the run dir and the latents back into `/kaggle/working`; stage 1 then finds its latents complete, and stage 2,
run with the same command and `--resume auto`, continues from `checkpoints/latest` (its first lines say
`resumed from ... at step N`). Keep `RUN_NAME`, the data and the config the same: a run dir holding another
config or other latents is refused (only the step limit, time budget, precision, logging and patience may change).
""")

code("previous", r'''
def previous_session():
    """The root of a saved session holding runs/RUN_NAME (PREVIOUS_SESSION, else the newest in /kaggle/input)."""
    if PREVIOUS_SESSION:
        return PREVIOUS_SESSION
    hits = [p[: -len(f"/runs/{RUN_NAME}/checkpoints/latest")] for depth in ("*", "*/*", "*/*/*")
            for p in glob.glob(f"/kaggle/input/{depth}/runs/{RUN_NAME}/checkpoints/latest")]
    return max(hits, key=lambda root: checkpoint_step(os.path.join(root, "runs", RUN_NAME)) or -1, default=None)

prev = previous_session()
prev_run = prev and os.path.join(prev, "runs", RUN_NAME)
if not prev:
    print("no earlier session found: stage 2 starts a new run in", RUN_DIR,
          "(or resumes one already there)" if checkpoint_step(RUN_DIR) is not None else "")
elif (checkpoint_step(RUN_DIR) or -1) >= (checkpoint_step(prev_run) or -1):
    print(f"{RUN_DIR} is already at step {checkpoint_step(RUN_DIR)}; {prev} is not newer")
else:
    print(f"restoring the run at step {checkpoint_step(prev_run)} from {prev}")
    shutil.copytree(prev_run, RUN_DIR, dirs_exist_ok=True)
    if os.path.isdir(os.path.join(prev, "latent_features")):
        shutil.copytree(os.path.join(prev, "latent_features"), LATENT_DIR, dirs_exist_ok=True)
''')

md("stage1_md", r"""
## Stage 1: encode

Writes `latent_features/` (see the README, *Outputs*). A rerun with the same settings keeps the complete shards
whose images are unchanged. Look at `reconstruction.png` (original | reconstruction | error per class): if fine
Doppler lines are lost there, the tokenizer cannot represent them and no diffusion model will generate them.
""")

code("stage1", r'''
cmd = [PY, "stage1_extract_features.py", "--data_dir", DATA_DIR, "--vavae_path", VAVAE_PATH,
       "--output_dir", LATENT_DIR, "--image_size", IMAGE_SIZE, *DEVICE_ARGS, *STAGE1_ARGS]
if IMAGENET_STATS:
    cmd += ["--imagenet_stats", IMAGENET_STATS]
run(cmd)
with open(os.path.join(LATENT_DIR, "stats_recommendation.txt")) as f:
    print(f.readline().strip())
show(os.path.join(LATENT_DIR, "reconstruction.png"))
''')

md("stage2_md", r"""
## Stage 2: train

`--resume auto`: with a checkpoint in the run dir (a restored earlier session, or this cell run again) training
continues from it. The budget stops training cleanly with a checkpoint before the session ends; held-out checks
keep the best step as `checkpoints/best.pt` and stop early when the score stops improving. With two GPUs the
run uses both (`torchrun`, DDP; `--batch_size` is global). `loss.png`: train loss, held-out loss and score,
the best step marked; `samples/step_*.png`: EMA samples, one row per class, the same noise at every step.
""")

code("stage2", r'''
def stage2_command(max_steps=None):
    """The stage 2 command of this run: the same in every session, so that --resume auto continues it."""
    budget = TIME_BUDGET or f"{max(hours_left(), 0.1):.2f}h"
    launcher = [PY, "-m", "torch.distributed.run", f"--nproc_per_node={NUM_GPUS}"] if NUM_GPUS > 1 else [PY]
    cmd = launcher + ["stage2_train_dit.py", "--latent_dir", LATENT_DIR, "--output_dir", RUN_DIR, "--config", CONFIG,
                      "--vavae_path", VAVAE_PATH, "--resume", "auto", "--time_budget", budget, *DEVICE_ARGS, *STAGE2_ARGS]
    if max_steps:
        cmd += ["--max_steps", max_steps]
    return cmd + STAGE2_OVERRIDES

def stopped_by_budget(output):
    return "stopped early (time budget reached)" in output or "stopped early (signal" in output

STAGE2_OUTPUT = run(stage2_command(MAX_STEPS))
print("latest checkpoint: step", checkpoint_step(RUN_DIR))
show(os.path.join(RUN_DIR, "loss.png"))
grids = sorted(glob.glob(os.path.join(RUN_DIR, "samples", "step_*.png")))
show(*sorted(set(grids[:1] + grids[-1:])))   # the first and the last sample grid
''')

md("save_md", r"""
## Save for the next session

Everything above already lives in `WORK_DIR` (`/kaggle/working` on Kaggle). This cell lists what a saved
version keeps and how far training got. Output files count against Kaggle's 20 GB limit for `/kaggle/working`:
`log.keep_last=2` (set in the parameters) keeps two resumable checkpoints besides `best.pt`.
""")

code("save", r'''
def size_mb(path):
    files = [path] if os.path.isfile(path) else glob.glob(os.path.join(path, "**", "*"), recursive=True)
    return sum(os.path.getsize(f) for f in files if os.path.isfile(f)) / 2 ** 20

for name in ("latent_features", os.path.join("runs", RUN_NAME), "generated"):
    path = os.path.join(WORK_DIR, name)
    if os.path.exists(path):
        print(f"{name:30s} {size_mb(path):10.1f} MB")
print(f"run {RUN_NAME}: latest checkpoint at step {checkpoint_step(RUN_DIR)}"
      + (" (stopped by the time budget: continue below or in the next session)" if stopped_by_budget(STAGE2_OUTPUT)
         else ""))
print("next session: attach this version's output (Add Input), keep RUN_NAME =", repr(RUN_NAME), "and Run All")
''')

md("continue_md", r"""
## Continue training

Runs stage 2 again with the same command (`--resume auto`, continuing from `checkpoints/latest`):

* `TRAIN_MORE_STEPS = None`: only if the budget stopped the run and this session has time left (otherwise save
  a version and run the notebook again in the next session, which continues in the stage 2 cell);
* `TRAIN_MORE_STEPS = N`: N more steps (`--max_steps` = current step + N) on top of a finished run. A run that
  stopped early on the held-out score stops again at the next check unless `STAGE2_ARGS` adds `--patience 0`.
""")

code("continue", r'''
step_before = checkpoint_step(RUN_DIR)
if TRAIN_MORE_STEPS is None and not stopped_by_budget(STAGE2_OUTPUT):
    print(f"stage 2 finished at step {step_before}: nothing to continue (set TRAIN_MORE_STEPS to train longer)")
elif TIME_BUDGET is None and hours_left() < 0.25:
    print(f"no training time left in this session: save a version now; the next session resumes at step {step_before}")
else:
    more = int(TRAIN_MORE_STEPS) if TRAIN_MORE_STEPS else None
    STAGE2_OUTPUT = run(stage2_command(step_before + more if more else MAX_STEPS))
    print(f"continued from step {step_before} to step {checkpoint_step(RUN_DIR)}")
    show(os.path.join(RUN_DIR, "loss.png"))
''')

md("stage3_md", r"""
## Stage 3: generate and evaluate

Uses the run's `checkpoints/best.pt` with the sampling settings stage 2 chose on held-out data. `--eval` writes
`eval.json` (and its plots); `--archive zip` packs every image into `generated.zip`, since Kaggle lets you download
only the first 500 output files one by one. `--overwrite` replaces this notebook's earlier images when the
model changed (stage 3 removes only files it wrote).
""")

code("stage3", r'''
run([PY, "stage3_inference.py", "--checkpoint", RUN_DIR, "--vavae_path", VAVAE_PATH, "--output_dir", GEN_DIR,
     "--num_per_class", NUM_PER_CLASS, "--archive", "zip", "--eval", "--overwrite", *DEVICE_ARGS, *STAGE3_ARGS])
''')

md("outputs_md", r"""
## Look at the results

`grid.png`: one row per class. `eval.json` (README, *Evaluation*): `generated_accuracy` near `real_accuracy` means
the samples are recognisably of their class; `tstr_accuracy` trains on generated images only and tests on real
held-out ones; `memorisation_fraction` should be near 0. Every PNG stage 3 wrote is shown below.
""")

code("outputs", r'''
with open(os.path.join(GEN_DIR, "eval.json")) as f:
    EVAL = json.load(f)
for key in ("real_accuracy", "generated_accuracy", "reconstruction_accuracy", "tstr_accuracy",
            "reconstruction_tstr_accuracy", "real_only_accuracy", "augmented_accuracy", "precision", "recall",
            "memorisation_fraction", "fd_classifier", "fd_latent"):
    if key in EVAL:
        value = EVAL[key]
        print(f"{key:28s} {value:.3f}" if isinstance(value, (int, float)) else f"{key:28s} {value}")
print("generated_accuracy per class:",
      {c: v.get("generated_accuracy") for c, v in sorted(EVAL.get("per_class", {}).items())})
pngs = sorted(glob.glob(os.path.join(GEN_DIR, "*.png")), key=lambda p: (os.path.basename(p) != "grid.png", p))
show(*pngs)
''')

md("archive_md", r"""
## Download

`generated/generated.zip` holds every generated image in one folder per class (with `samples.json` next to it
describing how each was made). On Kaggle it is also in the *Output* panel of the saved version.
""")

code("archive", r'''
ARCHIVE = os.path.join(GEN_DIR, "generated.zip")
print(f"{ARCHIVE} ({size_mb(ARCHIVE):.1f} MB)")
try:
    from IPython import get_ipython
    from IPython.display import FileLink, display
    if get_ipython() is not None:
        display(FileLink(os.path.relpath(ARCHIVE)))   # a link relative to the notebook's folder
except ImportError:
    pass
''')


def notebook():
    cells = []
    for kind, cell_id, text in CELLS:
        lines = text.split("\n")
        source = [line + "\n" for line in lines[:-1]] + [lines[-1]]
        cell = {"cell_type": kind, "id": cell_id, "metadata": {}, "source": source}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "kaggle": {"accelerator": "nvidiaTeslaT4", "isInternetEnabled": True, "language": "python",
                       "sourceType": "notebook", "isGpuEnabled": True},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render():
    return json.dumps(notebook(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    with open(NOTEBOOK, "w", encoding="utf-8") as f:
        f.write(render())
    print("wrote", NOTEBOOK, file=sys.stderr)
