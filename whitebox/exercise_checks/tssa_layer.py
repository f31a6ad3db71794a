"""Exercises 05 and 06: the learned TSSA layer, forward and manual backward, with a plain
NumPy reference that can plant every known slip."""

from __future__ import annotations

import copy

import numpy as np

from .core import (
    FLOOR,
    TOL,
    BadOutput,
    Case,
    CheckResult,
    Slip,
    Spec,
    compare,
    normalized_over,
    run_check,
    softmax,
)

TSSA_CACHE_KEYS = ("w", "pi", "y", "v")
"""The intermediate quantities that ``tssa_forward`` must store in its cache (exercise 05)."""


def tssa_reference(x, params, slip=None):
    r"""The learned TSSA layer in plain NumPy, with an optional planted ``slip`` (a key of
    ``TSSA_FORWARD_SLIPS``). Returns {'w', 'pi', 'y', 'v', 'out'} plus the cache entries the
    reference backward needs. With ``slip=None`` it equals ``whitebox.nn.tssa_forward``."""
    W, b = params["qkv.weight"], params["qkv.bias"]
    temp, Wo, bo = params["temp"], params["proj.weight"], params["proj.bias"]
    B, n, D = x.shape
    H = temp.shape[0]
    p = D // H
    w_flat = x @ (W.T if slip == "transposed_qkv" else W)
    w_flat = w_flat if slip == "no_qkv_bias" else w_flat + b  # (B, n, D)
    if slip == "heads_reshape":
        w = w_flat.reshape(B, H, n, p)  # the slip: the token and head axes are mixed up
    else:
        w = w_flat.reshape(B, n, H, p).transpose(0, 2, 1, 3)  # (B, H, n, p)
    w_sq = w * w
    if slip == "norm_over_features":
        norm = np.sqrt(w_sq.sum(axis=3, keepdims=True))  # (B, H, n, 1)
    else:
        norm = np.sqrt(w_sq.sum(axis=2, keepdims=True))  # (B, H, 1, p)
    denom = norm if slip == "no_floor" else np.maximum(norm, 1e-12)
    a = w_sq.sum(axis=3) if slip == "no_normalization" else (w_sq / denom**2).sum(axis=3)
    if slip == "scores_mean":
        a = a / p  # the slip: a mean over the p features
    z = {"no_temp": a, "temp_divides": a / temp}.get(slip, temp * a)  # (B, H, n)
    pi = _membership_softmax(z, slip, head_axis=1, token_axis=2)  # (B, H, n)
    pi_sum = pi.sum(axis=2, keepdims=True) + (0.0 if slip == "no_eps" else 1e-8)  # (B, H, 1)
    pi_bar = {"unnormalized_stats": pi, "s_over_n": pi / n}.get(slip, pi / pi_sum)
    stat_src = (w / denom) ** 2 if slip == "stats_from_w_hat" else w_sq
    y = np.einsum("bhn,bhnp->bhp", pi_bar, stat_src)  # (B, H, p)
    g = 1.0 / (y if slip == "no_one" else 1.0 + y)  # (B, H, p)
    v = (1.0 if slip == "no_minus" else -1.0) * pi[..., None] * w * g[:, :, None, :]
    if slip == "merge_reshape":
        v_flat = v.reshape(B, n, D)
    else:
        v_flat = v.transpose(0, 2, 1, 3).reshape(B, n, D)  # (B, n, D)
    out = v_flat @ (Wo.T if slip == "transposed_out" else Wo)
    out = out if slip == "no_proj_bias" else out + bo  # (B, n, D)
    return dict(
        w=w, pi=pi, y=y, v=v, out=out, x=x, W=W, Wo=Wo, temp=temp, w_sq=w_sq, norm=norm,
        denom=denom, a=a, pi_sum=pi_sum, pi_bar=pi_bar, g=g, v_flat=v_flat,
    )  # fmt: skip


