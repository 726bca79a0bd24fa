"""
Quality benchmark: does generated data help a classifier on small, hard sets?

Runs the real pipeline (stage 1 -> stage 2 -> stage 3 --eval, each a subprocess of the real script)
on every set and prints one row per set, appends one JSON line per set to bench/quality_results.jsonl
and ends with a markdown table for bench/RESULTS.md.

    python bench/quality.py [--sets sim_hard_a,sim_hard_b,measured:NAME|measured:*] [--measured_root /work/data/measured]
                            [--work bench/out/quality] [--config configs/demo_cpu.yaml] [--extra_stage2 "..."]
                            [--extra_stage3 "..."] [--num_per_class N] [--draws N] [--image_size auto|N] [--tag NAME]

Sets: `sim_<suite>` is a simulated suite of pipeline.simulate.SUITES (e.g. sim_hard_a), written fresh
each run; `measured:NAME` is the class-folder tree --measured_root/NAME; `measured:*` is every such
folder (none there: a message, and the simulated sets still run). Each set starts from an empty work
dir, so stage 2 always trains from scratch and times are comparable. The evaluation classifier cache
is private to the set's work dir for the same reason.

Targets (issue 12): generated_accuracy >= 0.9 x real_accuracy, tstr >= 0.8 x real_only,
augmented >= real_only, memorisation_fraction <= 1 %, and at most 10 minutes per set for the pipeline as a user
runs it: stage 1 + stage 2 + the first stage 3 draw (whose evaluation starts from an empty classifier cache, as a
first run does; further draws only measure the noise and reuse the real-image classifiers).

Draws: stage 3 runs --draws times (default 2) on the same trained run, with sampling seeds seed, seed + 1, ...
(each draw's evaluation classifiers follow its seed), and every metric is the mean over the draws; each draw's
own numbers are kept in the record (`draws`) and its ratios printed. One draw of 100 images per class moves tstr
by up to +-0.03 on the measured sets (bench/RESULTS.md), as much as most changes to the generator.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.inference import GenerateSettings  # noqa: E402 - after the path setup

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MIN_HELDOUT = 6          # held-out real images per class the evaluation needs to mean anything
DEFAULT_SETS = "sim_hard_a,sim_hard_b,measured:*"


# --------------------------------------------------------------------------------
#                                  Targets
# --------------------------------------------------------------------------------

def derived(m):
    """Ratios and differences the targets are stated in (None where a metric is missing)."""
    def ratio(a, b):
        return None if a is None or not b else a / b
    real, gen, tstr = m.get("real_accuracy"), m.get("generated_accuracy"), m.get("tstr_accuracy")
    only, aug = m.get("real_only_accuracy"), m.get("augmented_accuracy")
    return dict(generated_over_real=ratio(gen, real), tstr_over_real_only=ratio(tstr, only),
                augmented_minus_real_only=None if aug is None or only is None else aug - only)


def mean_metrics(draws):
    """The mean over draws (a list of eval.json dicts) of every top-level number they all have."""
    keys = [k for k, v in draws[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and all(isinstance(m.get(k), (int, float)) for m in draws)]
    return {k: sum(m[k] for m in draws) / len(draws) for k in keys}


MAX_PIPELINE_S = 600     # stage 1 + stage 2 + one stage 3 draw


def targets(m, d, times):
    """{target: met?} for the five issue-12 targets."""
    mem = m.get("memorisation_fraction")
    return {"generated >= 0.9 real": d["generated_over_real"] is not None and d["generated_over_real"] >= 0.9,
            "tstr >= 0.8 real_only": d["tstr_over_real_only"] is not None and d["tstr_over_real_only"] >= 0.8,
            "augmented >= real_only": d["augmented_minus_real_only"] is not None and d["augmented_minus_real_only"] >= 0,
            "memorisation <= 1%": mem is not None and mem <= 0.01,
            "pipeline <= 10 min": times.get("pipeline") is not None and times["pipeline"] <= MAX_PIPELINE_S}


# --------------------------------------------------------------------------------
#                                   Sets
# --------------------------------------------------------------------------------

def class_counts(data_dir):
    """{class folder: number of images below it} for the class folders of a data dir."""
    counts = {}
    for name in sorted(os.listdir(data_dir)):
        full = os.path.join(data_dir, name)
        if os.path.isdir(full) and not name.startswith("."):
            n = sum(f.lower().endswith(IMAGE_EXT) for _, _, files in os.walk(full) for f in files)
            if n:
                counts[name] = n
    return counts


def expand_sets(spec, measured_root):
    """Set names from --sets; `measured:*` becomes every class-folder set under measured_root.
    Returns (names, notes) where notes explain what was skipped."""
    names, notes = [], []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "measured:*":
            if not os.path.isdir(measured_root):
                notes.append(f"no measured sets: {measured_root} does not exist (measured:* skipped)")
                continue
            found = [d for d in sorted(os.listdir(measured_root))
                     if os.path.isdir(os.path.join(measured_root, d)) and class_counts(os.path.join(measured_root, d))]
            if not found:
                notes.append(f"no measured sets: {measured_root} has no class-folder sets (measured:* skipped)")
            names += [f"measured:{d}" for d in found if f"measured:{d}" not in names]
        elif item not in names:
            names.append(item)
    return names, notes


def prepare_set(name, measured_root, set_dir, seed):
    """Data dir and a description of set `name`: simulates `sim_<suite>` into set_dir/data, or
    points at measured_root/<name>. Raises ValueError with a clear message when it cannot."""
    from pipeline import simulate
    if name.startswith("sim_"):
        suite = name[len("sim_"):]
        if suite not in simulate.SUITES:
            raise ValueError(f"unknown simulated set {name!r}; choose from "
                             f"{', '.join('sim_' + s for s in simulate.SUITES)}")
        data = os.path.join(set_dir, "data")
        s = simulate.simulate_suite(suite, data, seed=seed)
        return data, dict(kind="simulated", suite=suite, seed=seed, description=s.description)
    if name.startswith("measured:"):
        data = os.path.join(measured_root, name[len("measured:"):])
        if not os.path.isdir(data):
            raise ValueError(f"measured set {name!r}: {data} does not exist (see bench/MEASURED_DATA.md; "
                             f"bench/convert_measured.py creates the sets under {measured_root})")
        if not class_counts(data):
            raise ValueError(f"measured set {name!r}: {data} has no class folders with images")
        desc = dict(kind="measured", path=data)
        manifest = os.path.join(data, "manifest.json")
        if os.path.isfile(manifest):   # recorded so a result line says where the data came from
            try:
                info = json.load(open(manifest))
                desc.update({k: info[k] for k in ("source", "licence_ok", "licence") if k in info})
            except (OSError, ValueError):
                pass
        return data, desc
    raise ValueError(f"set {name!r}: expected sim_<suite> or measured:<name>")


def heldout_fraction(counts, base=0.25):
    """Stage 1 --val_fraction: `base`, raised so the smallest class keeps MIN_HELDOUT held-out images
    (stage 1 holds out round(f x n) per class); at most 0.5, so half stays for training."""
    smallest = min(counts.values())
    if round(base * smallest) >= MIN_HELDOUT:
        return base
    return min(0.5, math.ceil(MIN_HELDOUT / smallest * 1000) / 1000)


# --------------------------------------------------------------------------------
#                                 Running
# --------------------------------------------------------------------------------

def run_stage(label, cmd, log_path, env):
    """Run one stage script; its output goes to log_path. Returns wall seconds; raises RuntimeError
    with the log's tail when it fails."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = open(log_path).read().strip().splitlines()[-8:]
        raise RuntimeError(f"{label} failed (exit code {rc}, log {log_path}):\n    " + "\n    ".join(tail))
    return seconds


