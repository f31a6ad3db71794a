"""Parity with PyTorch modules written here from the public ToST code's formulas (optional).

Outputs and gradients (``interop.official_grads`` vs ``.grad``) for TSSA, CausalTSSA and a
whole small language model loaded through ``interop.load_official(official_state(torch))``;
the vision layers (convolution + BatchNorm in both modes with the running buffers, the Fourier
encoding, class attention) and whole ToST-CAB models with the public names;
also AdamW against ``torch.optim.AdamW`` and ``cross_entropy`` against ``F.cross_entropy``.
Skipped when torch is not installed; torch is never a dependency of the library."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
tnn = torch.nn

from whitebox import interop, models, nn, vision  # noqa: E402

pytestmark = pytest.mark.torch
F64 = np.float64


# --------------------------------------------------------------------------------------------
# The reference modules (names and operations of the public ToST code)
# --------------------------------------------------------------------------------------------


class TorchTSSA(tnn.Module):
    """``AttentionTSSA``."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.heads = num_heads
        self.qkv = tnn.Linear(dim, dim, bias=True)
        self.temp = tnn.Parameter(torch.ones(num_heads, 1))
        self.to_out = tnn.Sequential(tnn.Linear(dim, dim))

    def forward(self, x):
        b, n, D = x.shape
        w = self.qkv(x).view(b, n, self.heads, D // self.heads).transpose(1, 2)  # b h n d
        w_normed = F.normalize(w, dim=-2)
        Pi = F.softmax((w_normed**2).sum(dim=-1) * self.temp, dim=1)  # b h n
        dots = torch.matmul((Pi / (Pi.sum(dim=-1, keepdim=True) + 1e-8)).unsqueeze(-2), w**2)
        attn = 1.0 / (1 + dots)
        out = -torch.mul(w.mul(Pi.unsqueeze(-1)), attn)
        return self.to_out(out.transpose(1, 2).reshape(b, n, D))


class TorchCausalTSSA(tnn.Module):
    """nanoGPT ``CausalSelfAttention`` of the public ToST code."""

    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.n_head = n_head
        self.c_attn = tnn.Linear(n_embd, n_embd)
        self.c_proj = tnn.Linear(n_embd, n_embd)
        self.temp = tnn.Parameter(torch.ones(n_head, 1))
        self.denom_bias = tnn.Parameter(torch.zeros(n_head, block_size, 1))

    def forward(self, x):
        B, T, C = x.shape
        w = self.c_attn(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        w_sq = w**2
        denom = torch.cumsum(w_sq, dim=-2).clamp_min(1e-12)
        w_normed = (w_sq / denom) + self.denom_bias[:, :T, :]
        Pi = F.softmax(torch.sum(w_normed, dim=-1) * self.temp, dim=1)  # B, nh, T
        dots = torch.cumsum(w_sq * Pi.unsqueeze(-1), dim=-2) / (Pi.cumsum(dim=-1) + 1e-8).unsqueeze(
            -1
        )
        y = -torch.mul(w.mul(Pi.unsqueeze(-1)), 1.0 / (1 + dots))
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class TorchCausalSoftmax(tnn.Module):
    """nanoGPT's GPT attention (the baseline)."""

    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.n_head = n_head
        self.c_attn = tnn.Linear(n_embd, 3 * n_embd)
        self.c_proj = tnn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class TorchMLP(tnn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = tnn.Linear(n_embd, 4 * n_embd)
        self.c_proj = tnn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class TorchBlock(tnn.Module):
    def __init__(self, n_embd, n_head, block_size, attention):
        super().__init__()
        self.ln_1 = tnn.LayerNorm(n_embd, eps=1e-5)
        attn = TorchCausalTSSA if attention == "tssa" else TorchCausalSoftmax
        self.attn = attn(n_embd, n_head, block_size)
        self.ln_2 = tnn.LayerNorm(n_embd, eps=1e-5)
        self.mlp = TorchMLP(n_embd)
        self.gamma1 = tnn.Parameter(torch.ones(n_embd))
        self.gamma2 = tnn.Parameter(torch.ones(n_embd))

    def forward(self, x):
        x = x + self.gamma1 * self.attn(self.ln_1(x))
        return x + self.gamma2 * self.mlp(self.ln_2(x))


class TorchLM(tnn.Module):
    def __init__(self, vocab, block_size, n_layer, n_head, n_embd, attention="tssa"):
        super().__init__()
        self.transformer = tnn.ModuleDict(
            dict(
                wte=tnn.Embedding(vocab, n_embd),
                wpe=tnn.Embedding(block_size, n_embd),
                h=tnn.ModuleList(
                    TorchBlock(n_embd, n_head, block_size, attention) for _ in range(n_layer)
                ),
                ln_f=tnn.LayerNorm(n_embd, eps=1e-5),
            )
        )
        self.lm_head = tnn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying

    def forward(self, idx):
        T = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T))
        for blk in self.transformer.h:
            x = blk(x)
        return self.lm_head(self.transformer.ln_f(x))


def randomize_torch(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def torch_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def torch_grads(module):
    return {k: p.grad.numpy() for k, p in module.named_parameters()}


def assert_grads_match(ours, theirs, rtol):
    assert set(ours) == set(theirs) - {"lm_head.weight"}
    for k, g in ours.items():
        np.testing.assert_allclose(g, theirs[k], rtol=rtol, atol=rtol * np.abs(theirs[k]).max(),
                                   err_msg=k)  # fmt: skip


def run_both(ours, theirs, x_np, rng, dtype=torch.float64):
    """Forward both, backward a random G through both; returns outputs and input grads."""
    x_t = torch.tensor(x_np, dtype=dtype, requires_grad=True)
    y_t = theirs(x_t)
    G = rng.standard_normal(tuple(y_t.shape))
    y_t.backward(torch.tensor(G, dtype=dtype))
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    y = ours.forward(x_np.astype(np_dtype))
    dx = ours.backward(G.astype(np_dtype))
    return y, y_t.detach().numpy(), dx, x_t.grad.numpy()


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_heads", [1, 4])
@pytest.mark.parametrize("column_scale", [None, 0.0, 1e-14])
def test_tssa_parity(num_heads, column_scale):
    rng = np.random.default_rng(num_heads)
    theirs = randomize_torch(TorchTSSA(8, num_heads).double(), num_heads)
    if column_scale is not None:
        # one head coordinate with norm over the tokens below 1e-12 (zero or tiny): the floor
        # is active and its clamped side passes no gradient
        with torch.no_grad():
            theirs.qkv.weight[2] *= column_scale
            theirs.qkv.bias[2] = 0.0
    ours = interop.load_official(nn.TSSA(8, num_heads, dtype=F64), torch_state(theirs))
    y, y_t, dx, dx_t = run_both(ours, theirs, rng.standard_normal((2, 5, 8)), rng)
    np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-10, atol=1e-12)
    assert_grads_match(interop.official_grads(ours), torch_grads(theirs), 1e-10)
    np.testing.assert_allclose(ours.last_pi.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("num_heads", [1, 2, 4])
@pytest.mark.parametrize("T", [1, 3, 6])
def test_causal_tssa_parity(num_heads, T):
    rng = np.random.default_rng(T)
    theirs = randomize_torch(TorchCausalTSSA(8, num_heads, 6).double(), T)
    ours = interop.load_official(nn.CausalTSSA(8, num_heads, 6, dtype=F64), torch_state(theirs))
    x = rng.standard_normal((2, T, 8))
    y, y_t, dx, dx_t = run_both(ours, theirs, x, rng)
    np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-10, atol=1e-12)
    assert_grads_match(interop.official_grads(ours), torch_grads(theirs), 1e-10)


@pytest.mark.parametrize("first_scale", [0.0, 1e-9])
def test_causal_tssa_parity_with_clamped_prefix(first_scale):
    """The first token maps to w = 0 or tiny w: its prefix sums of w^2 fall below 1e-12 and hit
    the clamp, whose clamped side passes no gradient."""
    rng = np.random.default_rng(0)
    theirs = randomize_torch(TorchCausalTSSA(8, 2, 5).double(), 0)
    with torch.no_grad():
        theirs.c_attn.bias.zero_()
    ours = interop.load_official(nn.CausalTSSA(8, 2, 5, dtype=F64), torch_state(theirs))
    x = rng.standard_normal((2, 4, 8))
    x[:, 0] *= first_scale
    y, y_t, dx, dx_t = run_both(ours, theirs, x, rng)
    np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-10, atol=1e-12)
    assert_grads_match(interop.official_grads(ours), torch_grads(theirs), 1e-10)


