"""models/: checkpoint compatibility, loaders, DiT behaviour and the transport maths."""

import json
import pickle

import pytest
import torch

from models.lightningdit import (LightningDiT, LightningDiT_models, RELEASE_FLAGS, clean_state_dict,
                                 dit_state_dict_from_checkpoint)
from models.safe_load import CheckpointError, safe_torch_load
from models.transport import channel_cosine, sample, time_grid, training_losses
from models.vavae import AutoencoderKL, DCTDemoTokenizer, load_vavae
from tests.helpers import REFERENCE_DIR, make_tiny_vavae_checkpoint, Payload

# --------------------------------------------------------------------------------
#                 Key/shape equality with the released checkpoints
# --------------------------------------------------------------------------------


def _reference_shapes(name):
    data = json.loads((REFERENCE_DIR / name).read_text())
    return {t["key"]: tuple(t["shape"]) for t in data["tensors"]}


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_vavae_matches_release_manifest():
    with torch.device("meta"):
        model = AutoencoderKL()
    assert _shapes(model) == _reference_shapes("vavae_f16d32_state_dict.json")


@pytest.mark.parametrize("name,manifest,num_classes", [
    ("LightningDiT-XL/1", "lightningdit_xl1_state_dict.json", 1000),
    ("LightningDiT-B/1", "lightningdit_b1_state_dict.json", 10),
])
def test_dit_matches_release_manifest(name, manifest, num_classes):
    with torch.device("meta"):
        model = LightningDiT_models[name](input_size=16, num_classes=num_classes, in_channels=32, **RELEASE_FLAGS)
    assert _shapes(model) == _reference_shapes(manifest)


def test_registry_sizes_match_reference():
    reference = json.loads((REFERENCE_DIR / "lightningdit_models.json").read_text())["models"]
    for name, info in reference.items():
        with torch.device("meta"):
            model = LightningDiT_models[name](input_size=16, num_classes=1000, in_channels=32, **RELEASE_FLAGS)
        sd = model.state_dict()
        assert len(sd) == info["num_tensors"], name
        assert sum(v.numel() for v in sd.values()) == info["num_elements"], name


# --------------------------------------------------------------------------------
#                              VA-VAE loader
# --------------------------------------------------------------------------------

def test_loader_accepts_release_layout_bare_and_safetensors(tmp_path):
    path, reference = make_tiny_vavae_checkpoint(tmp_path / "release.pt", layout="release")
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    expected = reference.encode(x).mean
    for layout in ("release", "bare", "safetensors"):
        p, _ = make_tiny_vavae_checkpoint(tmp_path / f"vae_{layout}", layout=layout, model=reference)
        model = load_vavae(p)
        assert model.config["ch"] == reference.config["ch"]
        assert model.config["ch_mult"] == reference.config["ch_mult"]
        torch.testing.assert_close(model.encode(x).mean, expected)
        assert model.decode(expected).shape == (2, 3, 32, 48)


def test_loader_release_checkpoint_with_objects_loads_and_payload_stays_inert(tmp_path):
    marker = tmp_path / "pwned"
    path, reference = make_tiny_vavae_checkpoint(tmp_path / "hyper.pt", layout="release",
                                                 extra={"hyper_parameters": Payload(str(marker))})
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # torch's allow-list refuses it ...
    model = load_vavae(path)  # ... our restricted path still loads the weights
    assert not marker.exists(), "payload ran"
    torch.testing.assert_close(model.encoder.conv_in.weight, reference.encoder.conv_in.weight)


def test_pure_code_pickle_is_refused_and_payload_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump(Payload(str(marker)), f)
    with pytest.raises(CheckpointError, match="--trust_checkpoint"):
        load_vavae(path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="--trust_checkpoint"):
        safe_torch_load(path)
    assert not marker.exists()