def draw_dir(d, i):
    """Stage 3's output dir of draw i (0: `generated`, as a user's first run)."""
    return os.path.join(d, "generated" if i == 0 else f"generated_draw{i}")


def stage_commands(args, data, d, val_fraction, draw=0):
    """The three stage command lines for one set (work dir d); stage 3's for `draw` (seed args.seed + draw)."""
    py = sys.executable
    s1 = [py, "stage1_extract_features.py", "--data_dir", data, "--vavae_path", "demo",
          "--image_size", args.image_size,
          "--num_workers", "0", "--device", "cpu", "--val_fraction", str(val_fraction), "--seed", str(args.seed),
          "--output_dir", os.path.join(d, "latents")]
    s2 = [py, "stage2_train_dit.py", "--latent_dir", os.path.join(d, "latents"), "--output_dir", os.path.join(d, "run"),
          "--config", args.config, "--vavae_path", "demo", "--device", "cpu"] + shlex.split(args.extra_stage2)
    s3 = [py, "stage3_inference.py", "--checkpoint", os.path.join(d, "run"), "--vavae_path", "demo",
          "--output_dir", draw_dir(d, draw), "--num_per_class", str(args.num_per_class), "--eval",
          "--device", "cpu", "--seed", str(args.seed + draw)] + shlex.split(args.extra_stage3)
    return s1, s2, s3


