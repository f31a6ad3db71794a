r"""Training utilities: the AdamW optimizer, the cosine learning-rate schedule, gradient clipping.

They work on any :class:`whitebox.module.Module`: ``module.parameters()`` and
``module.gradients()`` give the arrays by dotted name, updated in place.

Weight decay (:class:`AdamW`): only the weight matrices of :class:`~whitebox.nn.Linear` and
:class:`~whitebox.nn.Embedding` layers (and the vision models' convolutions) are decayed
(nanoGPT decays embeddings too; the tied LM head is the token embedding). Biases, LayerNorm
parameters, TSSA temperatures ``temp``, the causal ``denom_bias``, the layer scales
``gamma1``/``gamma2`` and a classifier's ``pos_embed`` / ``cls_token`` are not. Each module lists
its decayed local names in ``decay``; ask a model with ``model.no_weight_decay(name)``.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module, to_numpy, to_numpy_many


class AdamW:
    r"""Adam with decoupled weight decay (Loshchilov & Hutter; PyTorch's ``AdamW``).

    For each parameter theta with gradient g (step t = 1, 2, ...):
        theta <- theta (1 - lr wd)                  only where ``module.no_weight_decay`` is False
        m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2
        theta <- theta - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
    Parameters are updated in place (the arrays in ``module.parameters()`` keep their identity).
    Create the optimizer after ``module.to(device)``."""

    def __init__(self, module, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05):
        self.module = module
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.t = 0
        params = module.parameters()
        self.decayed = {k: not module.no_weight_decay(k) for k in params}
        self.exp_avg = {k: get_array_module(v).zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: get_array_module(v).zeros_like(v) for k, v in params.items()}

    def step(self, lr=None):
        lr = self.lr if lr is None else lr
        b1, b2 = self.betas
        self.t += 1
        bc1 = 1.0 - b1**self.t
        bc2_sqrt = math.sqrt(1.0 - b2**self.t)
        grads = self.module.gradients()
        for k, p in self.module.parameters().items():
            xp = get_array_module(p)
            g = grads[k]
            m, v = self.exp_avg[k], self.exp_avg_sq[k]
            if self.decayed[k] and self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            p -= (lr / bc1) * m / (xp.sqrt(v) / bc2_sqrt + self.eps)

    def state_dict(self):
        """Flat dict of NumPy arrays: 'step', 'exp_avg.<name>', 'exp_avg_sq.<name>'."""
        keys = [f"{s}.{k}" for s in ("exp_avg", "exp_avg_sq") for k in self.exp_avg]
        arrays = list(self.exp_avg.values()) + list(self.exp_avg_sq.values())
        return {"step": np.array(self.t), **dict(zip(keys, to_numpy_many(arrays)))}

    def load_state_dict(self, state):
        expected = {"step"} | {f"{s}.{k}" for k in self.exp_avg for s in ("exp_avg", "exp_avg_sq")}
        if set(state) != expected:
            raise ValueError(
                f"AdamW.load_state_dict: missing {sorted(expected - set(state))}, "
                f"unexpected {sorted(set(state) - expected)}"
            )
        self.t = int(state["step"])
        for d, s in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq")):
            for k, a in d.items():
                v = np.asarray(to_numpy(state[f"{s}.{k}"]))
                if v.shape != a.shape:
                    raise ValueError(f"AdamW.load_state_dict: {s}.{k} expected {a.shape}")
                a[...] = get_array_module(a).asarray(v, dtype=a.dtype)


def cosine_lr(step, total_steps, warmup_steps, lr_max, lr_min=0.0):
    """Linear warm-up to ``lr_max`` over ``warmup_steps`` (lr_max (step + 1) / warmup_steps),
    then cosine decay to ``lr_min`` at ``total_steps``; ``lr_min`` afterwards."""
    if step < warmup_steps:
        return lr_max * (step + 1) / warmup_steps
    if step >= total_steps:
        return lr_min
    ratio = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr_min + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr_max - lr_min)


def clip_grad_norm(module, max_norm):
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``
    (coefficient max_norm / (norm + 1e-6) where that is below 1, as
    ``torch.nn.utils.clip_grad_norm_``). Returns the norm before clipping, a 0-d float64
    array on the gradients' device: nothing here waits for the GPU (the coefficient is
    applied on the device; multiplying by exactly 1 leaves a gradient unchanged)."""
    grads = list(module.gradients().values())
    if not grads:
        return np.zeros(())
    xp = get_array_module(*grads)
    total = xp.sqrt(xp.stack([(g * g).sum(dtype=np.float64) for g in grads]).sum())
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef.astype(g.dtype)
    return total