def test_loader_rejects_truncated_missing_misshaped_and_wrong_arch(tmp_path):
    path, reference = make_tiny_vavae_checkpoint(tmp_path / "ok.pt", layout="release")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vavae(truncated)

    with pytest.raises(CheckpointError, match="not found.*download.py"):
        load_vavae(tmp_path / "nope.pt")

    sd = dict(reference.state_dict())
    sd["decoder.conv_in.bias"] = torch.zeros(3)
    torch.save(sd, tmp_path / "misshaped.pt")
    with pytest.raises(CheckpointError, match="mis-shaped: decoder.conv_in.bias"):
        load_vavae(tmp_path / "misshaped.pt")

    sd = dict(reference.state_dict())
    del sd["decoder.up.0.block.0.conv1.weight"]
    sd["decoder.surprise"] = torch.zeros(1)
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing: decoder.up.0.block.0.conv1.weight.*unexpected: decoder.surprise"):
        load_vavae(tmp_path / "missing.pt")

    # An SD-VAE-shaped (f8, 4 latent channels) autoencoder is a different tokenizer.
    sd_vae = AutoencoderKL(embed_dim=4, ch_mult=(1, 2, 4, 4), ch=32, num_res_blocks=1, attn_resolutions=())
    torch.save({"state_dict": sd_vae.state_dict()}, tmp_path / "f8d4.pt")
    with pytest.raises(CheckpointError, match="f8d4"):
        load_vavae(tmp_path / "f8d4.pt")

    with pytest.raises(CheckpointError, match="latent channels"):
        load_vavae(path, latent_channels=16)


def test_posterior_contract():
    model = AutoencoderKL(embed_dim=8, ch_mult=(1, 1, 1, 1, 1), ch=32, num_res_blocks=1).eval()
    with torch.no_grad():
        post = model.encode(torch.zeros(1, 3, 32, 32))
    assert post.mean.shape == (1, 8, 2, 2) and post.std.shape == (1, 8, 2, 2)
    assert torch.equal(post.mode(), post.mean)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(post.sample(generator=g1), post.sample(generator=g2))
    assert post.logvar.min() >= -30 and post.logvar.max() <= 20


def test_demo_tokenizer_reconstructs_smooth_images_and_has_layout():
    tok = load_vavae("demo")
    assert isinstance(tok, DCTDemoTokenizer) and tok.latent_channels == 32
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 96), indexing="ij")
    img = (0.5 * torch.sin(2 * xx) * torch.cos(3 * yy)).expand(1, 3, 64, 96)
    z = tok.encode(img).mean
    assert z.shape == (1, 32, 4, 6)
    rec = tok.decode(z)
    assert (rec - img).abs().max() < 0.05


# --------------------------------------------------------------------------------
#                                 LightningDiT
# --------------------------------------------------------------------------------

def _tiny_dit(**kw):
    args = dict(input_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=3,
                **RELEASE_FLAGS)
    args.update(kw)
    return LightningDiT(**args)


def test_zero_initialised_dit_outputs_zero():
    model = _tiny_dit().eval()
    out = model(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 3]))
    assert out.shape == (2, 4, 8, 8) and torch.count_nonzero(out) == 0


def test_label_dropout_and_null_class():
    model = _tiny_dit(class_dropout_prob=0.5)
    emb = model.y_embedder
    assert emb.embedding_table.num_embeddings == 4  # 3 classes + null
    y = torch.zeros(4000, dtype=torch.long)
    torch.manual_seed(0)
    out = emb(y, train=True)
    is_null = torch.isclose(out, emb.embedding_table.weight[3]).all(dim=1)
    assert 0.45 < is_null.float().mean() < 0.55
    assert not torch.isclose(emb(y, train=False), emb.embedding_table.weight[3]).all(dim=1).any()


def test_qknorm_and_wo_shift_variants_run_and_gradient_checkpointing_matches():
    torch.manual_seed(0)
    for kw in (dict(use_qknorm=True), dict(wo_shift=True), dict(use_swiglu=False, use_rmsnorm=False, use_rope=False)):
        model = _tiny_dit(**kw)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
        x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 1])
        model.eval()
        ref = model(x, t, y)
        model.use_checkpoint = True
        model.train()
        model.y_embedder.dropout_prob = 0.0
        out = model(x, t, y)
        out.sum().backward()
        torch.testing.assert_close(out, ref)
        assert model.blocks[0].attn.qkv.weight.grad is not None