def run_set(name, args):
    """Everything for one set; returns the result record (also when a stage failed: `error`)."""
    d = os.path.abspath(os.path.join(args.work, args.tag, name.replace(":", "_")))
    shutil.rmtree(d, ignore_errors=True)     # a fresh run dir: stage 2 must train from scratch
    os.makedirs(d)
    env = dict(os.environ, MICRODOPPLER_CACHE=os.path.join(d, "cache"), PYTHONUNBUFFERED="1")
    if args.threads:
        # On a CPU shared with other work, more threads than free cores make OpenMP's barriers wait for
        # descheduled threads: a Tiny/2 step measured 0.7 s with 1 thread and 4.4 s with 2 at load 5.
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rec = dict(set=name, work_dir=d, times={})
    try:
        t0 = time.perf_counter()
        data, rec["definition"] = prepare_set(name, args.measured_root, d, args.seed)
        rec["times"]["data"] = time.perf_counter() - t0
        counts = class_counts(data)
        rec["classes"] = counts
        rec["val_fraction"] = vf = heldout_fraction(counts)
        s1, s2, _ = stage_commands(args, data, d, vf)
        stage3_draws = [(f"stage3 draw {i}" if i else "stage3", stage_commands(args, data, d, vf, i)[2])
                        for i in range(args.draws)]
        rec["commands"] = [" ".join(shlex.quote(c) for c in cmd[1:]) for cmd in (s1, s2, stage3_draws[0][1])]
        for label, cmd in (("stage1", s1), ("stage2", s2), *stage3_draws):
            print(f"  [{name}] {label} ...", flush=True)
            rec["times"][label] = run_stage(label, cmd, os.path.join(d, f"{label.replace(' ', '_')}.log"), env)
            print(f"  [{name}] {label} {rec['times'][label]:.0f} s", flush=True)
        # before "stage3" (the first draw's label) becomes the sum over the draws
        rec["times"]["pipeline"] = sum(rec["times"][s] for s in ("stage1", "stage2", stage3_draws[0][0]))
        rec["times"]["stage3"] = sum(rec["times"][label] for label, _ in stage3_draws)
        rec["times"]["total"] = sum(rec["times"][s] for s in ("stage1", "stage2", "stage3"))
        draws = [json.load(open(os.path.join(draw_dir(d, i), "eval.json"))) for i in range(args.draws)]
        metrics = mean_metrics(draws)
        rec["heldout_per_class"] = {c: v.get("num_real") for c, v in draws[0].get("per_class", {}).items()}
        rec["metrics"] = metrics
        rec["draws"] = [dict(seed=args.seed + i, metrics={k: v for k, v in m.items() if k in metrics},
                             derived=derived(m)) for i, m in enumerate(draws)]
        rec["derived"] = derived(metrics)
        rec["targets"] = targets(metrics, rec["derived"], rec["times"])
        rec["stage2_steps"] = _trained_steps(os.path.join(d, "run"))
        rec["image_size"] = json.load(open(os.path.join(d, "latents", "dataset.json")))["image_size"][0]
        used = json.load(open(os.path.join(d, "generated", "samples.json")))["settings"]
        rec["sampling"] = {k: used.get(k, 0.0 if k == "start_t" else None)
                           for k in ("cfg_scale", "cfg_interval_start", "start_t", "num_steps", "method")}
    except (ValueError, RuntimeError) as e:
        rec["error"] = str(e)
    return rec


