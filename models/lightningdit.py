"""
LightningDiT: a DiT with RoPE, SwiGLU, RMSNorm, optional QK-norm and optional shift-free adaLN,
state-dict compatible with the released LightningDiT checkpoints (strict=True).

Conventions: x is (B, C, H, W) latents, t is (B,) in [0, 1] with t=0 pure noise and t=1 data,
y is (B,) int64 labels where label `num_classes` is the null (unconditional) class.
The model predicts the velocity dx/dt, shape (B, C, H, W).
"""

import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models.safe_load import CheckpointError, safe_torch_load


# --------------------------------------------------------------------------------
#                               Layers
# --------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dim, computed in float32 and cast back (safe under fp16/bf16)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class SwiGLUFFN(nn.Module):
    """w3(silu(a) * b) where [a, b] = w12(x): both input projections packed in one matmul."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class GeluMLP(nn.Module):
    """fc1 - GELU(tanh) - fc2 (the classic DiT MLP, used when use_swiglu=False)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def rotate_half(x):
    """Pairwise rotation (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...) along the last dim."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


class VisionRoPE2D(nn.Module):
    """EVA-style 2-D rotary embedding. The head dim is split in two halves: the first rotates with the
    row index, the second with the column index; frequencies 1/10000^(2i/d) for d = head_dim/2, each
    repeated for its pair. Buffers `freqs_cos`/`freqs_sin`: (grid*grid, head_dim)."""

    def __init__(self, half_head_dim, grid_size, theta=10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, half_head_dim, 2)[: half_head_dim // 2].float() / half_head_dim))
        pos = torch.arange(grid_size).float()
        f = torch.outer(pos, freqs).repeat_interleave(2, dim=-1)                  # (grid, half_head_dim)
        rows = f[:, None, :].expand(grid_size, grid_size, -1)
        cols = f[None, :, :].expand(grid_size, grid_size, -1)
        table = torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, -1)  # (N, head_dim)
        self.register_buffer("freqs_cos", table.cos())
        self.register_buffer("freqs_sin", table.sin())

    def forward(self, x):
        """x: (B, heads, N, head_dim) -> same, rotated by position."""
        return x * self.freqs_cos.to(x.dtype) + rotate_half(x) * self.freqs_sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv, optional QK-norm and RoPE, SDPA kernel."""

    def __init__(self, dim, num_heads, qk_norm=False, use_rmsnorm=False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        norm = RMSNorm if use_rmsnorm else (lambda d: nn.LayerNorm(d, eps=1e-6))
        self.q_norm = norm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


def modulate(x, shift, scale):
    """adaLN: x * (1 + scale) + shift, with (B, D) conditioning broadcast over tokens; shift may be None."""
    x = x * (1 + scale.unsqueeze(1))
    return x if shift is None else x + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """t (B,) float -> (B, D): sinusoidal features [cos, sin] of t (scaled as in DiT) through a 2-layer MLP."""

    def __init__(self, hidden_size, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t):
        return self.mlp(self.timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """y (B,) -> (B, D). Row `num_classes` is the null class; in training, labels are replaced by it with
    probability `dropout_prob` (classifier-free guidance)."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, y, train):
        if train and self.dropout_prob > 0:
            drop = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


class LightningDiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero gating. x (B, N, D), c (B, D) -> (B, N, D)."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, use_qknorm=False, use_swiglu=False,
                 use_rmsnorm=False, wo_shift=False):
        super().__init__()
        make_norm = (lambda: RMSNorm(hidden_size)) if use_rmsnorm else \
            (lambda: nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
        self.norm1 = make_norm()
        self.attn = Attention(hidden_size, num_heads, qk_norm=use_qknorm, use_rmsnorm=use_rmsnorm)
        self.norm2 = make_norm()
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.mlp = SwiGLUFFN(hidden_size, int(2 / 3 * mlp_hidden)) if use_swiglu else GeluMLP(hidden_size, mlp_hidden)
        self.wo_shift = wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, (4 if wo_shift else 6) * hidden_size))

    def forward(self, x, c, rope=None):
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """Norm, adaLN modulation, linear to patch pixels: (B, N, D) -> (B, N, p*p*C)."""

    def __init__(self, hidden_size, patch_size, out_channels, use_rmsnorm=False):
        super().__init__()
        self.norm_final = RMSNorm(hidden_size) if use_rmsnorm else nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        h = modulate(self.norm_final(x), shift, scale)
        # The output linear runs in fp32 under autocast. It is zero-initialised, so at the first step v = 0
        # and the cosine loss's gradient is large (up to 1e4 per pixel, models.transport.channel_cosine);
        # times the fp16 grad scaler's 2^16 it overflowed fp16 here and every step of a fresh fp16 run (the
        # T4 path) was skipped. A no-op in fp32; a negligible cost (D -> p*p*C per token).
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.linear(h.float())


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, D) with a p x p stride-p conv; N = (H/p)^2."""

    def __init__(self, input_size, patch_size, in_channels, hidden_size):
        super().__init__()
        self.patch_size = patch_size
        self.num_patches = (input_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_pos_embed_2d(dim, grid_size):
    """Fixed 2-D sin-cos table (grid*grid, dim): first half encodes the column (w) index, second the row (h),
    each as [sin, cos] of pos/10000^(2i/(dim/2)) (the MAE/DiT table)."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    cols, rows = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    return np.concatenate([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], axis=1)


# --------------------------------------------------------------------------------
#                               LightningDiT
# --------------------------------------------------------------------------------

class LightningDiT(nn.Module):
    """Class-conditional velocity model. forward(x (B,C,H,W), t (B,) in [0,1], y (B,)) -> (B,C,H,W)."""

    def __init__(self, input_size=16, patch_size=1, in_channels=32, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=False, use_qknorm=False,
                 use_swiglu=False, use_rope=False, use_rmsnorm=False, wo_shift=False, use_checkpoint=False):
        super().__init__()
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           class_dropout_prob=class_dropout_prob, num_classes=num_classes, learn_sigma=learn_sigma,
                           use_qknorm=use_qknorm, use_swiglu=use_swiglu, use_rope=use_rope,
                           use_rmsnorm=use_rmsnorm, wo_shift=wo_shift)
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.use_checkpoint = use_checkpoint  # gradient checkpointing of every block while training

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        grid = input_size // patch_size
        self.feat_rope = VisionRoPE2D(hidden_size // num_heads // 2, grid) if use_rope else None
        self.blocks = nn.ModuleList([
            LightningDiTBlock(hidden_size, num_heads, mlp_ratio, use_qknorm, use_swiglu, use_rmsnorm, wo_shift)
            for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, use_rmsnorm)
        self.initialize_weights()

    def initialize_weights(self):
        """Xavier linears, fixed sin-cos pos_embed, N(0, 0.02) label/time embeddings, zeroed adaLN and output
        layers, so that a fresh model outputs exactly zero."""
        if self.pos_embed.is_meta:
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        grid = int(self.x_embedder.num_patches ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_pos_embed_2d(self.pos_embed.shape[-1], grid)).float()[None])
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for p in (self.final_layer.adaLN_modulation[-1].weight, self.final_layer.adaLN_modulation[-1].bias,
                  self.final_layer.linear.weight, self.final_layer.linear.bias):
            nn.init.zeros_(p)

    def unpatchify(self, x, h, w):
        """(B, N, p*p*C) -> (B, C, h*p, w*p)."""
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y):
        """x (B, C, H, W), t (B,) in [0, 1] (0 noise, 1 data), y (B,) labels (num_classes = null) -> velocity (B, C, H, W)."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, self.feat_rope, use_reentrant=False)
            else:
                x = block(x, c, self.feat_rope)
        x = self.unpatchify(self.final_layer(x, c), h, w)
        if self.learn_sigma:
            x = x[:, : self.in_channels]
        return x


# --------------------------------------------------------------------------------
#                               Registry
# --------------------------------------------------------------------------------

_ARCHS = {
    # name: (depth, hidden_size, patch_size, num_heads). The reference names first, then small
    # models of our own for CPU demos and tests.
    "LightningDiT-B/1": (12, 768, 1, 12), "LightningDiT-B/2": (12, 768, 2, 12),
    "LightningDiT-L/2": (24, 1024, 2, 16),
    "LightningDiT-XL/1": (28, 1152, 1, 16), "LightningDiT-XL/2": (28, 1152, 2, 16),
    "LightningDiT-1p0B/1": (24, 1536, 1, 24), "LightningDiT-1p0B/2": (24, 1536, 2, 24),
    "LightningDiT-1p6B/1": (28, 1792, 1, 28), "LightningDiT-1p6B/2": (28, 1792, 2, 28),
    "LightningDiT-S/1": (12, 384, 1, 6), "LightningDiT-S/2": (12, 384, 2, 6),
    "LightningDiT-Tiny/1": (4, 192, 1, 3), "LightningDiT-Tiny/2": (4, 192, 2, 3),
}


def _factory(depth, hidden_size, patch_size, num_heads):
    def make(**kwargs):
        return LightningDiT(depth=depth, hidden_size=hidden_size, patch_size=patch_size, num_heads=num_heads, **kwargs)
    return make


LightningDiT_models = {name: _factory(*arch) for name, arch in _ARCHS.items()}
RELEASE_FLAGS = dict(use_qknorm=False, use_swiglu=True, use_rope=True, use_rmsnorm=True, wo_shift=False)


def model_arch(name):
    """(depth, hidden_size, patch_size, num_heads) of a registry name."""
    return _ARCHS[name]


# --------------------------------------------------------------------------------
#                            Checkpoint loading
# --------------------------------------------------------------------------------

def clean_state_dict(state_dict):
    """Strip the `_orig_mod.` (torch.compile) and leading `module.` (DDP) prefixes, in either order."""
    cleaned = {}
    for key, value in state_dict.items():
        key = key.replace("_orig_mod.", "")
        cleaned[key[len("module."):] if key.startswith("module.") else key] = value
    return cleaned


def dit_state_dict_from_checkpoint(ckpt, prefer_ema=True, path="checkpoint"):
    """The DiT weights of a loaded checkpoint: `ema` (when preferred and present), else `model`, else the
    object itself if it is a flat dict of tensors. Prefixes are cleaned."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a LightningDiT checkpoint (no dict inside)")
    order = ("ema", "model") if prefer_ema else ("model", "ema")
    for key in order:
        if isinstance(ckpt.get(key), dict):
            return clean_state_dict(ckpt[key])
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return clean_state_dict(ckpt)
    raise CheckpointError(f"{path}: not a LightningDiT checkpoint (no 'ema' or 'model' weights found)")


def load_dit_checkpoint(path, trust=False):
    """Read a checkpoint file safely (see models.safe_load); returns the raw dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found")
    return safe_torch_load(path, trust=trust)