def _membership_softmax(z, slip, head_axis, token_axis):
    """Π = softmax of the scores over the heads, or one of its slips (shared by the causal
    layer): over the tokens, without the maximum subtracted, or a hard argmax."""
    if slip == "softmax_tokens":
        return softmax(z, axis=token_axis)
    if slip == "unstable_softmax":
        e = np.exp(z)  # the slip: overflows to inf, and inf / inf = nan
        return e / e.sum(axis=head_axis, keepdims=True)
    if slip == "hard_pi":
        return (z == z.max(axis=head_axis, keepdims=True)).astype(np.float64)
    return softmax(z, axis=head_axis)


# Slips that both forward layers share: (name, hint) by key.
MEMBERSHIP_SLIPS = {
    "unstable_softmax": ("the softmax without the maximum subtracted (overflow)",
                         "exp of a score above about 709 is inf in float64, and inf / inf = "
                         "nan: subtract each token's largest score over the heads before exp "
                         "(softmax is unchanged by that shift)."),
    "hard_pi": ("a hard argmax instead of the softmax", "Π is a softmax over the heads: exp "
                "the shifted scores and normalize, rather than putting 1 at the largest score."),
    "temp_divides": ("the temperature divides instead of multiplies", "the scores are "
                     "temp_h × (Σ_i ...): temp multiplies (it is a learned inverse "
                     "temperature), it does not divide."),
    "scores_mean": ("a mean over the features instead of a sum in the scores", "the score "
                    "sums over the p features of a head (axis 3 of (B, H, n, p)): no "
                    "division by p."),
    "no_qkv_bias": ("the bias b_qkv is missing", "w = x W_qkv + b_qkv: add the bias before "
                    "splitting the heads."),
    "no_proj_bias": ("the output bias b_out is missing", "out = v W_out + b_out: add "
                     "proj.bias after the output projection."),
}  # fmt: skip


TSSA_FORWARD_SLIPS = {
    "softmax_tokens": ("the softmax over the wrong axis (tokens instead of heads)",
                       "Π_hj = softmax over the heads h: Π has shape (B, H, n) and sums to 1 "
                       "over axis 1 (the heads) for every token."),
    "norm_over_features": ("the norm over the wrong axis (features instead of tokens)",
                           "ŵ divides each column w_{·,i} by its norm over the n tokens "
                           "(axis 2 of (B, H, n, p))."),
    "no_normalization": ("the scores use w instead of ŵ", "the membership scores are "
                         "temp_h Σ_i ŵ_{j,i}², with the column-normalized ŵ."),
    "no_floor": ("a forgotten 1e-12 floor", "ŵ = w / max(‖w_{·,i}‖, 1e-12): a column that is "
                 "0 for every token would give 0/0 = nan."),
    "no_temp": ("the temperature is missing", "the scores are temp_h Σ_i ŵ_{j,i}²."),
    "no_eps": ("a forgotten 1e-8", "the weights are Π_hj / (Σ_j' Π_hj' + 1e-8): a head with "
               "(almost) no tokens must get (almost) zero statistics, not a division by ~0."),
    "unnormalized_stats": ("Π not normalized in the statistics", "y_{h,i} = Σ_j Π_hj w_{hji}² "
                           "/ (Σ_j' Π_hj' + 1e-8): a weighted mean over the tokens."),
    "stats_from_w_hat": ("statistics of ŵ instead of w", "ŵ is only for the membership "
                         "scores; y uses the un-normalized w."),
    "no_one": ("the 1 in 1 + y is missing", "v = −Π w / (1 + y): the gains are g = 1/(1 + y)."),
    "no_minus": ("the minus sign is missing", "v = −Π w / (1 + y): a gradient *descent* step."),
    "transposed_qkv": ("a transposed projection W_qkv", "w = x W_qkv + b_qkv with W_qkv of "
                       "shape (D_in, D_out) (CS231n layout, not PyTorch's): x @ W, not x @ W.T."),
    "heads_reshape": ("heads split without the transpose", "split the heads as "
                      "w.reshape(B, n, H, p).transpose(0, 2, 1, 3); reshape(B, H, n, p) mixes "
                      "tokens and heads."),
    "merge_reshape": ("heads merged without the transpose", "merge as "
                      "y.transpose(0, 2, 1, 3).reshape(B, n, D), the inverse of the split."),
    "transposed_out": ("a transposed output projection W_out", "out = v W_out + b_out: "
                       "v_flat @ W_out, not @ W_out.T."),
    "s_over_n": ("1/n instead of 1/Σ_j Π_hj in the statistics", "y_{h,i} is a weighted mean "
                 "over the tokens: divide Σ_j Π_hj w_{hji}² by the head's weight Σ_j Π_hj "
                 "(+ 1e-8), not by the number of tokens n."),
    **MEMBERSHIP_SLIPS,
}  # fmt: skip