def test_checkpoint_container_and_prefixes():
    model = _tiny_dit()
    sd = model.state_dict()
    ema = {k: v + 1 for k, v in sd.items()}
    ddp = {"module." + k: v for k, v in sd.items()}
    compiled = {"_orig_mod." + k: v for k, v in ema.items()}
    assert torch.equal(dit_state_dict_from_checkpoint({"model": ddp, "ema": compiled})["pos_embed"], ema["pos_embed"])
    assert torch.equal(dit_state_dict_from_checkpoint({"model": ddp, "ema": compiled}, prefer_ema=False)["pos_embed"],
                       sd["pos_embed"])
    model.load_state_dict(dit_state_dict_from_checkpoint(sd), strict=True)
    assert clean_state_dict({"module._orig_mod.a": 1, "_orig_mod.module.b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(CheckpointError):
        dit_state_dict_from_checkpoint({"opt": {"state": 1}})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_finite_and_close(dtype):
    torch.manual_seed(0)
    model = _tiny_dit(use_qknorm=True)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([0, 1])
    ref = model(x, t, y)
    try:
        with torch.autocast("cpu", dtype=dtype):
            out = model(x, t, y)
    except RuntimeError as e:  # fp16 autocast is not available for every CPU op on every build
        pytest.fail(f"autocast {dtype} failed on CPU: {e}")
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.02


def test_a_fresh_model_trains_in_fp16_with_the_grad_scaler():
    """The T4 path from step 0: a zero-initialised output layer makes the cosine loss's gradient ~1/eps at
    v = 0; it must not overflow fp16 (the grad scaler skipped every step before the output layer ran in fp32)."""
    from pipeline.train import make_grad_scaler, make_optimizer, train_step
    torch.manual_seed(0)
    model = _tiny_dit()
    params = [p for p in model.parameters() if p.requires_grad]
    tcfg = dict(lr=2e-4, beta1=0.9, beta2=0.95, weight_decay=0.0, grad_clip=1.0, cos_loss_weight=1.0)
    opt, cpu = make_optimizer(params, tcfg), torch.device("cpu")
    scaler = make_grad_scaler(cpu, torch.float16)
    finite = []
    for _ in range(3):
        x1, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 0, 1])
        _, _, ok = train_step(model, params, opt, scaler, x1, y, tcfg["lr"], tcfg, cpu, torch.float16)
        finite.append(bool(ok))
    assert finite == [True, True, True] and scaler.get_scale() == 2.0 ** 16
    assert model.final_layer.linear.weight.abs().sum() > 0   # it trained


# --------------------------------------------------------------------------------
#                                   Transport
# --------------------------------------------------------------------------------

class ConstantVelocity(torch.nn.Module):
    """v = w * ones, independent of input; records calls."""
    num_classes = 2

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x, t, y):
        return torch.full_like(x, self.w)


def test_channel_cosine_matches_torch_and_has_a_bounded_gradient_at_zero():
    torch.manual_seed(0)
    v, u = torch.randn(3, 32, 4, 4), torch.randn(3, 32, 4, 4)
    torch.testing.assert_close(channel_cosine(v, u), torch.nn.functional.cosine_similarity(v, u, dim=1),
                               atol=1e-6, rtol=1e-6)
    v0 = torch.zeros_like(u, requires_grad=True)
    channel_cosine(v0, u).sum().backward()
    assert torch.isfinite(v0.grad).all() and v0.grad.abs().max() <= 1e4   # 1 / sqrt(eps); torch's: ~1e8


def test_training_losses_hand_computed():
    x1 = torch.tensor([[[[1.0]], [[0.0]]]])   # (1, 2, 1, 1)
    x0 = torch.tensor([[[[0.0]], [[1.0]]]])
    t = torch.tensor([0.25])
    model = ConstantVelocity(1.0)             # v = (1, 1); u = (1, -1)
    out = training_losses(model, x1, torch.tensor([0]), x0=x0, t=t)
    assert torch.allclose(out["mse"], torch.tensor([(0.0 + 4.0) / 2]))
    assert torch.allclose(out["cos"], torch.tensor([1.0]), atol=1e-6)  # v orthogonal to u
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, t_, y):
            seen["xt"], seen["t"] = x.clone(), t_.clone()
            return x1 - x0
    out = training_losses(Spy(), x1, torch.tensor([0]), x0=x0, t=t)
    assert torch.allclose(seen["xt"], 0.25 * x1 + 0.75 * x0)
    assert out["mse"].item() == 0 and abs(out["cos"].item()) < 1e-6


