"""Exercise 07: the causal TSSA layer, with cumulative sums over the tokens."""

from __future__ import annotations

import copy

import numpy as np

from .core import FLOOR, Case, CheckResult, Slip, Spec, compare, run_check, show_err
from .tssa_layer import (
    _DETECT,
    MEMBERSHIP_SLIPS,
    _forward_spec_parts,
    _large_scores_case,
    _membership_softmax,
)


def _exclusive_cumsum(a):
    """Σ over the tokens strictly before t (axis 2): the running sum shifted by one token."""
    out = np.zeros_like(a)
    out[:, :, 1:] = np.cumsum(a, axis=2)[:, :, :-1]
    return out


def _shifted(a, kind):
    """Prefix sums over the tokens (axis 2) with a window slip: 'roll' (np.roll by +1: the
    tokens before t, and the whole sequence at t = 0), 'next' (np.roll by −1: tokens ≤ t + 1),
    'reverse' (a suffix sum: tokens ≥ t), 'mean' (a running mean over t + 1 tokens)."""
    c = np.cumsum(a, axis=2)
    if kind == "roll":
        return np.roll(c, 1, axis=2)
    if kind == "next":
        return np.roll(c, -1, axis=2)
    if kind == "reverse":
        return np.flip(np.cumsum(np.flip(a, axis=2), axis=2), axis=2)
    if kind == "mean":
        shape = [1] * a.ndim
        shape[2] = a.shape[2]
        return c / np.arange(1.0, a.shape[2] + 1).reshape(shape)
    return c


def causal_tssa_reference(x, params, slip=None):
    """Causal TSSA in plain NumPy with an optional planted ``slip`` (a key of
    ``CAUSAL_SLIPS``). Returns {'w', 'pi', 'y', 'v', 'out'}."""
    W, b, temp = params["qkv.weight"], params["qkv.bias"], params["temp"]
    B, T, D = x.shape
    H = temp.shape[0]
    p = D // H
    w = x @ W if slip == "no_qkv_bias" else x @ W + b  # (B, T, D)
    w = w.reshape(B, T, H, p).transpose(0, 2, 1, 3)  # (B, H, T, p)
    w_sq = w * w
    if slip == "r_sum":
        r_raw = np.broadcast_to(w_sq.sum(axis=2, keepdims=True), w_sq.shape)
    elif slip == "cumsum_features":
        r_raw = np.cumsum(w_sq, axis=3)
    elif slip == "r_exclusive":
        r_raw = _exclusive_cumsum(w_sq)
    elif slip in ("r_roll", "r_next", "r_reverse", "r_mean"):
        r_raw = _shifted(w_sq, slip[2:])
    else:
        r_raw = np.cumsum(w_sq, axis=2)  # (B, H, T, p)
    r = r_raw if slip == "no_clamp" else np.maximum(r_raw, 1e-12)
    q = w_sq / (np.sqrt(r) if slip == "sqrt_r" else r)
    beta = params["denom_bias"][:, 1 : T + 1, 0] if slip == "beta_shift" else None
    beta = params["denom_bias"][:, :T, 0] if beta is None else beta  # (H, T)
    a = q.sum(axis=3) + {"beta_once": 1, "no_beta": 0}.get(slip, p) * beta  # (B, H, T)
    if slip == "scores_mean":
        a = a / p  # the slip: a mean over the p features
    z = a / temp if slip == "temp_divides" else temp * a  # (B, H, T)
    pi = _membership_softmax(z, slip, head_axis=1, token_axis=2)  # (B, H, T)
    if slip == "s_sum":
        num = np.broadcast_to((pi[..., None] * w_sq).sum(axis=2, keepdims=True), w_sq.shape)
        den = np.broadcast_to(pi.sum(axis=2, keepdims=True), pi.shape) + 1e-8
    elif slip == "s_exclusive":
        num = _exclusive_cumsum(pi[..., None] * w_sq)
        den = _exclusive_cumsum(pi[..., None])[..., 0] + 1e-8
    elif slip in ("s_roll", "s_next", "s_reverse"):
        num = _shifted(pi[..., None] * w_sq, slip[2:])
        den = _shifted(pi[..., None], slip[2:])[..., 0] + 1e-8
    elif slip == "den_not_cumulative":
        num = np.cumsum(pi[..., None] * w_sq, axis=2)
        den = pi + 1e-8
    elif slip == "s_over_t":
        num = np.cumsum(pi[..., None] * w_sq, axis=2)
        den = np.broadcast_to(np.arange(1.0, T + 1), pi.shape)  # the slip: t + 1 tokens
    else:
        num = np.cumsum(pi[..., None] * w_sq, axis=2)
        den = np.cumsum(pi, axis=2) + (0.0 if slip == "no_eps" else 1e-8)
    y = num / den[..., None]  # (B, H, T, p)
    v = -pi[..., None] * w / (1.0 + y)
    out = v.transpose(0, 2, 1, 3).reshape(B, T, D) @ params["proj.weight"]
    out = out if slip == "no_proj_bias" else out + params["proj.bias"]  # (B, T, D)
    return {"w": w, "pi": pi, "y": y, "v": v, "out": out}