# slips recognized from the output alone, however the rest of the code differs
_DETECT = {"softmax_tokens": normalized_over("pi", 2, 1)}


def _tssa_cases(seed):
    rng = np.random.default_rng(seed)
    B, n, D, H = 2, 5, 6, 2
    random = {
        "x": rng.standard_normal((B, n, D)),
        "params": {
            "qkv.weight": 0.6 * rng.standard_normal((D, D)),
            "qkv.bias": 0.1 * rng.standard_normal(D),
            "temp": rng.uniform(0.5, 2.0, (H, 1)),
            "proj.weight": 0.5 * rng.standard_normal((D, D)),
            "proj.bias": 0.1 * rng.standard_normal(D),
        },
    }
    # Hard case: W_qkv = I so w = x. Head 0: entries +-1 and temp -200, so its membership is
    # ~e^-100 for every token (only the 1e-8 keeps its statistics at 0); head 1: one feature
    # is 0 for every token (only the 1e-12 floor keeps w_hat finite).
    B, n, D, H = 1, 4, 6, 3
    x = rng.standard_normal((B, n, D))
    x[..., 0:2] = rng.choice([-1.0, 1.0], size=(B, n, 2))
    x[..., 2] = 0.0
    hard = {
        "x": x,
        "params": {
            "qkv.weight": np.eye(D), "qkv.bias": np.zeros(D),
            "temp": np.array([[-200.0], [1.0], [1.5]]),
            "proj.weight": 0.5 * rng.standard_normal((D, D)),
            "proj.bias": 0.1 * rng.standard_normal(D),
        },
    }  # fmt: skip
    return [
        Case("random B=2 n=5 D=6 H=2", random),
        Case("hard: Π ≈ 0 in head 0, a zero feature", hard,
             note="W_qkv = I, so w = x. Head 0 has temperature −200: its membership is about "
                  "e^−100 for every token, and only the 1e-8 keeps y finite and ≈ 0. In head 1, "
                  "feature 0 is 0 for every token: only the 1e-12 floor keeps ŵ finite."),
    ]  # fmt: skip


def _large_scores_case(seed, causal=False):
    """Temperatures in the thousands: scores of about 10³, where exp overflows unless the
    maximum is subtracted first."""
    rng = np.random.default_rng(seed)
    B, n, D, H = 1, 5, 4, 2
    params = {
        "qkv.weight": 0.6 * rng.standard_normal((D, D)),
        "qkv.bias": 0.1 * rng.standard_normal(D),
        "temp": np.array([[2000.0], [3000.0]]),
        "proj.weight": 0.5 * rng.standard_normal((D, D)),
        "proj.bias": 0.1 * rng.standard_normal(D),
    }
    if causal:
        params["denom_bias"] = 0.3 * rng.standard_normal((H, n + 2, 1))
    return Case(
        f"large scores: temp = 2000, 3000, B=1 {'T' if causal else 'n'}=5 D=4 H=2",
        {"x": rng.standard_normal((B, n, D)), "params": params},
        note="the temperatures make the scores about 10³; exp(10³) is inf in float64, so "
        "subtract each token's largest score over the heads before exp.",
    )