def test_time_grid_and_shift():
    assert torch.allclose(time_grid(4), torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    shifted = time_grid(4, timestep_shift=3.0)
    assert torch.allclose(shifted, torch.tensor([0, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64))


class AffineFlow(torch.nn.Module):
    """v(x, t) = a * x: the exact flow is x(1) = x(0) * exp(a)."""
    num_classes = 2

    def __init__(self, a):
        super().__init__()
        self.a = a
        self.calls = 0

    def forward(self, x, t, y):
        self.calls += 1
        return self.a * x


class TimeFlow(torch.nn.Module):
    """v = 2 t: exact x(1) = x(0) + 1; Euler on the grid sums 2 t_i dt."""
    num_classes = 2

    def forward(self, x, t, y):
        return 2 * t.view(-1, 1, 1, 1).expand_as(x)


def test_euler_is_exact_on_the_grid_and_heun_second_order():
    z = torch.ones(1, 1, 1, 1)
    y = torch.tensor([0])
    n = 8
    grid = time_grid(n)
    euler_expected = 1 + sum(2 * grid[i].item() * (1 / n) for i in range(n))
    assert abs(sample(TimeFlow(), z, y, n).item() - euler_expected) < 1e-6
    assert abs(sample(TimeFlow(), z, y, n, method="heun").item() - 2.0) < 1e-6  # Heun is exact for linear-in-t v

    exact = torch.exp(torch.tensor(1.0)).item()
    errors = [abs(sample(AffineFlow(1.0), z, y, n, method="heun").item() - exact) for n in (4, 8, 16)]
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5  # error ~ 1/n^2
    model = AffineFlow(1.0)
    sample(model, z, y, 5)
    assert model.calls == 5


def test_sampling_from_a_later_start_time():
    z = torch.ones(1, 1, 1, 1)
    y = torch.tensor([0])
    # v = 2t from t = 0.5: exact x(1) = x(0.5) + 1 - 0.25; Heun is exact for linear-in-t v
    assert abs(sample(TimeFlow(), z, y, 3, method="heun", t_start=0.5).item() - 1.75) < 1e-6
    # Euler's 4 steps sit at t = 0.2, 0.4, 0.6, 0.8 on [0.2, 1]: x = 1 + sum(2 t_i) * 0.2
    assert abs(sample(TimeFlow(), z, y, 4, t_start=0.2).item() - (1 + 2 * (0.2 + 0.4 + 0.6 + 0.8) * 0.2)) < 1e-6
    model = AffineFlow(1.0)
    sample(model, z, y, 5, t_start=0.4)
    assert model.calls == 5   # num_steps counts the steps over [t_start, 1]
    assert torch.equal(sample(AffineFlow(0.5), z, y, 6), sample(AffineFlow(0.5), z, y, 6, t_start=0.0))
    with pytest.raises(ValueError, match="t_start"):
        sample(AffineFlow(1.0), z, y, 2, t_start=1.0)


class LabelVelocity(torch.nn.Module):
    """Conditional velocity c (per channel), unconditional 0: guided v = cfg_scale * c on every channel."""
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, y):
        self.batches.append(x.shape[0])
        cond = (y != self.num_classes).float().view(-1, 1, 1, 1)
        channel = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1, 1)
        return cond * channel * torch.ones_like(x)


def test_guidance_on_all_channels_with_interval():
    z = torch.zeros(2, 32, 2, 2)
    y = torch.tensor([0, 1])
    model = LabelVelocity()
    out = sample(model, z, y, 4, cfg_scale=3.0)
    channel = torch.arange(1, 33, dtype=torch.float32).view(1, -1, 1, 1)
    torch.testing.assert_close(out, (3.0 * channel).expand_as(out))
    assert model.batches == [4, 4, 4, 4]  # cond + uncond in one forward pass

    model = LabelVelocity()
    out = sample(model, z, y, 4, cfg_scale=3.0, cfg_interval_start=0.5)
    # t = 0, 0.25 unguided (v = c), t = 0.5, 0.75 guided (v = 3c): x = 0.25*(1+1+3+3) c
    torch.testing.assert_close(out, (2.0 * channel).expand_as(out))
    assert model.batches == [2, 2, 4, 4]


def test_block_traces_without_graph_breaks():
    import torch._dynamo as dynamo
    model = _tiny_dit(use_qknorm=True).eval()
    x = model.x_embedder(torch.randn(2, 4, 8, 8))
    c = model.t_embedder(torch.rand(2)) + model.y_embedder(torch.tensor([0, 1]), False)
    explanation = dynamo.explain(model.blocks[0])(x, c, model.feat_rope)
    assert explanation.graph_break_count == 0, explanation.break_reasons
