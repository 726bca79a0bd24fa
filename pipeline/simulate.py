"""
Simulated human micro-Doppler spectrograms (point-scatterer body model).

The body is a set of point scatterers at the head, torso centre and the middles/ends of the arm and
leg segments; joint angles follow each activity's kinematics (a simplified Boulic-style gait for walking,
running and crawling; ballistic flight for jumping; punches for boxing). A monostatic CW radar at the
origin (carrier `fc`, sampled at `prf`) sees the sum of the scatterers' returns
    s(t) = sum_k a_k exp(-j 4 pi r_k(t) / lambda),   r_k = |p_k(t)|,
plus complex white noise at the drawn SNR. The spectrogram is an STFT (Hann window, overlap), in dB,
clipped to a dynamic range above the noise floor, zero Doppler centred, approaching targets (positive
Doppler) at the top. Time runs along x.

    python -m pipeline.simulate --out DIR --per_class N --size S --seed K [--colormap jet]
    python -m pipeline.simulate --out DIR --activities walk,walk_slow --snr_db -5 15 --clutter static,multipath
    python -m pipeline.simulate --out DIR --suite hard_a         # a named benchmark suite (see SUITES)

Besides the five demo activities there are subtle walking variants (VARIANTS: slow, no arm swing, one
arm still, limping, walking away, jogging) with wider per-subject variability, and an environment model
(`Clutter`): a static clutter line at zero Doppler with wind spread, moving clutter (a target at
constant radial speed that vibrates, e.g. a fan or a branch) and a multipath ghost from a wall. The
named suites (`simulate_suite`) combine them into small, hard benchmark sets.
"""

import argparse
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

C_LIGHT = 3e8
ACTIVITIES = ("walking", "running", "jumping", "boxing", "crawling")


@dataclass
class Radar:
    fc: float = 5.8e9          # carrier frequency (Hz): C band, wavelength 5.2 cm, 38.7 Hz per m/s
    prf: float = 1000.0        # pulse repetition frequency (Hz): unambiguous Doppler +-500 Hz = +-12.9 m/s
    duration: float = 2.0      # seconds observed
    window: int = 128          # STFT window (samples)
    hop: int = 16              # STFT hop (samples): 87.5 % overlap
    dynamic_range_db: float = 50.0

    @property
    def wavelength(self):
        return C_LIGHT / self.fc


@dataclass
class Subject:
    activity: str
    speed: float = 1.2          # m/s along the heading (0 for in-place activities)
    height: float = 1.75        # m
    gait_hz: float = 0.9        # cycles (strides, two steps; or jumps/punch pairs) per second
    phase: float = 0.0          # rad, gait phase at t = 0
    aspect_deg: float = 0.0     # angle between heading and the line of sight to the radar
    start_range: float = 10.0   # m
    snr_db: float = 20.0        # torso-to-noise power ratio
    arm_swing: tuple = (1.0, 1.0)  # walking/running arm swing scale (left, right): 0 = arms still (pockets, carrying)
    limp: float = 0.0           # 0..1: how much less the right leg swings and flexes than the left


# Segment proportions of body height (anthropometric tables, rounded).
THIGH, SHIN, UPPER_ARM, FOREARM = 0.245, 0.246, 0.186, 0.146
HIP_H, SHOULDER_H, HEAD_H, TORSO_H = 0.53, 0.818, 0.93, 0.72
HIP_W, SHOULDER_W = 0.09, 0.13
# Relative amplitudes (sqrt of radar cross section) of the scatterers.
AMP = dict(torso=1.0, head=0.35, upper_arm=0.22, forearm=0.2, thigh=0.3, shin=0.28, foot=0.18)


# --------------------------------------------------------------------------------
#                                 Kinematics
# --------------------------------------------------------------------------------

def _limb(origin, angle1, angle2, len1, len2):
    """Two-segment limb in the sagittal plane hanging from `origin` (T, 3); angles from the downward
    vertical, positive forward. Returns midpoints of both segments and the end point, each (T, 3)."""
    d1 = np.stack([np.sin(angle1), np.zeros_like(angle1), -np.cos(angle1)], axis=-1)
    d2 = np.stack([np.sin(angle2), np.zeros_like(angle2), -np.cos(angle2)], axis=-1)
    joint = origin + len1 * d1
    end = joint + len2 * d2
    return origin + 0.5 * len1 * d1, joint + 0.5 * len2 * d2, end