def _forward_spec_parts(name, library_forward, reference):
    """The reference, the output extractor and the slip factory shared by the two forward
    exercises (05 TSSA, 07 causal TSSA): both return (out, cache) with the same cache keys."""

    def ref(c):
        out, cache = library_forward(c.args["x"], c.args["params"])
        r = reference(c.args["x"], c.args["params"])
        return {"w": r["w"], "pi": cache["pi"], "y": r["y"], "v": r["v"], "out": out}

    def extract(output, c):
        if not (isinstance(output, tuple | list) and len(output) == 2):
            raise BadOutput(f"{name} should return the pair (out, cache)")
        out, cache = output
        if not isinstance(cache, dict):
            raise BadOutput(f"the cache should be a dict, got {type(cache).__name__}")
        got = {k: cache[k] for k in TSSA_CACHE_KEYS if k in cache}
        got["out"] = out
        return got

    def slip(key):
        def f(c):
            r = reference(c.args["x"], c.args["params"], slip=key)
            return {k: r[k] for k in ("w", "pi", "y", "v", "out")}

        return f

    return ref, extract, slip


def _tssa_forward_spec() -> Spec:
    from .. import kernels, nn

    ref, extract, slip = _forward_spec_parts("tssa_forward", nn.tssa_forward, tssa_reference)
    return Spec(
        "tssa_forward",
        "tssa_forward(x, params) -> (out, cache)",
        "whitebox.nn.tssa_forward",
        lambda: _tssa_cases(501) + [_large_scores_case(502)],
        ref,
        extract=extract,
        slips=[
            Slip(name, hint, slip(k), detect=_DETECT.get(k))
            for k, (name, hint) in TSSA_FORWARD_SLIPS.items()
        ],
        shapes="x (B, n, D); qkv.weight (D, D), qkv.bias (D,), temp (H, 1), proj.weight (D, D), proj.bias (D,); cache: w (B, H, n, p), pi (B, H, n), y (B, H, p), v (B, H, n, p)",
        withheld=lambda: [
            ("whitebox.nn.tssa_forward", nn.tssa_forward),
            ("whitebox.kernels.tssa_core_forward", getattr(kernels, "tssa_core_forward", None)),
            ("whitebox.exercise_checks.tssa_reference", tssa_reference),
        ],
    )


def check_tssa_forward(tssa_forward) -> CheckResult:
    """Check ``tssa_forward(x, params) -> (out, cache)`` (exercise 05); the cache must hold
    'w' (B, H, n, p), 'pi' (B, H, n), 'y' (B, H, p) (the statistics) and 'v' (B, H, n, p) (the
    heads' outputs)."""
    return run_check(_tssa_forward_spec(), tssa_forward)


GRAD_KEYS = ("proj.bias", "proj.weight", "temp", "qkv.bias", "qkv.weight")


