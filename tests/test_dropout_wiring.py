"""Dropout, DropPath and attention dropout wired into ``nn.Block`` and the language model:
gradient-checked with frozen masks, off in eval mode, reproducible from the seed."""

from __future__ import annotations

import numpy as np
import pytest

from whitebox import models, nn
from whitebox.gradcheck import numerical_grad, rel_error


def _rngs(module):
    """Every random generator a module's dropout layers draw from."""
    out = []
    for _, m in module.named_modules():
        for attr in ("rng", "_drop_rng"):
            if isinstance(getattr(m, attr, None), np.random.Generator):
                out.append((m, attr))
    return out


def _frozen(module):
    """A function that puts every dropout generator back to its current state (same masks)."""
    states = [(m, a, getattr(m, a).bit_generator.state) for m, a in _rngs(module)]

    def reset():
        for m, a, st in states:
            getattr(m, a).bit_generator.state = st

    return reset


@pytest.mark.parametrize("drop, drop_path, attn_drop", [(0.3, 0.0, 0.0), (0.0, 0.5, 0.0),
                                                        (0.0, 0.0, 0.4), (0.2, 0.4, 0.3)])  # fmt: skip
def test_block_backward_with_dropout_matches_finite_differences(drop, drop_path, attn_drop):
    rng = np.random.default_rng(0)
    blk = nn.Block(8, 2, "tssa", dtype=np.float64, rng=rng, layer_scale_init=0.7, drop=drop,
                   drop_path=drop_path, attn_drop=attn_drop, drop_seed=3)  # fmt: skip
    x = rng.standard_normal((4, 5, 8))
    dy = rng.standard_normal((4, 5, 8))  # a random upstream gradient
    reset = _frozen(blk)

    def loss():
        reset()
        return float((blk.forward(x) * dy).sum())

    reset()
    out = blk.forward(x)
    dx = blk.backward(dy)
    assert rel_error(dx, numerical_grad(loss, x)) < 1e-5
    for name in ("gamma1", "gamma2"):
        num = numerical_grad(loss, blk.params[name])
        assert rel_error(blk.grads[name], num) < 1e-5, name  # small entries: FD round-off
    # dropout really acted: the output differs from the same block in eval mode
    assert not np.allclose(out, blk.eval().forward(x))


def test_eval_mode_is_the_block_without_dropout():
    x = np.random.default_rng(1).standard_normal((3, 6, 8))
    plain = nn.Block(8, 2, dtype=np.float64, rng=np.random.default_rng(0))
    dropped = nn.Block(8, 2, dtype=np.float64, rng=np.random.default_rng(0), drop=0.5,
                       drop_path=0.5, attn_drop=0.5)  # fmt: skip
    assert np.array_equal(dropped.eval().forward(x), plain.forward(x))
    assert dropped.state_dict().keys() == plain.state_dict().keys()  # no new parameters
    dropped.train()
    assert all(m.training for _, m in dropped.named_modules() if hasattr(m, "training"))


def test_masks_follow_the_seed_and_the_rate():
    x = np.ones((64, 16, 8))
    a = nn.Block(8, 2, dtype=np.float64, rng=np.random.default_rng(0), drop_path=0.25, drop_seed=5)
    b = nn.Block(8, 2, dtype=np.float64, rng=np.random.default_rng(0), drop_path=0.25, drop_seed=5)
    assert np.array_equal(a.forward(x), b.forward(x))  # same seed, same masks
    kept = a.path_1._mask[:, 0, 0]
    assert set(np.unique(kept)) <= {0.0, 1 / 0.75}  # inverted dropout, one draw per sample
    assert 0.1 < np.mean(kept == 0) < 0.45


def test_attention_dropout_is_refused_where_it_does_not_exist():
    with pytest.raises(ValueError, match="attn_drop"):
        nn.Block(8, 2, "softmax", attn_drop=0.1)


def test_language_model_dropout_gradient_and_eval():
    rng = np.random.default_rng(0)
    kw = dict(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8, dtype="float64")
    lm = models.ToSTLanguageModel(**kw, dropout=0.3)
    plain = models.ToSTLanguageModel(**kw)
    idx = rng.integers(0, 11, size=(3, 6))
    assert np.array_equal(lm.eval().forward(idx), plain.forward(idx))
    assert lm.config["dropout"] == 0.3 and "dropout" not in plain.config
    lm.train()
    dlogits = rng.standard_normal((3, 6, 11))
    reset = _frozen(lm)

    def loss():
        reset()
        return float((lm.forward(idx) * dlogits).sum())

    reset()
    lm.forward(idx)
    lm.backward(dlogits)
    W = lm.wpe.params["weight"]
    assert rel_error(lm.wpe.grads["weight"], numerical_grad(loss, W)) < 1e-6
    g = lm.blocks[0].params["gamma1"]
    assert rel_error(lm.blocks[0].grads["gamma1"], numerical_grad(loss, g)) < 1e-6