CAUSAL_SLIPS = {
    "s_sum": ("the statistics y see the future (a sum instead of a cumulative sum)",
              "y_t = cumsum_t(Π w²) / (cumsum_t(Π) + 1e-8): token t may only use tokens ≤ t."),
    "r_sum": ("the normalizer r sees the future (a sum instead of a cumulative sum)",
              "r_t = max(cumsum_t w², 1e-12): the running sum over tokens ≤ t."),
    "cumsum_features": ("the cumulative sum over the wrong axis", "accumulate over the tokens "
                        "(axis 2 of (B, H, T, p)), not over the features."),
    "no_clamp": ("a forgotten 1e-12 clamp", "r = max(cumsum w², 1e-12): a feature that is 0 "
                 "on the first tokens gives 0/0 = nan."),
    "sqrt_r": ("the running norm instead of the running squared norm", "the score uses "
               "w²/r with r = cumsum w² (a squared norm), the causal analogue of ŵ²."),
    "beta_once": ("β added once instead of once per feature", "score_ht = temp_h Σ_i "
                  "(w²/r + β_ht) = temp_h (Σ_i w²/r + p β_ht)."),
    "softmax_tokens": ("the softmax over the wrong axis (tokens instead of heads)",
                       "Π_ht = softmax over the heads h (axis 1)."),
    "no_eps": ("a forgotten 1e-8", "y_t = cumsum_t(Π w²) / (cumsum_t(Π) + 1e-8)."),
    "s_exclusive": ("an exclusive prefix in the statistics y (the cumulative sum shifted by "
                    "one token)", "y_t = Σ_{t' ≤ t} Π w² / (Σ_{t' ≤ t} Π + 1e-8) includes "
                    "token t itself: np.cumsum(..., axis=2) as it is, not shifted to the "
                    "tokens before t."),
    "r_exclusive": ("an exclusive prefix in the normalizer r (the cumulative sum shifted by "
                    "one token)", "r_t = max(Σ_{t' ≤ t} w², 1e-12) includes token t itself, "
                    "so w_t²/r_t ≤ 1: np.cumsum(w², axis=2) as it is, not shifted."),
    "s_over_t": ("the token count t + 1 instead of Σ_{t' ≤ t} Π in the statistics", "y_t is "
                 "a weighted mean: divide by the running weight cumsum_t(Π) + 1e-8, not by "
                 "the number of tokens so far."),
    "no_beta": ("the bias β (denom_bias) is missing", "score_ht = temp_h (Σ_i w²/r + p "
                "β_ht) with β = denom_bias[:, :T, 0]."),
    "s_roll": ("the statistics' window shifted by one token (np.roll)", "y_t sums over the "
               "tokens t' ≤ t, token t included; np.roll(..., 1) moves every prefix one "
               "token later and wraps the whole sequence's sum around to t = 0."),
    "r_roll": ("the normalizer's window shifted by one token (np.roll)", "r_t = max(Σ_{t' ≤ t} "
               "w², 1e-12), token t included; np.roll(..., 1) wraps the whole sequence's sum "
               "around to t = 0 (the future leaks there)."),
    "s_next": ("the statistics' window one token too long (tokens ≤ t + 1)", "y_t may use "
               "tokens t' ≤ t only: the running sum at t itself, not at t + 1."),
    "r_next": ("the normalizer's window one token too long (tokens ≤ t + 1)", "r_t may use "
               "tokens t' ≤ t only: the running sum at t itself, not at t + 1."),
    "s_reverse": ("a suffix sum in the statistics (tokens ≥ t)", "np.cumsum runs forward "
                  "along axis 2: y_t uses the tokens before and at t, not those after."),
    "r_reverse": ("a suffix sum in the normalizer r (tokens ≥ t)", "r_t = max(Σ_{t' ≤ t} "
                  "w², 1e-12): a forward running sum, not a sum over the tokens from t on."),
    "r_mean": ("a running mean instead of a running sum in r", "r_t is the running squared "
               "norm Σ_{t' ≤ t} w² (no division by t + 1), the causal analogue of ‖w‖²."),
    "beta_shift": ("β taken one position late (denom_bias[:, 1:T + 1])", "token t (counting "
                   "from 0) uses β at position t: denom_bias[:, :T, 0]."),
    "den_not_cumulative": ("the statistics' denominator is not a running sum", "y_t = "
                           "cumsum_t(Π w²) / (cumsum_t(Π) + 1e-8): the weights in the "
                           "denominator add up over the prefix too."),
    **MEMBERSHIP_SLIPS,
}  # fmt: skip


