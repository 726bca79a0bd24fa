"""Stage 2's held-out monitor: the score, best.pt, early stop, resume of the best-so-far, run length, augmentation."""

import json

import pytest
import torch

import stage2_train_dit as stage2
from pipeline.checkpoint import latest_checkpoint
from pipeline.copies import REDRAW_RATIO, copy_ratios_against, copy_share, latent_copy_ratios
from pipeline.generate import REDRAW_STEP, sample_jobs
from pipeline.heldout import (GUIDANCE_GRID, START_GRID, HeldoutSet, choose_start, fit_projection,
                              guidance_strength, heldout_score, latent_features, project, tune_sampling)
from pipeline.train import batch_indices, resolve_max_steps, time_shift, update_monitor, new_monitor
from tests.helpers import stage2_args


def _two_classes(n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2 * n, 4, 4, 4, generator=g)
    z[n:] += shift
    return z, torch.tensor([0] * n + [1] * n)


# ---- the score -----------------------------------------------------------------------------------------

def test_score_prefers_samples_from_the_heldout_distribution():
    train, train_y = _two_classes(40, 2.0, 0)
    held, held_y = _two_classes(20, 2.0, 1)
    projection = fit_projection(latent_features(train))
    train_features = project(latent_features(train), projection)
    good, good_y = _two_classes(30, 2.0, 2)
    swapped = heldout_score(good, 1 - good_y, held, held_y, projection, 2)       # right images, wrong classes
    collapsed = heldout_score(good[:1].repeat(60, 1, 1, 1) + 0.01 * torch.randn(60, 4, 4, 4), good_y, held, held_y,
                              projection, 2)                                     # one mode only
    right = heldout_score(good, good_y, held, held_y, projection, 2, train=(train_features, train_y))
    atypical_y = good_y.clone()
    atypical_y[::3] = 1 - atypical_y[::3]             # a third of the samples look like the other class
    atypical = heldout_score(good, atypical_y, held, held_y, projection, 2, train=(train_features, train_y))
    assert right["tstr"] >= 0.9 and swapped["tstr"] <= 0.1
    # guidance is chosen with recognisability too: samples that do not look like their class count against it
    assert right["recognised"] >= 0.9 and atypical["recognised"] < 0.75
    assert right["score"] < swapped["score"] and right["score"] < collapsed["score"]
    assert right["fd"] < collapsed["fd"]


def test_tune_sampling_picks_the_weakest_guidance_that_is_recognised_nearly_as_often_as_the_best():
    base = dict(num_steps=4, method="euler", cfg_scale=2.0, cfg_interval_start=0.0, timestep_shift=0)

    def saturating(s):   # recognisability rises with guidance strength and saturates at 0.72; fd grows with it
        strength = guidance_strength(s)
        return dict(recognised=min(0.72, 0.3 + 0.2 * strength), score=1.0 + strength)

    best, tried = tune_sampling(saturating, base)
    assert len(tried) == len(GUIDANCE_GRID)
    # within the margin of 0.72 from strength 1.85 on: the weakest such grid setting is cfg 3 on the whole path
    # (strength 2, recognised 0.7), not cfg 4 from t = 0.3 (2.1) nor the fully saturated cfg 4, 5 or 6
    assert (best["cfg_scale"], best["cfg_interval_start"]) == (3.0, 0.0)
    flat, _ = tune_sampling(lambda s: dict(recognised=0.5, score=abs(s["cfg_scale"] - 1.5)), base)
    assert flat["cfg_scale"] == 1.0      # guidance that recognises nothing more is not used
    spiky, _ = tune_sampling(lambda s: dict(recognised=1.0 if s["cfg_scale"] == 6.0 else 0.5, score=0.0), base)
    assert spiky["cfg_scale"] == 6.0     # only the strongest setting is recognised: it is chosen


def test_choose_start_walks_down_to_the_largest_start_within_the_limit():
    asked = []

    def copies(start):   # the share of copies rises with the start: too many to redraw from 0.3 on
        asked.append(start)
        return {0.25: 0.1, 0.3: 0.3, 0.35: 0.5, 0.4: 0.7}.get(start, 0.0)

    start, tried = choose_start(copies)
    assert start == 0.25 and [s for s, _ in tried] == asked == [0.4, 0.35, 0.3, 0.25]
    start, tried = choose_start(lambda s: 0.0)
    assert start == max(START_GRID) and len(tried) == 1                  # the usual case: one start sampled
    assert choose_start(lambda s: 0.3)[0] == 0.0             # even the first start has too many: pure noise
    assert choose_start(lambda s: 0.25)[0] == max(START_GRID)              # stage 3 may redraw 25 % by default
    assert choose_start(lambda s: 0.006, limit=0.0)[0] == 0.0              # a limit of none allows none