def body_scatterers(subject, t):
    """Body-frame scatterer positions (x forward, y left, z up) over time t (T,): dict name -> (T, 3),
    plus the body's forward displacement (T,)."""
    H = subject.height
    phi = 2 * np.pi * subject.gait_hz * t + subject.phase
    T = len(t)
    zeros = np.zeros(T)
    act = subject.activity
    forward = subject.speed * t
    bob = zeros
    crawl = act == "crawling"
    if act in ("walking", "running"):
        run = act == "running"
        hip_amp, knee_amp, arm_amp, elbow = (0.55, 1.3, 0.9, 1.3) if run else (0.38, 0.65, 0.35, 0.35)
        bob = (0.04 if run else 0.015) * H * np.cos(2 * phi)
        legs, arms = [], []
        for side, ph in ((+1, phi), (-1, phi + np.pi)):
            leg = 1.0 - subject.limp if side < 0 else 1.0            # a limp: the right leg swings and flexes less
            swing = subject.arm_swing[0 if side > 0 else 1]
            hip = (hip_amp * leg) * np.sin(ph)
            knee = (knee_amp * leg) * 0.5 * (1 - np.cos(ph + 0.6))  # knee only flexes (shin swings back)
            legs.append((side, hip, hip - knee))
            shoulder = -(arm_amp * swing) * np.sin(ph)               # arms swing against the same-side leg
            arms.append((side, shoulder, shoulder + elbow + 0.3 * (elbow * swing) * np.sin(ph)))
    elif act == "jumping":
        # Flight phase of each jump: vertical lift is a parabola; knees bend on landing; arms swing up.
        cycle = np.mod(phi, 2 * np.pi) / (2 * np.pi)
        lift = 0.12 * H * 4 * cycle * (1 - cycle)
        bob = lift - 0.05 * H * (1 - np.sin(np.pi * cycle))
        bend = 0.9 * (1 - np.sin(np.pi * cycle))
        legs = [(side, 0.6 * bend, -0.6 * bend) for side in (+1, -1)]
        arms = [(side, 2.2 * np.sin(np.pi * cycle), 2.4 * np.sin(np.pi * cycle)) for side in (+1, -1)]
    elif act == "boxing":
        # Torso still, alternating punches: the arm extends forward quickly and retracts.
        legs = [(side, zeros + 0.1, zeros - 0.1) for side in (+1, -1)]
        arms = []
        for side, ph in ((+1, phi), (-1, phi + np.pi)):
            punch = np.clip(np.sin(ph), 0, None) ** 2
            arms.append((side, 0.9 + 0.7 * punch, 2.3 - 0.8 * punch))
        bob = 0.01 * H * np.sin(2 * phi)
    elif act == "crawling":
        # Hands and knees: torso horizontal at ~0.3 H, limbs move in a diagonal (trot-like) pattern.
        legs = [(side, 0.35 * np.sin(ph), -np.pi / 2 + 0.25 * np.sin(ph)) for side, ph in ((+1, phi), (-1, phi + np.pi))]
        arms = [(side, 0.4 * np.sin(ph + np.pi), 0.15 * np.sin(ph + np.pi)) for side, ph in ((+1, phi), (-1, phi + np.pi))]
        bob = 0.01 * H * np.cos(2 * phi)
    else:
        raise ValueError(f"unknown activity {act!r}; choose from {', '.join(ACTIVITIES)}")

    pts = {}
    if crawl:
        # Torso horizontal: hips behind the shoulders at ~0.3 H height.
        base = 0.28 * H
        hip_c = np.stack([forward - 0.25 * H, zeros, base + bob], -1)
        sh_c = np.stack([forward + 0.2 * H, zeros, base + 0.02 * H + bob], -1)
        pts["torso"] = (hip_c + sh_c) / 2
        pts["head"] = sh_c + np.array([0.12 * H, 0, 0.05 * H])
    else:
        hip_c = np.stack([forward, zeros, HIP_H * H + bob], -1)
        sh_c = np.stack([forward, zeros, SHOULDER_H * H + bob], -1)
        pts["torso"] = np.stack([forward, zeros, TORSO_H * H + bob], -1)
        pts["head"] = np.stack([forward, zeros, HEAD_H * H + bob], -1)
    for side, a1, a2 in legs:
        origin = hip_c + np.array([0, side * HIP_W * H, 0])
        m1, m2, end = _limb(origin, np.broadcast_to(a1, (T,)), np.broadcast_to(a2, (T,)), THIGH * H, SHIN * H)
        key = "l" if side > 0 else "r"
        pts[f"thigh_{key}"], pts[f"shin_{key}"], pts[f"foot_{key}"] = m1, m2, end
    for side, a1, a2 in arms:
        origin = sh_c + np.array([0, side * SHOULDER_W * H, 0])
        m1, m2, end = _limb(origin, np.broadcast_to(a1, (T,)), np.broadcast_to(a2, (T,)), UPPER_ARM * H, FOREARM * H)
        key = "l" if side > 0 else "r"
        pts[f"upper_arm_{key}"], pts[f"forearm_{key}"] = m1, m2
    return pts, forward


