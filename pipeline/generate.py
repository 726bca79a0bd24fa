"""
Sampling and decoding shared by stage 2 (sample grids) and stage 3 (generation).

Reproducibility: the noise of image k of class c is drawn from its own generator seeded by
(seed, c, k), so an image does not depend on batch size, rank count or what was generated before.
"""

import hashlib

import torch

from models.transport import sample
from pipeline.common import autocast


def image_seed(seed, class_id, k):
    """A 63-bit seed for image k of class `class_id`, well separated for nearby arguments."""
    digest = hashlib.sha256(f"{seed}/{class_id}/{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def initial_noise(seeds, shape):
    """(len(seeds), *shape) float32 N(0, I) noise, one CPU generator per image seed."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def sample_latents(model, labels, seeds, latent_shape, sampling, device, dtype=None):
    """Normalised latents (B, C, h, w) at t=1 for labels (B,) from per-image seeds.
    `sampling`: dict with num_steps, method, cfg_scale, cfg_interval_start, timestep_shift."""
    z = initial_noise(seeds, latent_shape).to(device)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    with autocast(device, dtype):
        return sample(model, z, y, num_steps=int(sampling["num_steps"]), method=sampling["method"],
                      cfg_scale=float(sampling["cfg_scale"]), cfg_interval_start=float(sampling["cfg_interval_start"]),
                      timestep_shift=float(sampling["timestep_shift"])).float()


def denormalise(z, stats):
    """Undo stage 2's (x - mean) / std with the stats stored in the checkpoint."""
    return z * stats["std"].to(z.device) + stats["mean"].to(z.device)


@torch.inference_mode()
def decode_latents(tokenizer, z, device, dtype=None, chunk=16):
    """Tokenizer-space latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1] on the CPU, decoded in chunks."""
    out = []
    for part in z.split(chunk):
        with autocast(device, dtype):
            out.append(tokenizer.decode(part.to(device)).float().clamp(-1, 1).cpu())
    return torch.cat(out)


def latent_maps(z):
    """Without a tokenizer: the first latent channel of each sample as a grey image in [-1, 1], upsampled x4."""
    x = z[:, :1].float()
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1
    return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest").expand(-1, 3, -1, -1)