def _trained_steps(run_dir):
    """(steps trained, step of best.pt) from the run's log.jsonl and best checkpoint; None where unknown."""
    import torch
    try:
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            steps = max(json.loads(line)["step"] for line in f if line.strip())
    except (OSError, ValueError):
        steps = None
    best = os.path.join(run_dir, "checkpoints", "best.pt")
    best_step = int(torch.load(best, map_location="cpu", weights_only=True)["step"]) if os.path.isfile(best) else None
    return dict(trained=steps, best=best_step)


# --------------------------------------------------------------------------------
#                                 Reporting
# --------------------------------------------------------------------------------

def provenance(args):
    """Date, machine, git commit (with a dirty flag: the tree may hold uncommitted changes) and tag."""
    def git(*a):
        try:
            # --no-optional-locks: never rewrite the index of a repository others are working in
            return subprocess.run(["git", "--no-optional-locks", *a], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    import torch
    return dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                             cpu_count=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                             loadavg_at_start=[round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
                             niceness=os.nice(0) if hasattr(os, "nice") else None),
                commit=git("rev-parse", "--short", "HEAD"), dirty=bool(git("status", "--porcelain")), code_root=ROOT,
                tag=args.tag, config=args.config, image_size=args.image_size, extra_stage2=args.extra_stage2,
                extra_stage3=args.extra_stage3,
                num_per_class=args.num_per_class, draws=args.draws, seed=args.seed, threads=args.threads or None)


def _f(x, fmt="{:.3f}"):
    return "-" if x is None else fmt.format(x)


COLUMNS = ["set", "px", "real", "gen (÷real)", "tstr", "real_only", "tstr÷real_only", "aug (−real_only)", "precision",
           "recall", "memorised", "targets met", "each draw: gen÷real / tstr÷real_only", "cfg, start_t", "s1 s",
           "s2 s", "s3 s", "pipeline s", "total s"]


def table_row(rec):
    """One markdown table row for a result record."""
    if "error" in rec:
        return f"| {rec['set']} | failed: {rec['error'].splitlines()[0]} |" + " |" * (len(COLUMNS) - 2)
    m, d, t = rec["metrics"], rec["derived"], rec["times"]
    met = [k for k, ok in rec["targets"].items() if ok]
    return "| " + " | ".join([
        rec["set"], str(rec.get("image_size", "-")), _f(m.get("real_accuracy")),
        f"{_f(m.get('generated_accuracy'))} ({_f(d['generated_over_real'], '{:.2f}')})",
        _f(m.get("tstr_accuracy")), _f(m.get("real_only_accuracy")), _f(d["tstr_over_real_only"], "{:.2f}"),
        f"{_f(m.get('augmented_accuracy'))} ({_f(d['augmented_minus_real_only'], '{:+.3f}')})",
        _f(m.get("precision")), _f(m.get("recall")), _f(m.get("memorisation_fraction")),
        f"{len(met)}/{len(rec['targets'])}",
        ", ".join(f"{_f(x['derived']['generated_over_real'], '{:.2f}')} / "
                  f"{_f(x['derived']['tstr_over_real_only'], '{:.2f}')}" for x in rec.get("draws", [])),
        "{:g}/{:g}, {:g}".format(*(rec["sampling"][k] for k in ("cfg_scale", "cfg_interval_start", "start_t"))),
        *(f"{t[s]:.0f}" for s in ("stage1", "stage2", "stage3", "pipeline", "total"))]) + " |"