def tssa_backward_reference(dout, r, slip=None):
    """Backward of :func:`tssa_reference` (its returned dict ``r``) with an optional planted
    ``slip`` (a key of ``TSSA_BACKWARD_SLIPS``). Returns (dx, grads)."""
    w, w_sq, pi, pi_bar, pi_sum, g = r["w"], r["w_sq"], r["pi"], r["pi_bar"], r["pi_sum"], r["g"]
    B, H, n, p = w.shape
    D = H * p
    two_s = 1.0 if slip in ("missing_two", "missing_two_stats") else 2.0  # d(w²)/dw in y
    two_a = 1.0 if slip in ("missing_two", "missing_two_scores") else 2.0  # ... in the scores
    sign = 1.0 if slip == "sign" else -1.0

    def dW(inp, g):
        m = inp.reshape(-1, inp.shape[-1]).T @ g.reshape(-1, g.shape[-1])
        return m.T if slip == "transposed_dW" else m

    grads = {"proj.bias": dout.reshape(-1, D).sum(axis=0), "proj.weight": dW(r["v_flat"], dout)}
    Wo_back = r["Wo"] if slip == "dv_no_transpose" else r["Wo"].T
    dv = (dout @ Wo_back).reshape(B, n, H, p).transpose(0, 2, 1, 3)  # (B, H, n, p)
    gg = g[:, :, None, :]  # (B, H, 1, p)
    dw = sign * pi[..., None] * (1.0 if slip == "direct_no_gain" else gg) * dv
    if slip == "direct_dropped":  # the path w -> v (v = -pi w g) forgotten
        dw = np.zeros_like(dw)
    dpi = sign * (w * gg * dv).sum(axis=3)  # (B, H, n)
    if slip == "direct_pi_dropped":  # the path pi -> v forgotten
        dpi = np.zeros_like(dpi)
    dg = sign * (pi[..., None] * w * dv).sum(axis=2)  # (B, H, p)
    dy = (1.0 if slip == "stats_sign" else -1.0) * (g * g) * dg
    if slip == "stats_constant":
        dy = np.zeros_like(dy)
    # y = sum_j pi_bar_j w_j^2
    dpi_bar = np.einsum("bhnp,bhp->bhn", w_sq, dy)
    if slip == "stats_pi_dropped":  # y's dependence on pi forgotten
        dpi_bar = np.zeros_like(dpi_bar)
    if slip != "stats_w_dropped":  # y's dependence on w
        dw += two_s * dy[:, :, None, :] * pi_bar[..., None] * w
    # pi_bar = pi / (sum_j pi + eps)
    dpi = dpi + dpi_bar / pi_sum
    if slip != "pi_sum_constant":
        dpi = dpi - (dpi_bar * pi).sum(axis=2, keepdims=True) / pi_sum**2
    axis = 2 if slip == "softmax_backward_axis" else 1
    if slip == "softmax_diagonal":  # only the diagonal of the softmax Jacobian
        dz = pi * dpi
    else:
        dz = pi * (dpi - (dpi * pi).sum(axis=axis, keepdims=True))
    if slip == "pi_constant":
        dz = np.zeros_like(dz)
    if slip == "pi_path_sign":
        dz = -dz
    r["dz_a"] = dz * r["a"]  # (B, H, n): the terms of d temp, for the slip detectors
    grads["temp"] = r["dz_a"].sum(axis=(0, 2))[:, None]  # (H, 1)
    da = dz if slip == "da_no_temp" else dz * r["temp"]  # (B, H, n)
    denom = r["denom"]
    if slip != "scores_w_dropped":  # the scores' direct dependence on w (w^2 over the norm)
        dw += two_a * da[..., None] * w / denom**2
    if slip != "norm_constant":
        two_n = {"norm_sign": 2.0, "norm_missing_two": -1.0}.get(slip, -2.0)
        power = 2 if slip == "norm_power" else 3
        ddenom = two_n * np.einsum("bhn,bhnp->bhp", da, w_sq)[:, :, None, :] / denom**power
        dnorm = ddenom * (r["norm"] >= 1e-12)
        dw += dnorm * w / denom
    dw_flat = dw.transpose(0, 2, 1, 3).reshape(B, n, D)
    r["dw_flat"] = dw_flat  # the upstream of b_qkv and W_qkv, for the slip detectors
    grads["qkv.bias"] = dw_flat.reshape(-1, D).sum(axis=0)
    grads["qkv.weight"] = dW(r["x"], dw_flat)
    return dw_flat @ (r["W"] if slip == "dx_no_transpose" else r["W"].T), grads