def test_memorised_fraction_counts_variations_that_copy_their_source():
    train, train_y = _two_classes(20, 3.0, 0)
    held, held_y = _two_classes(5, 3.0, 1)
    heldout = HeldoutSet(train, train_y, held, held_y, 2)

    sampling = dict(num_steps=2, method="euler", cfg_scale=1.0, cfg_interval_start=0.0, timestep_shift=0.0)
    share = {s: heldout.memorised_fraction(Still(), dict(sampling, start_t=s), 10, 0, [4, 4, 4], "cpu")
             for s in (0.0, 0.5, 0.95)}
    assert share[0.0] == 0.0 and share[0.95] == 1.0 and share[0.0] <= share[0.5] <= share[0.95]


class Still(torch.nn.Module):
    """Velocity 0: a variation stays where it starts, s * source + (1 - s) * noise."""
    num_classes = 2

    def forward(self, x, t, y):
        return torch.zeros_like(x)


def test_stage3_redraws_copies_from_an_earlier_start_and_each_image_depends_only_on_its_own_seed():
    train, train_y = _two_classes(10, 3.0, 0)
    by_class = [train[train_y == c] for c in (0, 1)]
    sampling = dict(num_steps=2, method="euler", cfg_scale=1.0, cfg_interval_start=0.0, timestep_shift=0.0,
                    start_t=0.6)
    jobs = [(c, k) for c in (0, 1) for k in range(12)]
    scale = torch.ones(4)
    kept, none = sample_jobs(Still(), jobs, 0, [4, 4, 4], sampling, "cpu", by_class=by_class)
    ratios_fn = copy_ratios_against(train, scale)
    z, redraws = sample_jobs(Still(), jobs, 0, [4, 4, 4], sampling, "cpu", by_class=by_class, copy_ratios=ratios_fn)
    assert (none == 0).all() and (latent_copy_ratios(kept, train, scale) < REDRAW_RATIO).sum() >= 12
    assert (redraws > 0).sum() >= 12                                  # at start 0.6 most variations are copies
    last = round(0.6 / REDRAW_STEP)                                   # the draw that starts from pure noise
    ratios = latent_copy_ratios(z, train, scale)
    assert ((ratios >= REDRAW_RATIO) | (redraws == last)).all()       # no copy left but (rarely) a pure-noise one
    assert torch.equal(z[redraws == 0], kept[redraws == 0])           # images that were no copy are unchanged
    # a redrawn image is its own seed's draw at its start: the same alone, in another batch, or in another order
    for i in (redraws > 0).nonzero().flatten().tolist()[:3] + [0]:
        alone, again = sample_jobs(Still(), [jobs[i]], 0, [4, 4, 4], sampling, "cpu", by_class=by_class,
                                   copy_ratios=ratios_fn)
        assert torch.allclose(alone[0], z[i], atol=1e-6) and again[0] == redraws[i]