def markdown(records, prov):
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
    threads = f", {prov['threads']} thread(s) per stage" if prov["threads"] else ""
    title = (f"Quality benchmark, tag `{prov['tag']}`, commit {prov['commit']}{' (+uncommitted changes)' if prov['dirty'] else ''}, "
             f"{prov['date'][:10]}, {prov['machine']['cpu_count']} CPUs ({prov['machine']['processor']}), "
             f"config {prov['config']}{(' ' + prov['extra_stage2']) if prov['extra_stage2'] else ''}, "
             f"--image_size {prov['image_size']}, "
             f"{prov['num_per_class']} generated per class, means over {prov['draws']} draw(s)" + threads)
    return "\n".join([title, "", head] + [table_row(r) for r in records])


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------------
#                                    CLI
# --------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--sets", default=DEFAULT_SETS, help=f"comma-separated (default {DEFAULT_SETS})")
    p.add_argument("--measured_root", default="/work/data/measured", help="folder of measured class-folder sets")
    p.add_argument("--work", default=os.path.join("bench", "out", "quality"), help="work dir (tag/set below it)")
    p.add_argument("--config", default=os.path.join("configs", "demo_cpu.yaml"), help="stage 2 --config")
    p.add_argument("--image_size", default="auto",
                   help="stage 1 --image_size: auto (stage 1's default; the size each set got is the table's px "
                        "column), or N to force one size (bench/RESULTS.md, twelfth session)")
    p.add_argument("--extra_stage2", default="", help="extra stage 2 arguments, one string")
    p.add_argument("--extra_stage3", default="", help="extra stage 3 arguments, one string")
    p.add_argument("--num_per_class", type=int, default=None,
                   help=f"generated images per class (default: stage 3's own, {GenerateSettings.num_per_class})")
    p.add_argument("--draws", type=int, default=2,
                   help="stage 3 runs per set (sampling seeds seed, seed + 1, ...); metrics are their means")
    p.add_argument("--seed", type=int, default=0, help="simulation, split and sampling seed")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per stage (OMP_NUM_THREADS); 0: the library default (all cores)")
    p.add_argument("--tag", default="run", help="name of this measurement (e.g. baseline)")
    p.add_argument("--results", default=os.path.join("bench", "quality_results.jsonl"), help="JSON lines appended here")
    args = p.parse_args(argv)
    if args.draws < 1:
        p.error(f"--draws {args.draws}: at least one draw")
    if args.num_per_class is None:   # what a user gets from stage 3 without the flag
        args.num_per_class = GenerateSettings.num_per_class
    args.work = os.path.abspath(args.work)
    args.results = os.path.abspath(args.results)

    sets, notes = expand_sets(args.sets, args.measured_root)
    for n in notes:
        print(n, flush=True)
    if not sets:
        print("nothing to run", file=sys.stderr)
        return 2
    prov = provenance(args)
    print(f"quality benchmark: {', '.join(sets)} (tag {args.tag}, commit {prov['commit']}"
          f"{', uncommitted changes' if prov['dirty'] else ''})", flush=True)
    records = []
    for name in sets:
        print(f"== {name}", flush=True)
        rec = run_set(name, args)
        records.append(rec)
        if "error" in rec:
            print(f"  [{name}] {rec['error']}", flush=True)
        with open(args.results, "a") as f:   # one line per set, written as soon as it is done
            f.write(json.dumps(_json_safe({**prov, **rec})) + "\n")
        print(markdown([rec], prov).splitlines()[-1], flush=True)
    print("\n" + markdown(records, prov))
    print(f"\nresults appended to {os.path.relpath(args.results)}")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