TSSA_BACKWARD_SLIPS = {
    "pi_constant": ("Π treated as a constant (no gradient through the softmax)",
                    "Π depends on w through the scores temp_h Σ_i ŵ²: backpropagate dΠ through "
                    "the softmax over the heads; without it d temp is 0."),
    "softmax_backward_axis": ("the softmax backward over the wrong axis",
                              "the softmax runs over the heads (axis 1): dz = Π ⊙ (dΠ − Σ_h Π "
                              "dΠ) with the sum over axis 1, not over the tokens."),
    "stats_constant": ("y treated as a constant", "the statistics y depend on w and on Π: "
                       "backpropagate dy = −g² dg (g = 1/(1 + y)) into both."),
    "pi_sum_constant": ("Σ_j Π_hj treated as a constant", "the weights Π_hj / (Σ_j' Π_hj' + "
                        "1e-8) are a quotient: the denominator depends on Π too."),
    "norm_constant": ("the column norm treated as a constant", "ŵ = w / ‖w_{·,i}‖ and the norm "
                      "depends on w: add the path through the norm (d‖w‖/dw = w/‖w‖)."),
    "missing_two": ("a missing 2 in d(w²)/dw", "d(w²)/dw = 2w, both in y and in the scores."),
    "missing_two_stats": ("a missing 2 in d(w²)/dw on the path through y", "y = Σ_j Π̄_j w_j²,"
                          " so dy reaches w as 2 Π̄ w dy: the 2 from the square is missing "
                          "there (the path through the scores has it)."),
    "missing_two_scores": ("a missing 2 in d(w²)/dw on the path through the scores", "the "
                           "scores hold w²/‖w‖², so da reaches w as 2 w da / ‖w‖²: the 2 "
                           "from the square is missing there (the path through y has it)."),
    "transposed_dW": ("a transposed weight gradient", "for u = x W: dW = xᵀ du (shape (D_in, "
                      "D_out)), not dyᵀ x."),
    "sign": ("the minus sign of v = −Π w / (1 + y) is lost", "every gradient that flows "
             "through v carries the minus sign."),
    "direct_dropped": ("the direct path of w (through v) dropped", "v = −Π w g uses w itself: "
                       "start dw with −Π g dv, then add the paths through y, the scores and "
                       "the norm."),
    "direct_no_gain": ("the gain g missing on the direct path of w", "v = −Π w g: its "
                       "derivative in w is −Π g, so the direct part of dw is −Π g dv."),
    "pi_path_sign": ("a wrong sign on the path through Π", "Π = softmax(z): dz = Π ⊙ (dΠ − "
                     "Σ_h Π dΠ), with dΠ from v (−Σ_i w g dv) and from Π̄; check the sign of "
                     "each term."),
    "direct_pi_dropped": ("the direct path of Π (through v) dropped", "v = −Π w g uses Π "
                          "itself: dΠ starts with −Σ_i w g dv, before the path through y is "
                          "added."),
    "stats_w_dropped": ("the path from y to w dropped", "y = Σ_j Π̄_j w_j² depends on w: add "
                        "2 Π̄ w dy to dw (the path through the statistics)."),
    "stats_pi_dropped": ("the path from y to Π dropped", "y = Σ_j Π̄_j w_j² depends on Π "
                         "through Π̄ = Π / (Σ Π + 1e-8): add Σ_i w² dy to dΠ̄, then through the "
                         "quotient to dΠ."),
    "stats_sign": ("a wrong sign on the path through y", "g = 1/(1 + y), so dg/dy = −g²: "
                   "dy = −g² dg."),
    "softmax_diagonal": ("the softmax backward without its second term", "Π = softmax(z): "
                         "dz = Π ⊙ (dΠ − Σ_h Π dΠ); Π ⊙ dΠ alone is only the diagonal of the "
                         "Jacobian."),
    "da_no_temp": ("temp missing on the path from the scores to w", "z = temp ⊙ a, so da = "
                   "temp ⊙ dz: the temperature multiplies the gradient that goes back to w."),
    "scores_w_dropped": ("the path from the scores to w dropped (only the norm's path kept)",
                         "a = Σ_i w² / ‖w‖² depends on w in its numerator too: add "
                         "2 da w / ‖w‖² to dw, besides the path through the norm."),
    "norm_sign": ("a wrong sign on the path through the column norm", "d(1/m²)/dm = −2/m³: "
                  "the gradient reaching the norm is −2 Σ_j da w² / ‖w‖³."),
    "norm_missing_two": ("a missing 2 on the path through the column norm", "d(1/m²)/dm = "
                         "−2/m³: the 2 from the square is missing."),
    "dv_no_transpose": ("W_out instead of W_outᵀ on the way back", "for out = v W_out: "
                        "dv = dout W_outᵀ (shape (B, n, D))."),
    "dx_no_transpose": ("W_qkv instead of W_qkvᵀ on the way back", "for w = x W_qkv + b: "
                        "dx = dw W_qkvᵀ."),
    "norm_power": ("a wrong power on the path through the column norm", "d(1/m²)/dm = −2/m³ "
                   "(a third power), and then d‖w‖/dw = w/‖w‖ adds one more factor 1/‖w‖."),
}  # fmt: skip


