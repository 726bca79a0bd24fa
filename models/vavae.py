"""
VA-VAE tokenizer: the LDM `AutoencoderKL` (f16, 32 latent channels) and its loader.

The released `vavae-imagenet256-f16d32-dinov2.pt` has exactly this architecture; its
`state_dict` additionally holds training-only weights (`loss.*`, `foundation_model.*`,
`linear_proj.*`) that are ignored here. Images are (B, 3, H, W) in [-1, 1]; latents are
(B, 32, H/16, W/16).

Also here: `DCTDemoTokenizer`, a training-free stand-in with the same interface and
latent layout, used only when asked for by name (`--vavae_path demo`).
"""

import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.safe_load import CheckpointError, safe_torch_load

VAVAE_FILENAME = "vavae-imagenet256-f16d32-dinov2.pt"
VAVAE_URL = "https://huggingface.co/hustvl/vavae-imagenet256-f16d32-dinov2"
EXTRA_KEY_PREFIXES = ("loss.", "foundation_model.", "linear_proj.")


# --------------------------------------------------------------------------------
#                                 Building blocks
# --------------------------------------------------------------------------------

def _group_norm(channels):
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with a 1x1 shortcut when the width changes. (B, Cin, H, W) -> (B, Cout, H, W)."""

    def __init__(self, in_channels, out_channels, dropout=0.0):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 conv projections (computed with SDPA). (B, C, H, W) -> same."""

    def __init__(self, channels):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (B, 1, HW, C): one head over all channels, exactly softmax(q k^T / sqrt(C)) v.
        q, k, v = (proj(hn).reshape(b, 1, c, h * w).transpose(2, 3) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with asymmetric (right/bottom) zero padding, as in LDM. H, W -> H/2, W/2."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv. H, W -> 2H, 2W."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` (ModuleList), `attn` (ModuleList), optional `downsample`/`upsample`."""


def _run_level(level, h):
    """Resnet blocks of one level, each followed by its attention block where the level has them."""
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn) > 0:
            h = level.attn[i](h)
    return h


class _Mid(nn.Module):
    def __init__(self, channels, dropout):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


# --------------------------------------------------------------------------------
#                               Encoder / Decoder
# --------------------------------------------------------------------------------

class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, 2*z_channels, H/2^(L-1), W/2^(L-1)) with L = len(ch_mult)."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, in_channels, z_channels, dropout=0.0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths_in = (1,) + tuple(ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = _Level()
            block_in, block_out = ch * widths_in[i], ch * mult
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in, dropout)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, out_ch, h*2^(L-1), w*2^(L-1))."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, resolution, out_ch, z_channels, dropout=0.0):
        super().__init__()
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout)
        up = []
        for i in reversed(range(len(ch_mult))):
            level = _Level()
            block_out = ch * ch_mult[i]
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)  # indexed by level, like the encoder: up[0] is full resolution
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """Posterior N(mean, std^2) over latents; `params` is (B, 2C, h, w) = [mean, logvar], logvar clamped to [-30, 20]."""

    def __init__(self, params):
        self.mean, logvar = torch.chunk(params, 2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self):
        return self.mean

    def sample(self, generator=None):
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise


class AutoencoderKL(nn.Module):
    """LDM KL autoencoder. `encode(x)`: x (B, in_channels, H, W) in [-1, 1] -> DiagonalGaussian over
    (B, embed_dim, H/f, W/f) with f = 2^(len(ch_mult)-1). `decode(z)` -> images in about [-1, 1]."""

    def __init__(self, embed_dim=32, ch_mult=(1, 1, 2, 2, 4), ch=128, num_res_blocks=2, attn_resolutions=(16,),
                 resolution=256, in_channels=3, out_ch=3, z_channels=None, dropout=0.0):
        super().__init__()
        z_channels = z_channels or embed_dim
        self.config = dict(embed_dim=embed_dim, ch_mult=tuple(ch_mult), ch=ch, num_res_blocks=num_res_blocks,
                           attn_resolutions=tuple(attn_resolutions), resolution=resolution,
                           in_channels=in_channels, out_ch=out_ch, z_channels=z_channels)
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, in_channels, z_channels, dropout)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, attn_resolutions, resolution, out_ch, z_channels, dropout)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    @property
    def latent_channels(self):
        return self.config["embed_dim"]

    @property
    def downsample_factor(self):
        return 2 ** (len(self.config["ch_mult"]) - 1)

    def encode(self, x):
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x):
        return self.decode(self.encode(x).mode())


# --------------------------------------------------------------------------------
#                        Training-free demo tokenizer
# --------------------------------------------------------------------------------

def _dct_basis(size, num):
    """The `num` lowest-frequency 2-D DCT-II basis images of size x size, orthonormal rows: (num, size*size)."""
    n = torch.arange(size, dtype=torch.float64)
    k = torch.arange(size, dtype=torch.float64)[:, None]
    d1 = torch.cos(math.pi * (n + 0.5) * k / size) * math.sqrt(2.0 / size)
    d1[0] /= math.sqrt(2.0)
    order = sorted(((u, v) for u in range(size) for v in range(size)), key=lambda uv: (uv[0] + uv[1], uv[0]))[:num]
    basis = torch.stack([torch.outer(d1[u], d1[v]).reshape(-1) for u, v in order])
    return basis.float()


class DCTDemoTokenizer(nn.Module):
    """Offline stand-in for the VA-VAE with its interface and latent layout: (B, 3, H, W) in [-1, 1] ->
    32 channels at H/16 x W/16, holding the 32 lowest 2-D DCT coefficients of each 16x16 patch of the
    channel-mean image. Decoding projects back and replicates to 3 channels, so colour is not kept:
    it is meant for grayscale demos. Deterministic, no weights, no training."""

    def __init__(self, latent_channels=32, patch=16):
        super().__init__()
        self.patch = patch
        self.config = dict(kind="dct_demo", embed_dim=latent_channels, patch=patch)
        self.register_buffer("basis", _dct_basis(patch, latent_channels), persistent=False)

    @property
    def latent_channels(self):
        return self.config["embed_dim"]

    @property
    def downsample_factor(self):
        return self.patch

    def encode(self, x):
        b, _, h, w = x.shape
        p = self.patch
        gray = x.mean(dim=1, keepdim=True)
        patches = F.unfold(gray, kernel_size=p, stride=p)                       # (B, p*p, h/p * w/p)
        coeffs = torch.einsum("kn,bnl->bkl", self.basis.to(x.dtype), patches)   # (B, C, L)
        mean = coeffs.reshape(b, -1, h // p, w // p)
        return DiagonalGaussian(torch.cat([mean, torch.full_like(mean, -30.0)], dim=1))

    def decode(self, z):
        b, c, h, w = z.shape
        p = self.patch
        patches = torch.einsum("kn,bkl->bnl", self.basis.to(z.dtype), z.reshape(b, c, h * w))
        gray = F.fold(patches, output_size=(h * p, w * p), kernel_size=p, stride=p)
        return gray.expand(-1, 3, -1, -1).contiguous()


# --------------------------------------------------------------------------------
#                                     Loader
# --------------------------------------------------------------------------------

def infer_vavae_config(state_dict):
    """Architecture from tensor shapes: ch, ch_mult, num_res_blocks, embed_dim, z_channels, in/out channels, attention levels."""
    needed = ["encoder.conv_in.weight", "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_out.weight"]
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise CheckpointError(f"not a VA-VAE/LDM AutoencoderKL state dict: missing {', '.join(missing)}")
    ch, in_channels = state_dict["encoder.conv_in.weight"].shape[:2]
    levels = sorted({int(m.group(1)) for k in state_dict for m in [re.match(r"encoder\.down\.(\d+)\.", k)] if m})
    ch_mult = tuple(state_dict[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    num_res_blocks = len({m.group(1) for k in state_dict for m in [re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)] if m})
    resolution = 256
    attn_resolutions = tuple(resolution // 2 ** i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state_dict)
    return dict(embed_dim=state_dict["quant_conv.weight"].shape[0] // 2, ch_mult=ch_mult, ch=int(ch),
                num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, resolution=resolution,
                in_channels=int(in_channels), out_ch=state_dict["decoder.conv_out.weight"].shape[0],
                z_channels=state_dict["post_quant_conv.weight"].shape[0])


def check_state_dict(model, state_dict, what):
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys (up to 5 of each)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{len(keys)} {name}: {', '.join(keys[:5])}{more}")
    if problems:
        raise CheckpointError(f"{what}: does not match the model: " + "; ".join(problems))


def _read_state_dict(path, trust):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({str(e)[:120]}); download it again") from None
    obj = safe_torch_load(path, trust=trust, trust_flag="--trust_checkpoint")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict (expected {{'state_dict': ...}} or a flat dict of tensors)")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_vavae(path, device="cpu", dtype=torch.float32, trust=False, downsample_factor=16, latent_channels=None):
    """Load a VA-VAE tokenizer in eval mode with frozen weights.

    `path`: the released training checkpoint (`{'state_dict': ...}` plus anything else), a bare state dict
    `.pt`, a `.safetensors` file, or the word `demo` for the training-free `DCTDemoTokenizer`.
    The architecture is inferred from the shapes; a tokenizer whose downsampling factor (or, if given,
    latent channel count) differs is refused. Raises CheckpointError with a one-line message."""
    if str(path) == "demo":
        model = DCTDemoTokenizer(latent_channels or 32, downsample_factor)
    else:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise CheckpointError(f"tokenizer file {path} not found: put {VAVAE_FILENAME} there "
                                  f"(python pretrained/download.py, or {VAVAE_URL}) or pass --vavae_path "
                                  f"(--vavae_path demo for the offline demo tokenizer)")
        state_dict = _read_state_dict(path, trust)
        state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(EXTRA_KEY_PREFIXES)}
        try:
            config = infer_vavae_config(state_dict)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except (KeyError, IndexError, ZeroDivisionError):
            raise CheckpointError(f"{path}: tensor shapes do not describe an LDM AutoencoderKL") from None
        with torch.device("meta"):
            skeleton = AutoencoderKL(**config)
        check_state_dict(skeleton, state_dict, path)
        factor = 2 ** (len(config["ch_mult"]) - 1)
        if factor != downsample_factor:
            raise CheckpointError(f"{path}: this is an f{factor}d{config['embed_dim']} autoencoder; the pipeline needs "
                                  f"an f{downsample_factor} VA-VAE such as {VAVAE_FILENAME}")
        model = AutoencoderKL(**config)
        model.load_state_dict(state_dict, strict=True)
    if latent_channels is not None and model.latent_channels != latent_channels:
        raise CheckpointError(f"{path}: tokenizer has {model.latent_channels} latent channels, expected {latent_channels}")
    model.source = str(path)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