def test_tssa_parity_float32():
    """float32 all the way (a longer sequence): agrees with torch's float32 to ~1e-5."""
    rng = np.random.default_rng(3)
    theirs = randomize_torch(TorchTSSA(32, 4), 3)
    ours = interop.load_official(nn.TSSA(32, 4), torch_state(theirs))
    y, y_t, dx, dx_t = run_both(ours, theirs, rng.standard_normal((2, 64, 32)), rng, torch.float32)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
    assert rel(y, y_t) < 1e-5 and rel(dx, dx_t) < 1e-5
    for k, g in interop.official_grads(ours).items():
        assert g.dtype == np.float32 and rel(g, torch_grads(theirs)[k]) < 1e-5, k


# --------------------------------------------------------------------------------------------
# Whole language model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["tssa", "softmax"])
@pytest.mark.parametrize("T", [4, 6])
def test_language_model_parity(attention, T):
    rng = np.random.default_rng(T)
    theirs = randomize_torch(TorchLM(11, 6, 2, 2, 8, attention).double(), T)
    state = torch_state(theirs)
    assert "lm_head.weight" in state  # tied copy in the checkpoint: accepted
    ours = models.ToSTLanguageModel(11, 6, 2, 2, 8, attention=attention, dtype=F64, seed=5)
    interop.load_official(ours, state)
    idx = rng.integers(0, 11, size=(2, T))
    logits_t = theirs(torch.tensor(idx))
    targets = rng.integers(0, 11, size=(2, T))
    loss_t = F.cross_entropy(logits_t.reshape(-1, 11), torch.tensor(targets).reshape(-1))
    loss_t.backward()
    logits = ours.forward(idx)
    loss, dlogits = nn.cross_entropy(logits, targets)
    ours.backward(dlogits)
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(loss_t.item(), rel=1e-12)
    assert_grads_match(interop.official_grads(ours), torch_grads(theirs), 1e-9)