def _causal_cases(seed):
    rng = np.random.default_rng(seed)
    B, T, D, H, L = 2, 6, 8, 2, 9
    random = {
        "x": rng.standard_normal((B, T, D)),
        "params": {
            "qkv.weight": 0.6 * rng.standard_normal((D, D)),
            "qkv.bias": 0.1 * rng.standard_normal(D),
            "temp": rng.uniform(0.5, 2.0, (H, 1)),
            "denom_bias": 0.3 * rng.standard_normal((H, L, 1)),
            "proj.weight": 0.5 * rng.standard_normal((D, D)),
            "proj.bias": 0.1 * rng.standard_normal(D),
        },
    }
    # Hard case, as for the non-causal layer: head 0 has entries +-1 and temperature -200
    # (membership ~e^-100: only the 1e-8 keeps y near 0); in head 1 feature 0 is 0 on the
    # first two tokens (r = 0 there: only the 1e-12 clamp keeps w^2/r finite).
    B, T, D, H, L = 1, 4, 6, 3, 6
    x = rng.standard_normal((B, T, D))
    x[..., 0:2] = rng.choice([-1.0, 1.0], size=(B, T, 2))
    x[:, :2, 2] = 0.0
    hard = {
        "x": x,
        "params": {
            "qkv.weight": np.eye(D), "qkv.bias": np.zeros(D),
            "temp": np.array([[-200.0], [1.0], [1.5]]), "denom_bias": np.zeros((H, L, 1)),
            "proj.weight": 0.5 * rng.standard_normal((D, D)),
            "proj.bias": 0.1 * rng.standard_normal(D),
        },
    }  # fmt: skip
    return [
        Case("random B=2 T=6 D=8 H=2 block_size=9", random),
        Case("hard: Π ≈ 0 in head 0, zeros on tokens 0-1", hard,
             note="W_qkv = I, so w = x. Head 0 has temperature −200 (membership about e^−100: "
                  "only the 1e-8 keeps y ≈ 0); in head 1, feature 0 is 0 on tokens 0 and 1 "
                  "(r = 0 there: only the 1e-12 clamp keeps w²/r finite)."),
    ]  # fmt: skip


def _causal_spec() -> Spec:
    from .. import nn

    ref, extract, slip = _forward_spec_parts(
        "causal_tssa_forward", nn.causal_tssa_forward, causal_tssa_reference
    )

    def extra(fn):
        """Changing tokens t0.. must leave the outputs at tokens < t0 unchanged."""
        c = _causal_cases(701)[0]
        x, params = c.args["x"], c.args["params"]
        t0 = 3
        x2 = x.copy()
        x2[:, t0:] = np.random.default_rng(7011).standard_normal(x2[:, t0:].shape)
        out1, _ = fn(x.copy(), copy.deepcopy(params))
        out2, _ = fn(x2, copy.deepcopy(params))
        ok, err, _ = compare(np.asarray(out1)[:, :t0], np.asarray(out2)[:, :t0], 1e-12, FLOOR)
        if ok:
            return []
        return [
            f"not causal: changing tokens {t0}.. changed the outputs at tokens < {t0} (relative "
            f"change {show_err(err)}); every statistic at token t must use tokens ≤ t only."
        ]

    return Spec(
        "causal_tssa_forward", "causal_tssa_forward(x, params) -> (out, cache)",
        "whitebox.nn.causal_tssa_forward", lambda: _causal_cases(701) + [_large_scores_case(702, causal=True)], ref, extract=extract,
        extra=extra,
        withheld=lambda: [("whitebox.nn.causal_tssa_forward", nn.causal_tssa_forward),
                          ("whitebox.exercise_checks.causal_tssa_reference", causal_tssa_reference)],
        slips=[
            Slip(name, hint, slip(k), detect=_DETECT.get(k)) for k, (name, hint) in CAUSAL_SLIPS.items()
        ], shapes="x (B, T, D); denom_bias (H, block_size, 1), use [:, :T]; cache: w, y, v (B, H, T, p), pi (B, H, T)",
    )  # fmt: skip


def check_causal_tssa_forward(causal_tssa_forward) -> CheckResult:
    """Check ``causal_tssa_forward(x, params) -> (out, cache)`` (exercise 07); the cache must
    hold 'w' (B, H, T, p), 'pi' (B, H, T), 'y' (B, H, T, p) (the statistics) and 'v' (B, H, T, p)."""
    return run_check(_causal_spec(), causal_tssa_forward)