def test_copies_are_judged_on_the_tokenizer_scale_not_the_normalised_one():
    """A variation that keeps its source's coarse channel and redraws the faint detail channel is a copy in the
    image, although on unit-variance latents the redrawn detail makes it look new."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(30, 2, 4, 4, generator=g)                   # normalised: both channels unit variance
    redrawn = train.clone()
    redrawn[:, 1] = torch.randn(30, 4, 4, generator=g)             # the detail channel drawn anew
    scale = torch.tensor([5.0, 0.05])                              # the std each channel was normalised with
    assert copy_share(redrawn, train, torch.ones(1)) == 0.0        # normalised latents: nothing looks copied
    assert copy_share(redrawn, train, scale) == 1.0                # the tokenizer's scale: every one is a copy
    fresh = torch.randn(30, 2, 4, 4, generator=g)
    assert copy_share(fresh, train, scale) == 0.0                  # new samples are new on either scale


def test_update_monitor_marks_the_turn_once():
    m = new_monitor()
    assert update_monitor(m, 2, 5.0) == (True, False)
    assert update_monitor(m, 4, 3.0) == (True, False)
    assert update_monitor(m, 6, 4.0) == (False, True)
    assert update_monitor(m, 8, 6.0) == (False, False)
    assert m == dict(best_score=3.0, best_step=4, checks_since_best=2, turned_at=6)


# ---- best.pt, early stop and resume in a real run (scores scripted) ----------------------------------------

def _scripted(monkeypatch, scores):
    it = iter(scores)
    monkeypatch.setattr(HeldoutSet, "score_model", lambda self, *a, **k: dict(score=next(it), fd=0.0, tstr=0.0))


def _args(latent_dir, run, steps):
    return stage2_args(latent_dir, run, "monitor.every=2", "monitor.patience=2", "monitor.tune_sampling=false",
                       "--ckpt_every", "2", steps=steps)


def test_a_run_whose_heldout_signal_turns_keeps_the_earlier_checkpoint_and_stops(tmp_path, latent_dir, monkeypatch,
                                                                                 capsys):
    _scripted(monkeypatch, [5.0, 3.0, 4.0, 6.0, 1.0])
    stage2.main(_args(latent_dir, tmp_path / "run", steps=20))
    out = capsys.readouterr().out
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    latest = torch.load(latest_checkpoint(tmp_path / "run"), weights_only=True)
    at_4 = torch.load(tmp_path / "run" / "checkpoints" / "0000004.pt", weights_only=True) \
        if (tmp_path / "run" / "checkpoints" / "0000004.pt").exists() else None
    assert best["step"] == 4 and latest["step"] == 8                      # stopped after 2 checks without progress
    assert "held-out score turned (worse than step 4 by 33.3%)" in out and "early stop" in out   # scores 3 -> 4
    assert latest["monitor"]["best_step"] == 4 and best["opt"] is None
    if at_4 is not None:
        assert all(torch.equal(best["ema"][k], at_4["ema"][k]) for k in best["ema"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["heldout_score"] for r in rows if "heldout_score" in r] == [5.0, 3.0, 4.0, 6.0]
    assert (tmp_path / "run" / "loss.png").is_file()


def test_resume_keeps_the_best_so_far(tmp_path, latent_dir, monkeypatch):
    _scripted(monkeypatch, [5.0, 3.0, 4.0])
    stage2.main(_args(latent_dir, tmp_path / "run", steps=6))
    _scripted(monkeypatch, [3.5])                                     # better than 5 but not than 3 (the best so far)
    stage2.main(_args(latent_dir, tmp_path / "run", steps=8))
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    latest = torch.load(latest_checkpoint(tmp_path / "run"), weights_only=True)
    assert best["step"] == 4 and latest["step"] == 8
    assert latest["monitor"] == dict(best_score=3.0, best_step=4, checks_since_best=2, turned_at=6)


# ---- run length and augmentation -----------------------------------------------------------------------------

def test_run_length_follows_the_data_set():
    t = dict(max_steps=None, epochs=100, batch_size=64, min_steps=200, max_steps_cap=5000)
    assert resolve_max_steps(t, 640) == 1000
    assert resolve_max_steps(t, 64) == 200 and resolve_max_steps(t, 64000) == 5000
    assert resolve_max_steps(dict(t, max_steps=7), 640) == 7


def test_time_shift_is_stateless_and_only_moves_along_time():
    x = torch.randn(8, 4, 4, 6)
    a, b = time_shift(x, 0.5, 0, 3, 0), time_shift(x, 0.5, 0, 3, 0)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert torch.allclose(a.sum(-1), x.sum(-1), atol=1e-5)               # a roll along time keeps every row's sum
    assert torch.equal(time_shift(x, 0.0, 0, 3, 0), x)
    assert torch.equal(batch_indices(0, 5, 0, 10, 4), batch_indices(0, 5, 0, 10, 4))


def test_a_run_from_before_start_t_gets_one_when_resumed(tmp_path, latent_dir):
    args = stage2_args(latent_dir, tmp_path / "run", "monitor.every=5", steps=10)
    stage2.main(args)
    for path in (latest_checkpoint(tmp_path / "run"), tmp_path / "run" / "checkpoints" / "best.pt"):
        ckpt = torch.load(path, weights_only=True)
        del ckpt["sampling"]["start_t"]    # as stage 2 wrote it before variations existed
        torch.save(ckpt, path)
    stage2.main(args)                      # nothing left to train: only the sampling choice is completed
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    assert best["sampling"]["start_t"] in (0.0, *START_GRID) and best["sampling"]["step"] == best["step"]


def test_a_guidance_choice_at_chance_level_is_flagged(tmp_path, latent_dir, monkeypatch, capsys):
    """A run too short to learn the classes: every setting is recognised at chance, and the log says so."""
    monkeypatch.setattr(HeldoutSet, "score_model",
                        lambda self, *a, **k: dict(score=1.0, fd=1.0, tstr=0.5, recognised=0.5))   # 2 classes
    monkeypatch.setattr(HeldoutSet, "memorised_fraction", lambda self, *a, **k: 1.0)   # no start grid to sample
    stage2.main(stage2_args(latent_dir, tmp_path / "run", "monitor.every=5", steps=10))
    out = capsys.readouterr().out
    assert "recognised as their class only 0.50 of the time (chance: 0.50)" in out and "train longer" in out
