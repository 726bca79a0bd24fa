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
            hip = hip_amp * np.sin(ph)
            knee = knee_amp * 0.5 * (1 - np.cos(ph + 0.6))       # knee only flexes (shin swings back)
            legs.append((side, hip, hip - knee))
            shoulder = -arm_amp * np.sin(ph)                       # arms swing against the same-side leg
            arms.append((side, shoulder, shoulder + elbow + 0.3 * elbow * np.sin(ph)))
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
#                              Radar and spectrogram
# --------------------------------------------------------------------------------

def radar_return(subject, radar=Radar(), rng=None):
    """Complex baseband samples (prf * duration,) of the body's return plus noise at subject.snr_db."""
    t = np.arange(int(radar.prf * radar.duration)) / radar.prf
    pts, _ = body_scatterers(subject, t)
    pos = radar_positions(subject, pts)
    signal = np.zeros(len(t), dtype=np.complex128)
    for name, p in pos.items():
        r = np.linalg.norm(p, axis=1)
        amp = AMP[name.rsplit("_", 1)[0] if name not in AMP else name] / (r / subject.start_range) ** 2
        signal += amp * np.exp(-1j * 4 * np.pi * r / radar.wavelength)
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


def simulate_dataset(out, per_class, size=128, seed=0, colormap=None, activities=ACTIVITIES, radar=Radar(),
                     min_range=4.0):
    """Write out/<activity>/<activity>_NNNNN.png; sample i of class c depends only on (seed, c, i)."""
    size = (size, size) if np.isscalar(size) else tuple(size)
    for c, activity in enumerate(activities):
        folder = os.path.join(out, activity)
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            subject = draw_subject(activity, rng, min_range)
            img = to_image(spectrogram_db(radar_return(subject, radar, rng), radar), size, radar.dynamic_range_db,
                           colormap)
            img.save(os.path.join(folder, f"{activity}_{i:05d}.png"))


def main(argv=None):
    from pipeline.cli import nonnegative_int, positive_int
    p = argparse.ArgumentParser(description="Simulate human micro-Doppler spectrograms, one folder per activity.")
    p.add_argument("--out", required=True)
    p.add_argument("--per_class", type=positive_int, default=100)
    p.add_argument("--size", type=positive_int, default=128)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--colormap", choices=["gray", "jet"], default="gray")
    p.add_argument("--fc", type=float, default=Radar.fc, help="carrier frequency, Hz")
    p.add_argument("--prf", type=float, default=Radar.prf, help="pulse repetition frequency, Hz")
    p.add_argument("--duration", type=float, default=Radar.duration, help="seconds per spectrogram")
    p.add_argument("--min_range", type=float, default=4.0, help="closest start distance to the radar, m")
    args = p.parse_args(argv)
    radar = Radar(fc=args.fc, prf=args.prf, duration=args.duration)
    simulate_dataset(args.out, args.per_class, args.size, args.seed,
                     None if args.colormap == "gray" else args.colormap, radar=radar, min_range=args.min_range)
    print(f"wrote {args.per_class} x {len(ACTIVITIES)} spectrograms ({', '.join(ACTIVITIES)}) to {args.out}")


if __name__ == "__main__":
    main()
