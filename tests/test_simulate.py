"""Simulator: physical sanity of the point-scatterer model and determinism."""

import filecmp
import os

import numpy as np

from pipeline.simulate import ACTIVITIES, Radar, Subject, doppler_axis, radar_return, simulate_dataset, spectrogram_db

RADAR = Radar(duration=4.0)
F = doppler_axis(RADAR)
BIN = RADAR.prf / RADAR.window


def _spec(**kw):
    subject = Subject(**{**dict(activity="walking", speed=1.4, gait_hz=1.0, aspect_deg=0, start_range=25), **kw})
    return spectrogram_db(radar_return(subject, RADAR), RADAR)


def _envelope(power, below_peak_db=30):
    """Highest Doppler per frame whose power is within `below_peak_db` of that frame's peak."""
    return np.array([F[np.nonzero(power[:, i] > power[:, i].max() - below_peak_db)[0]].max()
                     for i in range(power.shape[1])])


def test_torso_line_at_the_expected_doppler():
    # Far away, so that the line-of-sight angle hardly changes while the subject moves.
    for speed, aspect in ((1.4, 0), (1.0, 0), (3.5, 0), (1.4, 30)):
        activity = "running" if speed > 2 else "walking"
        power = _spec(activity=activity, speed=speed, aspect_deg=aspect, start_range=40)
        expected = 2 * speed * np.cos(np.deg2rad(aspect)) / RADAR.wavelength
        torso = np.median(F[power.argmax(axis=0)])
        assert abs(torso - expected) <= 1.5 * BIN, (speed, aspect, torso, expected)


def test_limb_excursions_exceed_the_torso():
    power = _spec()
    torso = np.median(F[power.argmax(axis=0)])
    envelope = _envelope(power)
    assert envelope.max() > torso + 5 * BIN      # feet swing faster than the body moves
    assert np.percentile(envelope, 90) > 1.5 * torso


def test_gait_period_as_set():
    for gait_hz in (0.8, 1.0, 1.25):
        env = _envelope(_spec(gait_hz=gait_hz))
        e = env - env.mean()
        ac = np.correlate(e, e, "full")[len(e) - 1:]
        lags = np.arange(len(ac)) * RADAR.hop / RADAR.prf
        window = (lags > 0.25) & (lags < 1.5)
        step_period = lags[window][ac[window].argmax()]
        assert abs(step_period - 0.5 / gait_hz) < 0.1 * (0.5 / gait_hz), (gait_hz, step_period)  # two steps a cycle


def test_in_place_activities_have_a_still_torso_and_distinct_signatures():
    for activity in ("boxing", "jumping"):
        power = _spec(activity=activity, speed=0.0)
        assert abs(np.median(F[power.argmax(axis=0)])) <= BIN
    crawl = _spec(activity="crawling", speed=0.4)
    run = _spec(activity="running", speed=3.5)
    assert _envelope(crawl).max() < _envelope(run).max() / 2


def test_dataset_is_deterministic_per_seed(tmp_path):
    simulate_dataset(tmp_path / "a", 2, size=32, seed=3)
    simulate_dataset(tmp_path / "b", 2, size=32, seed=3)
    simulate_dataset(tmp_path / "c", 2, size=32, seed=4)
    assert sorted(os.listdir(tmp_path / "a")) == sorted(ACTIVITIES)
    f = "walking/walking_00001.png"
    assert filecmp.cmp(tmp_path / "a" / f, tmp_path / "b" / f, shallow=False)
    assert not filecmp.cmp(tmp_path / "a" / f, tmp_path / "c" / f, shallow=False)
    simulate_dataset(tmp_path / "jet", 1, size=32, seed=3, colormap="jet")
    from PIL import Image
    assert Image.open(tmp_path / "jet" / f.replace("00001", "00000")).mode == "RGB"


# --------------------------------------------------------------------------------
#                    Hard-suite options: variants, clutter, noise, suites
# --------------------------------------------------------------------------------

def test_variants_differ_only_by_their_factor():
    from pipeline.simulate import draw_variant
    rng = lambda: np.random.default_rng(7)  # noqa: E731 - same draws for every variant
    walk, no_arms, away = (draw_variant(n, rng()) for n in ("walk", "walk_no_arms", "walk_away"))
    assert min(walk.arm_swing) >= 0.7 and max(no_arms.arm_swing) <= 0.2
    assert 145 <= away.aspect_deg <= 215 and abs(walk.aspect_deg) <= 35
    # Walking away: the torso line is at negative Doppler, mirroring walking towards.
    toward = spectrogram_db(radar_return(Subject(activity="walking", speed=1.4, start_range=40), RADAR), RADAR)
    off = spectrogram_db(radar_return(Subject(activity="walking", speed=1.4, start_range=10, aspect_deg=180), RADAR), RADAR)
    assert abs(np.median(F[toward.argmax(0)]) + np.median(F[off.argmax(0)])) <= 2 * BIN


def test_clutter_adds_a_zero_doppler_line_and_a_ghost():
    from pipeline.simulate import Clutter
    subject = Subject(activity="walking", speed=1.4, gait_hz=1.0, start_range=25)
    clean = spectrogram_db(radar_return(subject, RADAR), RADAR)
    static = spectrogram_db(radar_return(subject, RADAR, np.random.default_rng(0), Clutter(static_db=10.0)), RADAR)
    zero = np.argmin(np.abs(F))
    assert static[zero].mean() > clean[zero].mean() + 20          # a strong line at zero Doppler
    ghost = spectrogram_db(radar_return(subject, RADAR, np.random.default_rng(0), Clutter(ghost_db=-6.0, wall_y=2.0)),
                           RADAR)
    assert np.abs(ghost - static).mean() > 1.0                   # the multipath copy changes the signature


def test_snr_and_clutter_options_are_deterministic_and_keep_the_default(tmp_path):
    from pipeline.simulate import main
    main(["--out", str(tmp_path / "d"), "--per_class", "1", "--size", "32", "--seed", "3"])
    simulate_dataset(tmp_path / "ref", 1, size=32, seed=3)
    f = "walking/walking_00000.png"
    assert filecmp.cmp(tmp_path / "d" / f, tmp_path / "ref" / f, shallow=False)   # no option: demo unchanged
    args = ["--per_class", "2", "--size", "32", "--activities", "walk,walk_limp", "--snr_db", "-5", "10",
            "--clutter", "static,moving,multipath", "--aspect_deg", "60"]
    main(["--out", str(tmp_path / "h1")] + args)
    main(["--out", str(tmp_path / "h2")] + args)
    assert sorted(os.listdir(tmp_path / "h1")) == ["walk", "walk_limp"]
    g = "walk_limp/walk_limp_00001.png"
    assert filecmp.cmp(tmp_path / "h1" / g, tmp_path / "h2" / g, shallow=False)
    import pytest
    for bad in (["--activities", "flying"], ["--clutter", "rain"], ["--suite", "hard_a", "--snr_db", "3"]):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "x")] + bad)


def test_hard_suites_are_small_and_quick(tmp_path):
    import time
    from pipeline.simulate import SUITES, simulate_suite
    for name, s in SUITES.items():
        assert 20 <= s.per_class <= 60 and len(s.activities) >= 4
        t0 = time.perf_counter()
        simulate_suite(name, tmp_path / name, seed=1, size=64, per_class=2)
        assert time.perf_counter() - t0 < 10
        assert sorted(os.listdir(tmp_path / name)) == sorted(s.activities)
    assert len({r.fc for s in SUITES.values() for r in s.radars}) >= 3     # several radar settings
