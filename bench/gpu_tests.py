"""CUDA-only checks, run by bench/gpu_check.sh on a GPU machine (not collected by the CPU test suite)."""

import pytest
import torch

from models.lightningdit import RELEASE_FLAGS, LightningDiT_models
from models.transport import sample, training_losses
from pipeline.common import autocast, pick_precision

# Skipped, not an error, where there is no GPU (bench/gpu_check.sh runs them on one).
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")
DEV = torch.device("cuda")


def _model(name="LightningDiT-B/1", **kw):
    torch.manual_seed(0)
    m = LightningDiT_models[name](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS, **kw).to(DEV)
    for p in m.parameters():   # non-zero outputs (a fresh model is zero-initialised)
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    return m


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_forward_close_to_fp32(dtype):
    m = _model().eval()
    x, t, y = torch.randn(8, 32, 16, 16, device=DEV), torch.rand(8, device=DEV), torch.arange(8, device=DEV)
    with torch.no_grad():
        ref = m(x, t, y)
        with autocast(DEV, dtype):
            out = m(x, t, y)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.02


def test_fp16_grad_scaler_training_steps_are_finite():
    m = _model().train()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-4, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    x1, y = torch.randn(32, 32, 16, 16, device=DEV), torch.randint(10, (32,), device=DEV)
    for _ in range(5):
        with autocast(DEV, torch.float16):
            loss = training_losses(m, x1, y, bounded_cosine=True)["loss"].mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in m.parameters())


def test_fp16_training_starts_from_a_fresh_model():
    """A zero-initialised output layer (as stage 2 starts) must not make every fp16 step overflow."""
    from pipeline.train import make_grad_scaler, make_optimizer, train_step
    torch.manual_seed(0)
    m = LightningDiT_models["LightningDiT-B/1"](input_size=16, in_channels=32, num_classes=10, **RELEASE_FLAGS).to(DEV)
    params = [p for p in m.parameters() if p.requires_grad]
    tcfg = dict(lr=2e-4, beta1=0.9, beta2=0.95, weight_decay=0.0, grad_clip=1.0, cos_loss_weight=1.0)
    opt, scaler = make_optimizer(params, tcfg), make_grad_scaler(DEV, torch.float16)
    finite = []
    for _ in range(5):
        x1, y = torch.randn(32, 32, 16, 16, device=DEV), torch.randint(10, (32,), device=DEV)
        finite.append(bool(train_step(m, params, opt, scaler, x1, y, 2e-4, tcfg, DEV, torch.float16)[2]))
    assert sum(finite) >= 4, finite


def test_auto_precision_matches_the_card():
    major, _ = torch.cuda.get_device_capability()
    assert pick_precision("auto", DEV) == (torch.bfloat16 if major >= 8 else torch.float16)


def test_compile_matches_eager_and_has_no_graph_break_in_the_block():
    import torch._dynamo as dynamo
    m = _model().eval()
    x, t, y = torch.randn(4, 32, 16, 16, device=DEV), torch.rand(4, device=DEV), torch.arange(4, device=DEV)
    explanation = dynamo.explain(m.blocks[0])(m.x_embedder(x), m.t_embedder(t), m.feat_rope)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(m)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), m(x, t, y), atol=2e-3, rtol=2e-3)


def test_sdpa_flash_kernel_runs_in_bf16():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    m = _model().eval()
    x, t, y = torch.randn(4, 32, 16, 16, device=DEV), torch.rand(4, device=DEV), torch.arange(4, device=DEV)
    with torch.no_grad(), autocast(DEV, torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = m(x, t, y)
    assert torch.isfinite(out).all()


def test_guided_sampling_on_gpu():
    m = _model().eval()
    z = torch.randn(4, 32, 16, 16, device=DEV)
    with autocast(DEV, torch.bfloat16):
        x = sample(m, z, torch.arange(4, device=DEV), 10, method="heun", cfg_scale=2.0, cfg_interval_start=0.1)
    assert x.shape == z.shape and torch.isfinite(x).all()