# Parameter gradients: (gradient key, the forward input it multiplies, or None for a bias, or
# "temp" for the temperatures, the upstream gradient), looked up in the reference's dict
# after its backward has run.
_PARAMS = {
    "temp": ("temp", "dz_a"),
    "proj.bias": (None, "dout"),
    "proj.weight": ("v_flat", "dout"),
    "qkv.bias": (None, "dw_flat"),
    "qkv.weight": ("x", "dw_flat"),
}


def _param_slip(kind):
    """A detector: some weight or bias gradient is computed with an axis or batch slip, and
    every other parameter gradient is right (or has the same kind of slip)."""

    def wrong_versions(inp, g):
        B = g.shape[0]
        if isinstance(inp, str):  # temp (H, 1): the right sum is over the batch and the tokens
            if kind == "bias_axis":
                return [g.sum(axis=(0, 1)), g.sum(axis=2), g.sum(axis=(1, 2)), g.sum(),
                        g.sum(axis=0), g.mean(axis=(0, 2))]  # fmt: skip
            return [g[0].sum(axis=1)] if B > 1 else [g.sum(axis=(0, 2))]
        if inp is None:  # a bias: the right sum is over the batch and the tokens (axes 0, 1)
            if kind == "bias_axis":
                return [g.sum(axis=0), g.sum(axis=1), g.sum(axis=2), g.sum(axis=(1, 2)),
                        g.reshape(-1, g.shape[-1]).mean(axis=0)]  # fmt: skip
            return [g[0].sum(axis=0)] if B > 1 else [g.sum(axis=(0, 1))]
        if kind == "bias_axis":
            return []
        return [inp[0].T @ g[0], inp[-1].T @ g[-1]] if B > 1 else [inp[0].T @ g[0]]

    def detect(c, got):
        r = tssa_reference(c.args["x"], c.args["params"])
        r["dout"] = c.args["dout"]
        _, grads = tssa_backward_reference(c.args["dout"], r)
        slipped = False
        for key, (inp, up) in _PARAMS.items():
            if key not in got:
                return False
            if compare(grads[key], got[key], TOL, FLOOR)[0]:
                continue
            g, x = r[up], (inp if inp in (None, "temp") else r[inp])
            if not any(compare(v, got[key], TOL, FLOOR)[0] for v in wrong_versions(x, g)):
                return False
            slipped = True
        # on a batch of one, summing one element is right: the slip shows on B > 1 only
        return slipped or c.args["x"].shape[0] == 1

    return detect


PARAM_SLIPS = {
    "bias_axis": ("a bias or temperature gradient summed over the wrong axes", "a bias is "
                  "added to every token of every batch element, so its gradient sums the "
                  "upstream gradient over the batch and the tokens: g.sum(axis=(0, 1)) of a "
                  "(B, n, D) array, shape (D,); likewise d temp sums dz ⊙ a over the batch and "
                  "the tokens (axes 0 and 2 of (B, H, n)), shape (H, 1)."),
    "batch_one": ("a parameter gradient from one batch element only", "the parameters are "
                  "shared by the whole batch: sum over every batch element (reshape to "
                  "(B·n, D) before xᵀ @ g, or sum over axes 0 and 1 for a bias)."),
}  # fmt: skip


def _backward_withheld():
    from .. import kernels, nn

    return [
        ("whitebox.nn.tssa_backward", nn.tssa_backward),
        ("whitebox.kernels.tssa_core_backward", getattr(kernels, "tssa_core_backward", None)),
        ("whitebox.exercise_checks.tssa_backward_reference", tssa_backward_reference),
    ]