# --------------------------------------------------------------------------------------------
# Loss, optimizer, conversion script
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_parity(label_smoothing):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 4, 6)) * 4
    t = rng.integers(0, 6, (3, 4))
    zt = torch.tensor(z, requires_grad=True)
    lt = F.cross_entropy(zt.reshape(-1, 6), torch.tensor(t).reshape(-1),
                         label_smoothing=label_smoothing)  # fmt: skip
    lt.backward()
    loss, dz = nn.cross_entropy(z, t, label_smoothing)
    assert loss == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_adamw_parity():
    rng = np.random.default_rng(0)
    block = nn.Block(8, 2, attention="tssa", causal=True, block_size=4, dtype=F64)
    params = block.parameters()
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    decay = [p for k, p in tparams.items() if not block.no_weight_decay(k)]
    no_decay = [p for k, p in tparams.items() if block.no_weight_decay(k)]
    topt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.01, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip
    opt = nn.AdamW(block, lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for step in range(4):
        lr = nn.cosine_lr(step, 4, 1, 0.01)
        block.grads = {}
        for _, m in block.named_modules():
            m.grads = {k: rng.standard_normal(v.shape) for k, v in m.params.items()}
        for k, g in block.gradients().items():
            tparams[k].grad = torch.tensor(g.copy())
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        opt.step(lr=lr)
    for k, p in block.parameters().items():
        np.testing.assert_allclose(p, tparams[k].detach().numpy(), rtol=1e-12, atol=1e-15,
                                   err_msg=k)  # fmt: skip


def test_clip_grad_norm_parity():
    rng = np.random.default_rng(1)
    lin = nn.Linear(4, 3, dtype=F64)
    lin.grads = {k: rng.standard_normal(v.shape) for k, v in lin.params.items()}
    tp = [torch.zeros(v.shape, dtype=torch.float64, requires_grad=True) for v in lin.grads.values()]
    for p, g in zip(tp, lin.grads.values()):
        p.grad = torch.tensor(g.copy())
    total_t = torch.nn.utils.clip_grad_norm_(tp, 0.5)
    total = nn.clip_grad_norm(lin, 0.5)
    assert total == pytest.approx(total_t.item(), rel=1e-12)
    for p, g in zip(tp, lin.grads.values()):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12)


