"""
Rectified-flow transport: the linear path between noise and data, its training loss, and ODE sampling.

Convention (binding, see DESIGN.md): t in [0, 1], t=0 is noise x0 ~ N(0, I), t=1 is data x1;
x_t = t * x1 + (1 - t) * x0, and the model predicts the velocity u = x1 - x0.
"""

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------------
#                                   Training
# --------------------------------------------------------------------------------

def sample_lognorm_t(batch_size, device, generator=None):
    """t = sigmoid(n), n ~ N(0, 1): the logit-normal schedule that favours mid-range t. (B,) float32."""
    return torch.sigmoid(torch.randn(batch_size, device=device, generator=generator))


def channel_cosine(v, u, eps=1e-8):
    """Cosine similarity along channels, (B, C, H, W) x2 -> (B, H, W): v.u / (sqrt(|v|^2 + eps) sqrt(|u|^2 + eps)).

    Equal to F.cosine_similarity(v, u, dim=1) to ~eps / |v|^2, but its gradient stays bounded where v = 0
    (|grad| <= 1 / sqrt(eps)), as it is at every pixel of a zero-initialised model's first step. There
    F.cosine_similarity's gradient is ~1 / its eps and, on some builds (PyTorch 2.11 CUDA), larger still:
    times the fp16 grad scaler's 2^10..2^16 it was not finite, and every step of a fresh fp16 run (the T4
    path) was skipped."""
    dot = (v * u).sum(dim=1)
    return dot * torch.rsqrt(v.pow(2).sum(dim=1) + eps) * torch.rsqrt(u.pow(2).sum(dim=1) + eps)


def training_losses(model, x1, y, x0=None, t=None, bounded_cosine=False):
    """Per-sample flow-matching losses.

    x1: (B, C, H, W) normalised data latents; y: (B,) labels; x0: noise (drawn N(0, I) when None);
    t: (B,) in [0, 1] (drawn logit-normal when None).
    Returns a dict of (B,) float32 tensors: `mse` = mean over C,H,W of (v - u)^2,
    `cos` = mean over H,W of 1 - cos_sim(v, u) along channels, and `loss` = mse + cos.
    bounded_cosine: cos_sim by channel_cosine, for fp16 training with a grad scaler; otherwise by
    F.cosine_similarity as the reference computes it (the two differ in the first step of a fresh model, where
    the clipped gradient is all cosine with the one and not with the other, so fp32/bf16 runs keep torch's)."""
    if x0 is None:
        x0 = torch.randn_like(x1)
    if t is None:
        t = sample_lognorm_t(x1.shape[0], x1.device)
    tb = t.view(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    xt = tb * x1 + (1 - tb) * x0
    u = x1 - x0
    v = model(xt, t, y).float()
    u = u.float()
    mse = (v - u).pow(2).mean(dim=tuple(range(1, v.dim())))
    cos_sim = channel_cosine(v, u) if bounded_cosine else F.cosine_similarity(v, u, dim=1)
    cos = (1 - cos_sim).mean(dim=tuple(range(1, v.dim() - 1)))
    return {"mse": mse, "cos": cos, "loss": mse + cos}


# --------------------------------------------------------------------------------
#                                   Sampling
# --------------------------------------------------------------------------------

def time_grid(num_steps, timestep_shift=0.0, device="cpu"):
    """t_i = i / num_steps, i = 0..num_steps; with s = timestep_shift > 0, t <- s t / (1 + (s - 1) t).
    s > 1 spends more steps near the noise end. (num_steps + 1,) float64."""
    t = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64, device=device)
    if timestep_shift > 0:
        s = timestep_shift
        t = s * t / (1 + (s - 1) * t)
    return t


def guided_velocity(model, x, t, y, null_label, cfg_scale=1.0, cfg_interval_start=0.0):
    """Velocity at (x, t) with classifier-free guidance on ALL channels:
    v = v_u + cfg_scale * (v_c - v_u) where t >= cfg_interval_start, else v = v_c.
    The conditional and unconditional halves go through the model in one batched forward pass.
    x: (B, C, H, W) float32, t: python float, y: (B,) -> (B, C, H, W) float32."""
    b = x.shape[0]
    guide = cfg_scale != 1.0 and t >= cfg_interval_start
    if not guide:
        return model(x, torch.full((b,), t, device=x.device, dtype=torch.float32), y).float()
    xx = torch.cat([x, x], dim=0)
    yy = torch.cat([y, torch.full_like(y, null_label)], dim=0)
    v = model(xx, torch.full((2 * b,), t, device=x.device, dtype=torch.float32), yy).float()
    v_cond, v_uncond = v[:b], v[b:]
    return v_uncond + cfg_scale * (v_cond - v_uncond)


@torch.no_grad()
def sample(model, z, y, num_steps, method="euler", cfg_scale=1.0, cfg_interval_start=0.0, timestep_shift=0.0,
           null_label=None, t_start=0.0):
    """Integrate dx/dt = v(x, t, y) from t = t_start (x = z) to t=1 (data) on `time_grid`.

    z: (B, C, H, W) the state at t_start: noise for t_start = 0, else a point of the path
    (t_start * x1 + (1 - t_start) * noise, see pipeline.generate); y: (B,) labels; num_steps: number of steps
    over [t_start, 1], the grid mapped linearly onto it (Euler: one model evaluation per step and sample without
    guidance; Heun: two). The null label defaults to `model.num_classes`: pass the
    LightningDiT itself or a torch.compile'd one (which forwards attributes), not a DDP wrapper (sampling
    needs no gradient sync; callers sample with the EMA copy or the unwrapped model).
    Returns x at t=1, float32."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampling method {method!r}: use euler or heun")
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    if not 0.0 <= t_start < 1.0:
        raise ValueError(f"t_start must be in [0, 1), got {t_start}")
    if null_label is None:
        null_label = model.num_classes
    ts = (t_start + (1.0 - t_start) * time_grid(num_steps, timestep_shift)).tolist()
    x = z.float()

    def velocity(x_, t_):
        return guided_velocity(model, x_, t_, y, null_label, cfg_scale, cfg_interval_start)

    for t0, t1 in zip(ts[:-1], ts[1:]):
        dt = t1 - t0
        v0 = velocity(x, t0)
        if method == "euler":
            x = x + dt * v0
        else:
            x_pred = x + dt * v0
            x = x + 0.5 * dt * (v0 + velocity(x_pred, t1))
    return x