def _tssa_backward_spec(forward) -> Spec:
    def cases():
        out = []
        for i, c in enumerate(_tssa_cases(601)):
            rng = np.random.default_rng(6010 + i)
            dout = rng.standard_normal(c.args["x"].shape)  # random, never all ones
            out.append(Case(c.name, {"dout": dout, **c.args}, c.note))
        # the probe: the random case with temp = 0, where Π = 1/H whatever w is
        probe = copy.deepcopy(out[0])
        probe.name = "probe: the random case with temp = 0"
        probe.args["params"]["temp"] = np.zeros_like(probe.args["params"]["temp"])
        probe.note = (
            "with temp = 0 every membership is 1/H whatever w is, so only two paths reach w: "
            "the direct one (through v) and the one through the statistics y. d temp still "
            "needs dΠ, through v and through y, and the softmax backward."
        )
        probe.passed_note = (
            "there, with Π independent of w, your gradients are right, so the direct path "
            "and the path through y are right: the mistake is on a path that depends on "
            "temp ≠ 0: from the scores (a = Σ ŵ²) back to w, or through the column norm."
        )
        return [probe] + out

    def call(fn, args):
        _, cache = forward(args["x"], args["params"])
        return fn(args["dout"], cache)

    def ref(c):
        from .. import nn

        _, cache = nn.tssa_forward(c.args["x"], c.args["params"])
        dx, grads = nn.tssa_backward(c.args["dout"], cache)
        return {**{k: grads[k] for k in GRAD_KEYS}, "dx": dx}

    def extract(output, c):
        if not (isinstance(output, tuple | list) and len(output) == 2):
            raise BadOutput("tssa_backward should return the pair (dx, grads)")
        dx, grads = output
        if not isinstance(grads, dict):
            raise BadOutput(f"grads should be a dict, got {type(grads).__name__}")
        return {**{k: grads[k] for k in GRAD_KEYS if k in grads}, "dx": dx}

    def slip(key):
        def f(c):
            r = tssa_reference(c.args["x"], c.args["params"])
            dx, grads = tssa_backward_reference(c.args["dout"], r, slip=key)
            return {**grads, "dx": dx}

        return f

    def transposed_weights(c, got):
        """Some weight gradient is the transpose of the right one; the others are right."""
        want, transposed = ref(c), False
        for k in ("proj.weight", "qkv.weight"):
            if compare(want[k], got.get(k), TOL, FLOOR)[0]:
                continue
            if not compare(want[k].T, got.get(k), TOL, FLOOR)[0]:
                return False
            transposed = True
        return transposed

    def extra(fn):
        """The forward the backward is checked with must itself be right."""
        problems = []
        for c in _tssa_cases(601):
            from .. import nn

            out, _ = forward(c.args["x"], copy.deepcopy(c.args["params"]))
            want, _ = nn.tssa_forward(c.args["x"], c.args["params"])
            if not compare(want, out, TOL, FLOOR)[0]:
                problems.append(f"the forward pass given to the checker is wrong on '{c.name}'")
        return problems

    return Spec(
        "tssa_backward",
        "tssa_backward(dout, cache) -> (dx, grads)",
        "whitebox.nn.tssa_backward",
        cases,
        ref,
        call=call,
        extract=extract,
        extra=extra,
        slips=[
            Slip(name, hint, slip(k), detect=transposed_weights if k == "transposed_dW" else None)
            for k, (name, hint) in TSSA_BACKWARD_SLIPS.items()
        ]
        + [Slip(name, hint, detect=_param_slip(k)) for k, (name, hint) in PARAM_SLIPS.items()],
        shapes="dout (B, n, D); return dx (B, n, D) and grads shaped like the parameters: qkv.weight (D, D), qkv.bias (D,), temp (H, 1), proj.weight (D, D), proj.bias (D,)",
        withheld=_backward_withheld,
        namespaces=lambda fn, args: [forward],
    )


def check_tssa_backward(tssa_backward, forward) -> CheckResult:
    """Check ``tssa_backward(dout, cache) -> (dx, grads)`` (exercise 06), with ``cache`` from
    ``forward(x, params)``; grads has the keys of ``GRAD_KEYS``. Compared in backprop order."""
    return run_check(_tssa_backward_spec(forward), tssa_backward)