def test_convert_pt_script(tmp_path):
    path = Path(__file__).resolve().parents[1] / "scripts" / "convert_pt.py"
    spec = importlib.util.spec_from_file_location("convert_pt", path)
    convert_pt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert_pt)
    theirs = randomize_torch(TorchLM(11, 6, 1, 2, 8), 0)
    ckpt = {
        "model": {"_orig_mod." + k: v for k, v in theirs.state_dict().items()},  # torch.compile
        "model_args": dict(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8),
        "iter_num": 3,
    }
    torch.save(ckpt, tmp_path / "ckpt.pt")
    names = convert_pt.convert(tmp_path / "ckpt.pt", tmp_path / "w.npz")
    assert "transformer.wte.weight" in names and not any("_orig_mod" in n for n in names)
    assert (tmp_path / "w.json").exists()
    ours = models.ToSTLanguageModel(11, 6, 1, 2, 8)
    with np.load(tmp_path / "w.npz") as f:
        interop.load_official(ours, f)
    idx = np.array([[1, 2, 3, 4]])
    with torch.no_grad():
        ref = theirs(torch.tensor(idx)).numpy()
    np.testing.assert_allclose(ours.forward(idx), ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The vision ToST-CAB (``tost_vision/tost.py``): reference modules with the public names
# --------------------------------------------------------------------------------------------


class TorchFourier(tnn.Module):
    """``PositionalEncodingFourier`` (its features here in the model's dtype, see below)."""

    def __init__(self, dim, hidden_dim=32, temperature=10000):
        super().__init__()
        self.token_projection = tnn.Conv2d(hidden_dim * 2, dim, kernel_size=1)
        self.scale, self.temperature, self.hidden_dim = 2 * math.pi, temperature, hidden_dim

    def forward(self, B, H, W):
        dt = self.token_projection.weight.dtype  # the public code: torch.float32 always
        not_mask = torch.ones(B, H, W, dtype=torch.bool)
        y_embed = not_mask.cumsum(1, dtype=dt)
        x_embed = not_mask.cumsum(2, dtype=dt)
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * self.scale
        dim_t = torch.arange(self.hidden_dim, dtype=dt)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.hidden_dim)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return self.token_projection(torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2))


def torch_conv3x3(c_in, c_out):
    return tnn.Sequential(tnn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), tnn.BatchNorm2d(c_out))


