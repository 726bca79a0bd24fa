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