def radar_positions(subject, pts):
    """Rotate/translate body-frame points into the radar frame: the subject starts at `start_range` on the
    radar's x axis and heads towards the radar at `aspect_deg` off the line of sight."""
    a = np.deg2rad(subject.aspect_deg)
    heading = np.array([-np.cos(a), np.sin(a), 0.0])   # unit vector of the body's forward axis
    lateral = np.array([-np.sin(a), -np.cos(a), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    start = np.array([subject.start_range, 0.0, -1.0])  # radar 1 m above the ground
    return {k: start + p[:, :1] * heading + p[:, 1:2] * lateral + p[:, 2:3] * up for k, p in pts.items()}


# --------------------------------------------------------------------------------
#                         Environment: clutter and multipath
# --------------------------------------------------------------------------------

@dataclass
class Clutter:
    """One recording's environment. Levels are power relative to the torso echo at the start range
    (dB); None switches a component off."""
    static_db: float = None       # stationary clutter (walls, furniture): a line at zero Doppler
    wind_fraction: float = 0.0    # share of its amplitude that fluctuates (foliage, curtains): Doppler spread
    wind_hz: float = 3.0          # width (std) of that spread, Hz
    mover_db: float = None        # moving clutter: a target at constant radial speed that also vibrates
    mover_speed: float = 0.0      # m/s, positive approaching
    mover_vib_hz: float = 0.0     # vibration (fan, swaying branch) frequency, Hz
    mover_vib_m: float = 0.0      # vibration amplitude, m
    ghost_db: float = None        # multipath ghost via a wall, relative to the direct echo
    wall_y: float = 3.0           # the wall is the plane y = wall_y of the radar frame, m


CLUTTER_KINDS = ("static", "moving", "multipath")


def draw_clutter(kinds, rng):
    """A random `Clutter` with the components named in `kinds` (subset of CLUTTER_KINDS). Always draws
    every parameter in the same order, so switching one component does not change the others' values."""
    static_db, wind_fraction, wind_hz = rng.uniform(-10, 5), rng.uniform(0.0, 0.3), rng.uniform(1, 6)
    mover_db, mover_speed = rng.uniform(-15, -3), rng.uniform(-3, 3)
    mover_vib_hz, mover_vib_m = rng.uniform(1, 15), rng.uniform(0, 0.02)
    ghost_db, wall_y = rng.uniform(-12, -4), rng.choice([-1, 1]) * rng.uniform(1.5, 5)
    return Clutter(static_db=static_db if "static" in kinds else None, wind_fraction=wind_fraction, wind_hz=wind_hz,
                   mover_db=mover_db if "moving" in kinds else None, mover_speed=mover_speed,
                   mover_vib_hz=mover_vib_hz, mover_vib_m=mover_vib_m,
                   ghost_db=ghost_db if "multipath" in kinds else None, wall_y=float(wall_y))


def _lowpass_noise(n, prf, width_hz, rng):
    """Unit-power complex Gaussian process with a Gaussian Doppler spectrum of std `width_hz`."""
    f = np.fft.fftfreq(n, d=1 / prf)
    x = np.fft.ifft((rng.standard_normal(n) + 1j * rng.standard_normal(n)) * np.exp(-0.5 * (f / width_hz) ** 2))
    return x / np.sqrt(np.mean(np.abs(x) ** 2) + 1e-30)


def clutter_return(clutter, pos, t, radar, start_range, rng):
    """The environment's share of the baseband signal (len(t),) for body scatterers at `pos`."""
    k = 4 * np.pi / radar.wavelength
    out = np.zeros(len(t), dtype=np.complex128)
    if clutter.static_db is not None:
        a = 10 ** (clutter.static_db / 20)
        steady = (1 - clutter.wind_fraction) * np.exp(1j * rng.uniform(0, 2 * np.pi))
        out += a * (steady + clutter.wind_fraction * _lowpass_noise(len(t), radar.prf, clutter.wind_hz, rng))
    if clutter.mover_db is not None:
        r = 5.0 - clutter.mover_speed * t + clutter.mover_vib_m * np.sin(2 * np.pi * clutter.mover_vib_hz * t)
        out += 10 ** (clutter.mover_db / 20) * np.exp(-1j * (k * r + rng.uniform(0, 2 * np.pi)))
    if clutter.ghost_db is not None:
        # Image method: the path radar -> body -> wall -> radar is as long as r (direct) + r' (to the
        # body's mirror image behind the wall); its Doppler is the mean of both radial speeds, so the
        # ghost is a weaker, slightly shifted copy of the body's signature.
        rho = 10 ** (clutter.ghost_db / 20)
        for name, p in pos.items():
            mirror = p * np.array([1.0, -1.0, 1.0]) + np.array([0.0, 2 * clutter.wall_y, 0.0])
            r, r_img = np.linalg.norm(p, axis=1), np.linalg.norm(mirror, axis=1)
            out += rho * _amplitude(name, (r + r_img) / 2, start_range) * np.exp(-1j * k * (r + r_img) / 2)
    return out


# --------------------------------------------------------------------------------
#                              Radar and spectrogram
# --------------------------------------------------------------------------------

def _amplitude(name, r, start_range):
    """Echo amplitude of scatterer `name` at range r: its AMP, falling with r^2 (r^4 in power), 1 for
    the torso at the start range."""
    return AMP[name.rsplit("_", 1)[0] if name not in AMP else name] / (r / start_range) ** 2


def radar_return(subject, radar=Radar(), rng=None, clutter=None):
    """Complex baseband samples (prf * duration,) of the body's return, plus the environment's
    (`clutter`, a `Clutter`; needs `rng`) and noise at subject.snr_db (with `rng`)."""
    t = np.arange(int(radar.prf * radar.duration)) / radar.prf
    pts, _ = body_scatterers(subject, t)
    pos = radar_positions(subject, pts)
    signal = np.zeros(len(t), dtype=np.complex128)
    for name, p in pos.items():
        r = np.linalg.norm(p, axis=1)
        amp = _amplitude(name, r, subject.start_range)
        signal += amp * np.exp(-1j * 4 * np.pi * r / radar.wavelength)
    if clutter is not None:
        signal += clutter_return(clutter, pos, t, radar, subject.start_range, rng)
    if rng is not None:
        noise_power = AMP["torso"] ** 2 / 10 ** (subject.snr_db / 10)
        signal += np.sqrt(noise_power / 2) * (rng.standard_normal(len(t)) + 1j * rng.standard_normal(len(t)))
    return signal


def spectrogram_db(signal, radar=Radar()):
    """STFT power in dB: (Doppler bins, frames), zero Doppler centred, positive Doppler at row 0 (top)."""
    win = np.hanning(radar.window)
    n_frames = 1 + (len(signal) - radar.window) // radar.hop
    idx = np.arange(radar.window)[None, :] + radar.hop * np.arange(n_frames)[:, None]
    spec = np.fft.fftshift(np.fft.fft(signal[idx] * win, axis=1), axes=1)
    power = 10 * np.log10(np.abs(spec) ** 2 + 1e-12)
    return power.T[::-1].copy()


def doppler_axis(radar=Radar()):
    """Doppler frequency (Hz) of each row of `spectrogram_db`, top row first."""
    f = np.fft.fftshift(np.fft.fftfreq(radar.window, d=1 / radar.prf))
    return f[::-1].copy()


def to_image(power_db, size, dynamic_range_db=50.0, colormap=None):
    """dB spectrogram -> PIL image of `size` (H, W): the top `dynamic_range_db` mapped to [0, 255]."""
    top = power_db.max()
    x = np.clip((power_db - (top - dynamic_range_db)) / dynamic_range_db, 0, 1)
    img = Image.fromarray((x * 255).round().astype(np.uint8)).resize((size[1], size[0]), Image.BILINEAR)
    if colormap == "jet":
        v = np.asarray(img, dtype=np.float32) / 255.0
        rgb = np.clip(np.stack([1.5 - np.abs(4 * v - 3), 1.5 - np.abs(4 * v - 2), 1.5 - np.abs(4 * v - 1)], -1), 0, 1)
        img = Image.fromarray((rgb * 255).round().astype(np.uint8))
    return img


# --------------------------------------------------------------------------------
#                                 Data sets
# --------------------------------------------------------------------------------

# Subtle variants of walking for hard benchmark sets. Every variant draws its subject with the same wide
# per-subject variability (height, stride length, arm swing per side, aspect angle), so the classes
# differ only by the named factor, and their speed ranges overlap where people's do.
#   kinematics: "walking" or "running"; speed: m/s; stride: stride length / height (two steps);
#   arms: "free", "none" (hands in pockets) or "one" (carrying something); limp: range of Subject.limp;
#   away: heading away from the radar instead of towards it.
VARIANTS = {
    "walk":              dict(kinematics="walking", speed=(0.9, 1.6), stride=0.8),
    "walk_slow":         dict(kinematics="walking", speed=(0.5, 1.0), stride=0.7),
    "walk_no_arms":      dict(kinematics="walking", speed=(0.9, 1.6), stride=0.8, arms="none"),
    "walk_one_arm":      dict(kinematics="walking", speed=(0.9, 1.6), stride=0.8, arms="one"),
    "walk_limp":         dict(kinematics="walking", speed=(0.6, 1.3), stride=0.7, limp=(0.3, 0.6)),
    "walk_away":         dict(kinematics="walking", speed=(0.9, 1.6), stride=0.8, away=True),
    "walk_no_arms_away": dict(kinematics="walking", speed=(0.9, 1.6), stride=0.8, arms="none", away=True),
    "jog":               dict(kinematics="running", speed=(1.8, 2.6), stride=1.0),
}
ALL_ACTIVITIES = ACTIVITIES + tuple(VARIANTS)


def draw_subject(activity, rng, min_range=4.0):
    """Random speed, height, gait phase, aspect angle, range and SNR for one recording of `activity`.
    The start range is min_range + U(0, 6) m plus the distance walked in 3 s, so the subject never
    reaches the radar during the recording."""
    height = rng.uniform(1.55, 1.95)
    speed, gait = {
        "walking": (rng.uniform(0.9, 1.6), None),
        "running": (rng.uniform(2.8, 4.2), None),
        "jumping": (0.0, rng.uniform(0.9, 1.4)),
        "boxing": (0.0, rng.uniform(0.8, 1.3)),
        "crawling": (rng.uniform(0.25, 0.5), None),
    }[activity]
    if gait is None:  # cadence follows speed through the stride length (two steps per cycle)
        stride = {"walking": 0.8, "running": 1.3, "crawling": 0.35}[activity] * height
        gait = speed / stride
    return Subject(activity=activity, speed=speed, height=height, gait_hz=gait, phase=rng.uniform(0, 2 * np.pi),
                   aspect_deg=rng.uniform(-35, 35),
                   start_range=min_range + rng.uniform(0, 6) + speed * 3.0,
                   snr_db=rng.uniform(15, 35))


def draw_variant(name, rng, min_range=4.0, aspect_deg=35.0):
    """Like `draw_subject` for a walking variant of VARIANTS, with wider per-subject variability: height
    1.50-2.00 m, stride +-10 %, arm swing 0.7-1.3 per side, aspect U(-aspect_deg, aspect_deg) off the
    line of sight (off the direction away from the radar for `away` variants)."""
    v = VARIANTS[name]
    height = rng.uniform(1.50, 2.00)
    speed = rng.uniform(*v["speed"])
    stride = v["stride"] * height * rng.uniform(0.9, 1.1)
    swing = rng.uniform(0.7, 1.3, size=2)
    still = rng.uniform(0.0, 0.2, size=2)
    if v.get("arms") == "none":
        swing = still
    elif v.get("arms") == "one":
        swing[rng.integers(2)] = still[0]
    limp = rng.uniform(*v["limp"]) if "limp" in v else 0.0
    aspect = rng.uniform(-aspect_deg, aspect_deg) + (180.0 if v.get("away") else 0.0)
    # Walking away the range only grows; walking towards, leave room for 3 s of walking.
    start_range = min_range + rng.uniform(0, 6) + (0.0 if v.get("away") else speed * 3.0)
    return Subject(activity=v["kinematics"], speed=speed, height=height, gait_hz=speed / stride,
                   phase=rng.uniform(0, 2 * np.pi), aspect_deg=aspect, start_range=start_range,
                   snr_db=rng.uniform(15, 35), arm_swing=(float(swing[0]), float(swing[1])), limp=limp)


def draw_recording(activity, rng, min_range=4.0, snr_db=None, clutter=(), aspect_deg=None, radar=Radar()):
    """(subject, radar, clutter or None) of one recording. The demo activities draw exactly what they always
    did unless an option is given; options draw their numbers after the subject's, in a fixed order."""
    if activity in VARIANTS:
        subject = draw_variant(activity, rng, min_range, 35.0 if aspect_deg is None else aspect_deg)
    else:
        subject = draw_subject(activity, rng, min_range)
        if aspect_deg is not None:
            subject.aspect_deg = rng.uniform(-aspect_deg, aspect_deg)
    if snr_db is not None:
        lo, hi = (snr_db, snr_db) if np.isscalar(snr_db) else snr_db
        subject.snr_db = rng.uniform(lo, hi)
    if not isinstance(radar, Radar):       # several radars: one per recording
        radar = radar[rng.integers(len(radar))]
    return subject, radar, (draw_clutter(clutter, rng) if clutter else None)


def simulate_dataset(out, per_class, size=128, seed=0, colormap=None, activities=ACTIVITIES, radar=Radar(),
                     min_range=4.0, snr_db=None, clutter=(), aspect_deg=None):
    """Write out/<activity>/<activity>_NNNNN.png; sample i of class c depends only on (seed, c, i).
    `activities` from ALL_ACTIVITIES; `radar` a Radar or a sequence of them (one drawn per image);
    `snr_db` a value or (low, high) range instead of 15-35 dB; `clutter` kinds from CLUTTER_KINDS;
    `aspect_deg` the largest aspect angle off the line of sight instead of 35."""
    size = (size, size) if np.isscalar(size) else tuple(size)
    unknown = [a for a in activities if a not in ALL_ACTIVITIES]
    if unknown:
        raise ValueError(f"unknown activity {unknown[0]!r}; choose from {', '.join(ALL_ACTIVITIES)}")
    for c, activity in enumerate(activities):
        folder = os.path.join(out, activity)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            subject, rad, env = draw_recording(activity, rng, min_range, snr_db, clutter, aspect_deg, radar)
            img = to_image(spectrogram_db(radar_return(subject, rad, rng, env), rad), size, rad.dynamic_range_db,
                           colormap)
            img.save(os.path.join(folder, f"{activity}_{i:05d}.png"))


# --------------------------------------------------------------------------------
#                          Benchmark suites
# --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Suite:
    """A named benchmark set: few images per class, subtle classes, clutter, noise, radar settings."""
    description: str
    activities: tuple
    per_class: int
    radars: tuple               # one drawn per image
    snr_db: tuple               # (low, high), torso-to-noise per sample
    clutter: tuple              # kinds from CLUTTER_KINDS
    aspect_deg: float           # largest angle off the line of sight
    min_range: float = 3.0


SUITES = {
    # C band, one radar: five walking styles that differ by speed, arm swing or a limp only.
    "hard_a": Suite(
        description="5 walking styles (normal, slow, no arm swing, one arm still, limp), 40/class, C band "
                    "5.8 GHz PRF 1 kHz 2 s, SNR -5..15 dB, static clutter + wall multipath, aspect +-60 deg",
        activities=("walk", "walk_slow", "walk_no_arms", "walk_one_arm", "walk_limp"), per_class=40,
        radars=(Radar(fc=5.8e9, prf=400.0, duration=2.0, window=64, hop=8, dynamic_range_db=45.0),), snr_db=(15.0, 35.0),
        clutter=("static", "multipath"), aspect_deg=35.0),
    # Two radars mixed within every class: direction x arm swing, plus jogging; 28 images a class.
    "hard_b": Suite(
        description="walk / walk_away / no arm swing towards / away / jog, 28/class, radars mixed per image "
                    "(24 GHz PRF 2.5 kHz 3 s; 10 GHz PRF 1.2 kHz 2.5 s), SNR -8..12 dB, static + moving clutter "
                    "+ multipath, aspect +-75 deg",
        activities=("walk", "walk_away", "walk_no_arms", "walk_no_arms_away", "jog"), per_class=28,
        radars=(Radar(fc=24e9, prf=1600.0, duration=3.0, dynamic_range_db=45.0),
                Radar(fc=10e9, prf=800.0, duration=2.5, window=64, hop=8, dynamic_range_db=45.0)),
        snr_db=(10.0, 30.0), clutter=CLUTTER_KINDS, aspect_deg=50.0),
}


def simulate_suite(name, out, seed=0, size=128, per_class=None, colormap=None):
    """Write the named suite (SUITES) to out/<class>/...; returns its Suite."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")
    s = SUITES[name]
    simulate_dataset(out, per_class or s.per_class, size, seed, colormap, s.activities, s.radars, s.min_range,
                     s.snr_db, s.clutter, s.aspect_deg)
    return s


# --------------------------------------------------------------------------------
#                                   CLI
# --------------------------------------------------------------------------------

def _names(choices, what):
    """argparse type: comma-separated names from `choices`."""
    def parse(text):
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {(bad or [text])[0]!r}; choose from {', '.join(choices)}")
        return names
    return parse


def main(argv=None):
    from pipeline.cli import nonnegative_int, positive_int
    p = argparse.ArgumentParser(description="Simulate human micro-Doppler spectrograms, one folder per activity.")
    p.add_argument("--out", required=True)
    p.add_argument("--per_class", type=positive_int, default=None, help="default 100 (a suite: its own)")
    p.add_argument("--size", type=positive_int, default=128)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--colormap", choices=["gray", "jet"], default="gray")
    p.add_argument("--suite", choices=sorted(SUITES), default=None,
                   help="a named benchmark set (sets activities, radar, SNR, clutter, aspect)")
    p.add_argument("--activities", type=_names(ALL_ACTIVITIES, "activity"), default=None,
                   help=f"comma-separated, default {','.join(ACTIVITIES)}; variants: {','.join(VARIANTS)}")
    p.add_argument("--snr_db", type=float, nargs="+", default=None, metavar="DB",
                   help="torso-to-noise ratio: one value or LOW HIGH (default 15 35)")
    p.add_argument("--clutter", type=_names(CLUTTER_KINDS + ("none",), "clutter kind"), default=None,
                   help=f"comma-separated from {','.join(CLUTTER_KINDS)} (default none)")
    p.add_argument("--aspect_deg", type=float, default=None, help="largest aspect angle off the line of sight (35)")
    p.add_argument("--fc", type=float, default=None, help=f"carrier frequency, Hz (default {Radar.fc:g})")
    p.add_argument("--prf", type=float, default=None, help=f"pulse repetition frequency, Hz (default {Radar.prf:g})")
    p.add_argument("--duration", type=float, default=None, help=f"seconds per spectrogram (default {Radar.duration:g})")
    p.add_argument("--min_range", type=float, default=None, help="closest start distance to the radar, m (default 4)")
    args = p.parse_args(argv)
    colormap = None if args.colormap == "gray" else args.colormap
    if args.snr_db is not None and len(args.snr_db) > 2:
        p.error("--snr_db takes one value or LOW HIGH")
    if args.suite:
        given = [f"--{k}" for k in ("activities", "snr_db", "clutter", "aspect_deg", "fc", "prf", "duration", "min_range")
                 if getattr(args, k) is not None]
        if given:
            p.error(f"--suite sets these itself: {', '.join(given)}")
        s = simulate_suite(args.suite, args.out, args.seed, args.size, args.per_class, colormap)
        activities, per_class = s.activities, args.per_class or s.per_class
    else:
        radar = Radar(fc=args.fc or Radar.fc, prf=args.prf or Radar.prf, duration=args.duration or Radar.duration)
        activities, per_class = args.activities or ACTIVITIES, args.per_class or 100
        clutter = tuple(k for k in (args.clutter or ()) if k != "none")
        snr = None if args.snr_db is None else tuple(args.snr_db) if len(args.snr_db) == 2 else args.snr_db[0]
        simulate_dataset(args.out, per_class, args.size, args.seed, colormap, activities, radar,
                         4.0 if args.min_range is None else args.min_range, snr, clutter, args.aspect_deg)
    print(f"wrote {per_class} x {len(activities)} spectrograms ({', '.join(activities)}) to {args.out}")


if __name__ == "__main__":
    main()