class TorchConvStem(tnn.Module):
    def __init__(self, in_chans, dim, stages):
        super().__init__()
        chans = [in_chans] + [dim // 2 ** (stages - 1 - s) for s in range(stages)]
        layers = []
        for s in range(stages):
            layers += [torch_conv3x3(chans[s], chans[s + 1])] + (
                [tnn.GELU()] if s < stages - 1 else []
            )
        self.proj = tnn.Sequential(*layers)

    def forward(self, x):
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class TorchTimmMlp(tnn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = tnn.Linear(dim, hidden), tnn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TorchVisionBlock(tnn.Module):
    def __init__(self, dim, heads, eta):
        super().__init__()
        self.norm1 = tnn.LayerNorm(dim, eps=1e-6)
        self.attn = TorchTSSA(dim, heads)
        self.norm2 = tnn.LayerNorm(dim, eps=1e-6)
        self.mlp = TorchTimmMlp(dim, 4 * dim)
        self.gamma1 = tnn.Parameter(eta * torch.ones(dim))
        self.gamma2 = tnn.Parameter(eta * torch.ones(dim))

    def forward(self, x):
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.mlp(self.norm2(x))


class TorchClassAttention(tnn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = tnn.Linear(dim, 3 * dim, bias=True)
        self.proj = tnn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = (
            self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q[:, :, 0:1] * k).sum(dim=-1) * self.scale).softmax(dim=-1)
        cls = self.proj((attn.unsqueeze(2) @ v).transpose(1, 2).reshape(B, 1, C))
        return torch.cat([cls, x[:, 1:]], dim=1)


class TorchClassAttentionBlock(tnn.Module):
    """``ClassAttentionBlock`` with ``tokens_norm=True``."""

    def __init__(self, dim, heads, eta):
        super().__init__()
        self.norm1 = tnn.LayerNorm(dim, eps=1e-6)
        self.attn = TorchClassAttention(dim, heads)
        self.norm2 = tnn.LayerNorm(dim, eps=1e-6)
        self.mlp = TorchTimmMlp(dim, 4 * dim)
        self.gamma1 = tnn.Parameter(eta * torch.ones(dim))
        self.gamma2 = tnn.Parameter(eta * torch.ones(dim))

    def forward(self, x):
        x = x + self.gamma1 * self.attn(self.norm1(x))
        x = self.norm2(x)
        x_res = x
        cls_token = self.gamma2 * self.mlp(x[:, 0:1])
        return x_res + torch.cat([cls_token, x[:, 1:]], dim=1)


class TorchToSTCAB(tnn.Module):
    def __init__(self, in_chans, num_classes, dim, depth, heads, stages, eta):
        super().__init__()
        self.patch_embed = TorchConvStem(in_chans, dim, stages)
        self.cls_token = tnn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = tnn.ModuleList(TorchVisionBlock(dim, heads, eta) for _ in range(depth))
        self.cls_attn_blocks = tnn.ModuleList(
            TorchClassAttentionBlock(dim, heads, eta) for _ in range(2)
        )
        self.norm = tnn.LayerNorm(dim, eps=1e-6)
        self.head = tnn.Linear(dim, num_classes)
        self.pos_embeder = TorchFourier(dim)

    def forward(self, x):
        B = x.shape[0]
        x, (Hp, Wp) = self.patch_embed(x)
        x = x + self.pos_embeder(B, Hp, Wp).reshape(B, -1, x.shape[1]).permute(0, 2, 1)
        for blk in self.blocks:
            x = blk(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        for blk in self.cls_attn_blocks:
            x = blk(x)
        return self.head(self.norm(x)[:, 0])


def randomize_torch_buffers(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g, dtype=b.dtype))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    return module


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("stride,pad,H", [(2, 1, 8), (2, 1, 7), (1, 1, 5)])
def test_conv_batchnorm_parity(training, stride, pad, H):
    rng = np.random.default_rng(H)
    conv_t = randomize_torch(tnn.Conv2d(3, 4, 3, stride, pad, bias=False).double(), 0)
    bn_t = randomize_torch_buffers(randomize_torch(tnn.BatchNorm2d(4).double(), 1), 2)
    bn_t.train(training)
    theirs = tnn.Sequential(conv_t, bn_t)
    conv = vision.Conv2d(3, 4, 3, stride, pad, dtype=F64)
    conv.params["weight"][...] = conv_t.weight.detach().numpy()
    bn = vision.BatchNorm2d(4, dtype=F64)
    bn.training = training
    bn.params = {k: bn_t.state_dict()[k].numpy().copy() for k in ("weight", "bias")}
    for k in bn.buffers:
        bn.buffers[k][...] = bn_t.state_dict()[k].numpy()

    class Pair:
        def forward(self, x):
            return bn.forward(conv.forward(x))

        def backward(self, d):
            return conv.backward(bn.backward(d))

    y, y_t, dx, dx_t = run_both(Pair(), theirs, rng.standard_normal((2, 3, H, H)), rng)
    np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        conv.grads["weight"], conv_t.weight.grad.numpy(), rtol=1e-10, atol=1e-12
    )
    for k in ("weight", "bias"):
        np.testing.assert_allclose(
            bn.grads[k], getattr(bn_t, k).grad.numpy(), rtol=1e-10, atol=1e-12
        )
    for k in bn.buffers:  # running statistics after the step (unchanged in eval)
        np.testing.assert_allclose(bn.buffers[k], bn_t.state_dict()[k].numpy(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("Hp,Wp", [(1, 1), (3, 5), (14, 14)])
def test_fourier_encoding_parity(Hp, Wp):
    theirs = randomize_torch(TorchFourier(6).double(), Hp)
    ours = vision.FourierPositionalEncoding(6, dtype=F64)
    sd = theirs.state_dict()
    ours.token_projection.params["weight"][...] = (
        sd["token_projection.weight"].numpy()[:, :, 0, 0].T
    )
    ours.token_projection.params["bias"][...] = sd["token_projection.bias"].numpy()
    pos_t = theirs(2, Hp, Wp)  # (2, D, Hp, Wp)
    G = np.random.default_rng(0).standard_normal((Hp * Wp, 6))
    (pos_t.reshape(2, 6, -1).permute(0, 2, 1)[0] * torch.tensor(G)).sum().backward()
    pos = ours.forward(Hp, Wp)
    ours.backward(G)
    np.testing.assert_allclose(pos, pos_t.reshape(2, 6, -1).permute(0, 2, 1)[1].detach().numpy(),
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(ours.token_projection.grads["weight"],
                               theirs.token_projection.weight.grad.numpy()[:, :, 0, 0].T,
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(
        ours.token_projection.grads["bias"],
        theirs.token_projection.bias.grad.numpy(),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("num_heads", [1, 2])
def test_class_attention_block_parity(num_heads):
    rng = np.random.default_rng(num_heads)
    theirs = randomize_torch(TorchClassAttentionBlock(8, num_heads, 1.0).double(), num_heads)
    ours = vision.ClassAttentionBlock(8, num_heads, dtype=F64)
    state = {
        k.replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"): v
        for k, v in torch_state(theirs).items()
    }
    for k, v in state.items():
        w = v.T if k.endswith("weight") and ("qkv" in k or "proj" in k or "mlp" in k) else v
        ours.parameters()[k][...] = w
    y, y_t, dx, dx_t = run_both(ours, theirs, rng.standard_normal((2, 5, 8)), rng)
    np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("stages,H", [(4, 32), (3, 24), (2, 8)])
def test_tost_cab_parity(training, stages, H):
    """The whole model, loaded through ``load_official``: logits, input gradient, every
    parameter gradient and (training) the BatchNorm buffers after the step."""
    rng = np.random.default_rng(stages)
    dim, eta = 16, (1.0 if stages != 3 else 1e-5)
    theirs = TorchToSTCAB(3, 5, dim, 2, 2, stages, eta).double()
    randomize_torch_buffers(randomize_torch(theirs, stages), stages)
    theirs.train(training)
    ours = models.ToSTCAB(image_size=H, patch_size=2**stages, in_chans=3, num_classes=5,
                          dim=dim, depth=2, num_heads=2, eta=eta, dtype="float64")  # fmt: skip
    interop.load_official(ours, torch_state(theirs))
    ours.train(training)
    y, y_t, dx, dx_t = run_both(ours, theirs, rng.standard_normal((2, 3, H, H)), rng)
    np.testing.assert_allclose(y, y_t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-10, atol=1e-13)
    assert_grads_match(interop.official_grads(ours), torch_grads(theirs), 1e-10)
    after = interop.official_state(ours)
    for k, v in torch_state(theirs).items():
        # relative to the buffer's scale: an entry that cancels to near 0 (a running mean of
        # 2e-5 among entries of 0.3) keeps only absolute precision
        np.testing.assert_allclose(after[k], v, rtol=1e-12, atol=1e-12 * np.abs(v).max(), err_msg=k)
    # and back: the public model loads whitebox's state with strict names
    fresh = TorchToSTCAB(3, 5, dim, 2, 2, stages, eta).double()
    fresh.load_state_dict({k: torch.tensor(v) for k, v in after.items()}, strict=True)


def test_convert_pt_script_vision_checkpoint(tmp_path):
    """A DeiT-style checkpoint of a ToST-CAB (DDP prefix, BatchNorm buffers) converts and loads."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "convert_pt.py"
    spec = importlib.util.spec_from_file_location("convert_pt", path)
    convert_pt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert_pt)
    theirs = randomize_torch_buffers(randomize_torch(TorchToSTCAB(3, 4, 8, 1, 2, 2, 1.0), 0), 0)
    theirs.eval()
    ckpt = {"model": {"module." + k: v for k, v in theirs.state_dict().items()}, "epoch": 3}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    names = convert_pt.convert(tmp_path / "checkpoint.pth", tmp_path / "w.npz")
    assert "patch_embed.proj.0.1.running_var" in names and not any("module." in n for n in names)
    ours = models.ToSTCAB(image_size=8, patch_size=4, in_chans=3, num_classes=4, dim=8, depth=1,
                          num_heads=2).eval()  # fmt: skip
    with np.load(tmp_path / "w.npz") as f:
        interop.load_official(ours, f)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = theirs(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ours.forward(x), ref, rtol=1e-4, atol=1e-5)


def test_cross_entropy_ignore_index_parity():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((4, 6))
    t = np.array([2, -1, 5, -1])
    zt = torch.tensor(z, requires_grad=True)
    lt = F.cross_entropy(zt, torch.tensor(t), ignore_index=-1)
    lt.backward()
    loss, dz = nn.cross_entropy(z, t, ignore_index=-1)
    assert loss == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_tssa_attention_dropout_parity():
    """Dropout on the factor attn = 1 / (1 + dots) as ``AttentionTSSA.attn_drop`` applies it,
    with the same keep mask on both sides."""
    rng = np.random.default_rng(4)
    theirs = randomize_torch(TorchTSSA(8, 2).double(), 4)
    ours = interop.load_official(nn.TSSA(8, 2, dtype=F64), torch_state(theirs))
    mask = nn.dropout_mask(rng, (2, 2, 4), 0.3)  # (B, H, p)
    x = rng.standard_normal((2, 5, 8))
    xt = torch.tensor(x, requires_grad=True)
    b, n, D = xt.shape
    w = theirs.qkv(xt).view(b, n, 2, 4).transpose(1, 2)
    Pi = F.softmax((F.normalize(w, dim=-2) ** 2).sum(dim=-1) * theirs.temp, dim=1)
    dots = torch.matmul((Pi / (Pi.sum(dim=-1, keepdim=True) + 1e-8)).unsqueeze(-2), w**2)
    attn = (1.0 / (1 + dots)) * torch.tensor(mask)[:, :, None, :]  # attn_drop(attn)
    yt = theirs.to_out(-torch.mul(w.mul(Pi.unsqueeze(-1)), attn).transpose(1, 2).reshape(b, n, D))
    G = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(G))
    y, cache = nn.tssa_forward(x, ours.params, mask)
    dx, grads = nn.tssa_backward(G, cache)
    ours.grads = grads
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert_grads_match(interop.official_grads(ours), torch_grads(theirs), 1e-10)
