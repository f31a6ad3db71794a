"""White-box measurements of a trained ToST classifier (chapters 9 and 10, ``make results``).

Every quantity here is computed per image, in float64, from the intermediates that
``model.forward(x, return_intermediates=True)`` hands out: the tokens ``Z_l`` entering and
leaving each block, (B, N, D), and each TSSA block's membership ``Pi_l``, (B, H, N).

* :func:`membership_stats`: how confident ``Pi`` is (mean max over heads, mean entropy) and
  what decides it: the law of total variance splits the variance of ``Pi_hj`` over images and
  patches into a *position* part (the per-patch mean), a *class* part (the per-class, per-patch
  mean around it) and an *individual* part (the rest); the three shares add up to 1.
* :func:`layer_rates`: R, R_c and Delta R of each block's input and output tokens, centred and
  scaled to unit length (the direction LayerNorm keeps), under the block's own ``Pi``.
* :func:`attention_substep`: R_c^var (with the block's own ``Pi`` and its orthonormalized head
  projections as ``U``) of the attention's LayerNorm'd input, after the attention sub-step and
  after the whole block, and the cosine of the attention's update with -grad R_c^var.
* :func:`layer_profile`: over depth (chapter 10's six-block network), per block R_c^var and the
  rate of the projections R_c^proj of the TSSA's input, its output and the block's output, with
  the heads' raw, QR or polar bases, and how far each head's covariance U_k^T M_k U_k is from
  diagonal (:func:`offdiag_share`), on training and test images (:func:`profile_report`,
  summarized over the seeds by :func:`summarize_profile`).

:func:`digits_report` applies the first three to a digits checkpoint and to the same network at
initialization; :func:`summarize` turns several seeds' reports into the claims the chapters
make, each with the number of seeds in which it held.
"""

from __future__ import annotations

import statistics

import numpy as np

from . import mcr2
from .backend import to_numpy

#: Precision of R and R_c on unit-length tokens.
EPS_UNIT = 0.5
#: The precisions of R_c^var on LayerNorm outputs (length about sqrt(D) = 8 for D = 64):
#: 4 = 0.5 sqrt(D) is the same relative precision as EPS_UNIT.
EPS_LN = (1.0, 4.0, 16.0)


def unit_tokens(Z):
    """(B, N, D) -> float64 tokens, centred and scaled to unit length (what LayerNorm keeps)."""
    Z = np.asarray(to_numpy(Z), dtype=np.float64)
    Z = Z - Z.mean(axis=-1, keepdims=True)
    return Z / np.linalg.norm(Z, axis=-1, keepdims=True)


def memberships(pi):
    """(B, H, N) -> (B, N, H) float64, rows renormalized onto the simplex (the paper's n x K)."""
    P = np.asarray(to_numpy(pi), dtype=np.float64).transpose(0, 2, 1)
    return P / P.sum(axis=-1, keepdims=True)


#: How :func:`head_bases` turns a head's learned projection W_h (D, p) into U_h: as learned,
#: by QR (the subspace, in a basis that depends on the order of W_h's columns) or by the polar
#: factor W_h (W_h^T W_h)^{-1/2} (the orthonormal matrix closest to W_h in Frobenius norm: the
#: same subspace, in the basis nearest to the learned coordinate axes).
BASIS_KINDS = ("raw", "qr", "polar")


def orthonormalize(W, kind: str = "qr"):
    """(D, p) -> (D, p): ``W`` itself (``"raw"``), its QR factor Q (``"qr"``) or its polar
    factor (``"polar"``, U V^T from the thin SVD W = U S V^T). Q and the polar factor span the
    same subspace as ``W`` (for full column rank) and have orthonormal columns."""
    if kind not in BASIS_KINDS:
        raise ValueError(f"kind: expected one of {BASIS_KINDS}, got {kind!r}")
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[1] > W.shape[0]:
        raise ValueError(f"W: expected a (D, p) matrix with p <= D, got shape {W.shape}")
    if kind == "raw":
        return W.copy()
    if kind == "qr":
        return np.linalg.qr(W)[0]
    left, _, right_t = np.linalg.svd(W, full_matrices=False)
    return left @ right_t


def head_bases(block, kind: str = "qr"):
    """(H, D, p): the p columns of each head in ``qkv.weight``, orthonormalized by QR (or as
    ``kind`` says, see :data:`BASIS_KINDS`).

    The learned projection is unconstrained; the variational bound holds for orthonormal U only,
    so we keep the subspaces the heads project on and drop the scale (and the bias)."""
    W = np.asarray(to_numpy(block.attn.params["qkv.weight"]), dtype=np.float64)  # (D, D)
    H = block.attn.num_heads
    p = W.shape[1] // H
    return np.stack([orthonormalize(W[:, h * p : (h + 1) * p], kind) for h in range(H)])


def membership_stats(pi, labels) -> dict:
    """Confidence, entropy and the variance shares of one block's ``Pi``, (B, H, N).

    ``labels``: (B,) class of each image. Returns per-head lists and their means over heads."""
    p = np.asarray(to_numpy(pi), dtype=np.float64)  # (B, H, N)
    labels = np.asarray(labels)
    H = p.shape[1]
    entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1).mean()
    shares = {"position": [], "class": [], "individual": []}
    for h in range(H):
        x = p[:, h]  # (B, N)
        by_pos = x.mean(axis=0)  # (N,)
        by_class = np.zeros_like(x)
        for c in np.unique(labels):
            by_class[labels == c] = x[labels == c].mean(axis=0)
        total = x.var()
        if total == 0.0:  # a membership that never changes: nothing to explain
            parts = (0.0, 0.0, 0.0)
        else:
            parts = (
                by_pos.var() / total,
                ((by_class - by_pos) ** 2).mean() / total,
                ((x - by_class) ** 2).mean() / total,
            )
        for key, v in zip(shares, parts):
            shares[key].append(float(v))
    return {
        "confidence": float(p.max(axis=1).mean()),
        "entropy": float(entropy),
        "std": float(p.std()),
        "max": float(p.max()),
        **{f"{k}_share": v for k, v in shares.items()},
        **{f"{k}_share_mean": float(np.mean(v)) for k, v in shares.items()},
    }


def _rates(Z, P, eps):
    # mean over images of (R, R_c, Delta R); Z: (B, N, D) unit tokens, P: (B, N, H)
    out = np.array(
        [(mcr2.coding_rate(z.T, eps), mcr2.compression_rate(z.T, p, eps)) for z, p in zip(Z, P)]
    )  # z.T: (D, N), the paper's layout
    R, Rc = out.T
    return {"R": float(R.mean()), "R_c": float(Rc.mean()), "delta_R": float((R - Rc).mean())}


def layer_rates(inter, eps=EPS_UNIT, pi=None) -> list[dict]:
    """R, R_c, Delta R at each block's input and output (unit tokens, the block's own Pi).

    ``pi``: memberships to use where the network has none (softmax attention), else None; a
    network without memberships and without ``pi`` gets R only."""
    toks, out = inter["tokens"], []
    for l in range(len(toks) - 1):
        own = inter["pi"][l] if inter["pi"][l] is not None else (pi[l] if pi else None)
        zin, zout = unit_tokens(toks[l]), unit_tokens(toks[l + 1])
        if own is None:
            R = [float(np.mean([mcr2.coding_rate(z.T, eps) for z in Z])) for Z in (zin, zout)]
            out.append({"in": {"R": R[0]}, "out": {"R": R[1]}})
        else:
            P = memberships(own)
            out.append({"in": _rates(zin, P, eps), "out": _rates(zout, P, eps)})
    return out


def _rc_var(X, P, U, eps):
    return np.array([mcr2.variational_compression_rate(x.T, p, U, eps) for x, p in zip(X, P)])


def attention_substep(model, inter, eps, per_image: bool = False) -> list[dict]:
    """Per TSSA block: R_c^var per image before (X_0) and after the attention sub-step (X_1)
    and after the block (X_2), all LayerNorm'd by the block's ``ln_1``, with the block's own Pi
    and U held fixed; and the cosine of X_1 - X_0 with -grad R_c^var(X_0). Means over the
    images; ``per_image=True`` adds the per-image changes and cosines as arrays."""
    toks, out = inter["tokens"], []
    for l, blk in enumerate(model.blocks):
        if inter["pi"][l] is None:
            out.append(None)
            continue
        U = head_bases(blk)
        X0 = blk.ln_1.forward(toks[l])  # (B, N, D)
        a = blk.attn.forward(X0)
        P = memberships(blk.attn.last_pi)
        X1 = blk.ln_1.forward(toks[l] + blk.params["gamma1"] * a)
        X2 = blk.ln_1.forward(toks[l + 1])
        X0, X1, X2 = (np.asarray(to_numpy(X), np.float64) for X in (X0, X1, X2))
        grad = np.stack(
            [mcr2.variational_compression_grad(x.T, p, U, eps).T for x, p in zip(X0, P)]
        )  # (B, N, D)
        step = (X1 - X0).reshape(len(X0), -1)
        g = grad.reshape(len(X0), -1)
        cos = -(step * g).sum(1) / (np.linalg.norm(step, axis=1) * np.linalg.norm(g, axis=1))
        r0, r1, r2 = (_rc_var(X, P, U, eps) for X in (X0, X1, X2))
        extra = {"change": r1 - r0, "cos": cos} if per_image else {}
        out.append(
            {
                **extra,
                "rc_var_X0": float(r0.mean()),
                "rc_var_X1": float(r1.mean()),
                "rc_var_X2": float(r2.mean()),
                "attention_change": float((r1 - r0).mean()),
                "attention_lowers_share": float(np.mean(r1 < r0)),
                "block_lowers_share": float(np.mean(r2 < r0)),
                "cos_mean": float(cos.mean()),
                "cos_std": float(cos.std()),
                "cos2_mean": float((cos**2).mean()),
            }
        )
    return out


def same_norm_random(delta, rng):
    """(B, N, D) -> a random update with the same per-token norms as ``delta``: each token's
    direction drawn uniformly on the sphere (a normalized Gaussian), its length kept."""
    delta = np.asarray(to_numpy(delta), dtype=np.float64)
    g = rng.normal(size=delta.shape)
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    return g * np.linalg.norm(delta, axis=-1, keepdims=True)


def substep_effect(X0, X1, P, U, eps) -> dict:
    """How an update X0 -> X1 (both (B, N, D)) changes R_c^var(. | Pi, U) at ``eps``, per image:
    ``change`` R_c^var(X1) - R_c^var(X0), and ``cos``, the cosine of X1 - X0 with
    -grad R_c^var(X0) over all N D entries; cos^2 is the share of the update's energy (squared
    norm) along -grad R_c^var."""
    X0, X1 = (np.asarray(to_numpy(X), np.float64) for X in (X0, X1))
    grad = np.stack(
        [mcr2.variational_compression_grad(x.T, p, U, eps).T for x, p in zip(X0, P)]
    )  # (B, N, D)
    step = (X1 - X0).reshape(len(X0), -1)
    g = grad.reshape(len(X0), -1)
    cos = -(step * g).sum(1) / (np.linalg.norm(step, axis=1) * np.linalg.norm(g, axis=1))
    change = _rc_var(X1, P, U, eps) - _rc_var(X0, P, U, eps)
    return {"change": change, "cos": cos}


def _effect_summary(effect: dict) -> dict:
    change, cos = effect["change"], effect["cos"]
    return {
        "change_mean": float(change.mean()),
        "lowers_share": float(np.mean(change < 0)),
        "cos_mean": float(cos.mean()),
        "cos2_mean": float((cos**2).mean()),
    }


#: The updates :func:`update_controls` compares in each block (see there).
CONTROL_ARMS = ("trained", "random", "softmax")


def update_controls(model, inter, eps, control=None, control_inter=None, seed=0) -> list[dict]:
    """Per TSSA block l, the attention update and two controls, each measured as in
    :func:`attention_substep` (R_c^var of LN_1'd tokens with the ToST block's own U_l, QR
    bases, and Pi_l held fixed; :func:`substep_effect`):

    * ``trained``: the block's update, X_0 = LN_1(Z_{l-1}) -> X_1 = LN_1(Z_{l-1} + g_1 * A);
    * ``random``: the same with g_1 * A replaced by a random update with the same per-token
      norms (:func:`same_norm_random`, generator seeded by ``seed``): any update of that size;
    * ``softmax``: (when ``control``, a network with softmax attention, and its intermediates
      ``control_inter`` on the same images are given) the control network's own block-l update
      of its own tokens, LN_1^s(Z^s_{l-1}) -> LN_1^s(Z^s_{l-1} + g_1^s * A^s), measured with the
      ToST's U_l and Pi_l of the same images: a trained attention update not derived from
      R_c^var.

    Returns, per block, {arm: {change_mean, lowers_share, cos_mean, cos2_mean}} (means over
    the images; cos2_mean: the mean share of the update's energy along -grad R_c^var)."""
    rng = np.random.default_rng(seed)
    toks, out = inter["tokens"], []
    for l, blk in enumerate(model.blocks):
        if inter["pi"][l] is None:
            out.append(None)
            continue
        U = head_bases(blk)
        X0 = blk.ln_1.forward(toks[l])
        delta = blk.params["gamma1"] * blk.attn.forward(X0)
        P = memberships(blk.attn.last_pi)
        Z = np.asarray(to_numpy(toks[l]))
        arms = {
            "trained": (X0, blk.ln_1.forward(toks[l] + delta)),
            "random": (X0, blk.ln_1.forward(Z + same_norm_random(delta, rng).astype(Z.dtype))),
        }
        if control is not None and l < len(control.blocks):
            cb, ct = control.blocks[l], control_inter["tokens"][l]
            X0s = cb.ln_1.forward(ct)
            arms["softmax"] = (
                X0s,
                cb.ln_1.forward(ct + cb.params["gamma1"] * cb.attn.forward(X0s)),
            )
        out.append(
            {k: _effect_summary(substep_effect(a, b, P, U, eps)) for k, (a, b) in arms.items()}
        )
    return out


#: Precision of the layer-wise profile (LayerNorm'd tokens have length about sqrt(D) = 8 for
#: D = 64; 4 = 0.5 sqrt(D) is the relative precision of EPS_UNIT, as in section 2 of chapter 10).
EPS_PROFILE = 4.0
#: What :func:`layer_profile` measures in block l: the TSSA's input X_0 = LN_1(Z_{l-1}), the
#: same X_0 rescaled per image to mean squared token length D (without the size the learned
#: LayerNorm gain gives it), the TSSA's output A = TSSA(X_0) (before gamma_1 and the residual), the same A rescaled per image
#: to the LayerNorm scale (mean squared token length D: its shape without its size), and the
#: block's output LN_1(Z_l).
PROFILE_REPS = ("in", "in_scaled", "tssa_out", "tssa_out_scaled", "out")


def projected_covariances(Z, P, U, centred: bool = False):
    """Each group's covariance in its own basis, per image:

        C_k = U_k^T M_k U_k,  M_k = Z diag(pi_k) Z^T / n_k      (p x p; the paper's d x n Z).

    The second moments, as in the variational bound; ``centred=True`` subtracts the group's
    weighted mean m_k = Z pi_k / n_k first (M_k - m_k m_k^T: the covariance proper).

    ``Z``: (B, n, d) tokens as rows (the layer layout), ``P``: (B, n, K) memberships, ``U``:
    (K, d, p). Returns (C, n_k): (B, K, p, p) and (B, K), in float64. diag(C_k) is the token
    statistics y_k of ``whitebox.mcr2.token_statistics``."""
    Z, P, U = (np.asarray(to_numpy(a), dtype=np.float64) for a in (Z, P, U))
    if Z.ndim != 3 or P.shape != Z.shape[:2] + (U.shape[0],) or U.shape[1] != Z.shape[2]:
        raise ValueError(
            f"Z, P, U: expected (B, n, d), (B, n, K), (K, d, p); got {Z.shape}, {P.shape}, "
            f"{U.shape}"
        )
    n_k = P.sum(axis=1)  # (B, K)
    if np.any(n_k <= 0):
        raise ValueError("P: every group needs a positive effective size n_k")
    W = np.einsum("bnd,kdp->bknp", Z, U)  # (B, K, n, p): U_k^T z_j as rows
    if centred:
        mean = np.einsum("bknp,bnk->bkp", W, P) / n_k[..., None]  # (B, K, p)
        W = W - mean[:, :, None, :]
    C = np.einsum("bkni,bnk,bknj->bkij", W, P, W) / n_k[..., None, None]  # (B, K, p, p)
    return C, n_k


def offdiag_share(C):
    """||offdiag(C)||_F^2 / ||C||_F^2 over the last two axes (0 for a diagonal C, the case
    in which the variational bound is an equality); a zero matrix counts as diagonal."""
    C = np.asarray(C, dtype=np.float64)
    if C.ndim < 2 or C.shape[-1] != C.shape[-2]:
        raise ValueError(f"C: expected (..., p, p) square matrices, got shape {C.shape}")
    total = (C**2).sum(axis=(-2, -1))
    diag = (np.diagonal(C, axis1=-2, axis2=-1) ** 2).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (total - diag) / np.where(total > 0, total, 1.0), 0.0)


def rates_from_covariances(C, n_k, n, d, eps):
    """Per image, from :func:`projected_covariances`: (R_c^var, R_c^proj), each (B,):

        R_c^var  = sum_k n_k/(2n) sum_i log(1 + c C_k,ii)     (the variational term)
        R_c^proj = sum_k n_k/(2n) logdet(I_p + c C_k)          (the rate of the projections)

    with c = d/eps^2. R_c^var >= R_c^proj for every PSD C_k (Hadamard's inequality), with
    equality iff every C_k is diagonal (chapter 2, the case p < d)."""
    if eps <= 0:
        raise ValueError(f"eps: expected a positive precision, got {eps}")
    c = d / eps**2
    p = C.shape[-1]
    diag = np.diagonal(C, axis1=-2, axis2=-1)  # (B, K, p): the token statistics y_k
    rc_var = (n_k / (2 * n) * np.log1p(c * diag).sum(axis=-1)).sum(axis=-1)
    sign, logdet = np.linalg.slogdet(np.eye(p) + c * C)  # (B, K)
    if np.any(sign <= 0):
        raise ValueError("C: expected positive semidefinite covariances")
    rc_proj = (n_k / (2 * n) * logdet).sum(axis=-1)
    return rc_var, rc_proj


def rescale(Z):
    """(B, N, D) -> float64, each image's tokens scaled by one factor to mean squared length D
    (the LayerNorm scale without a learned gain): the shape of the tokens without their size."""
    Z = np.asarray(to_numpy(Z), dtype=np.float64)
    D = Z.shape[-1]
    return Z * np.sqrt(D / (Z**2).sum(axis=-1).mean(axis=-1))[:, None, None]


def layer_profile(model, X, eps=EPS_PROFILE) -> list[dict]:
    """Per TSSA block l, for each of :data:`PROFILE_REPS`, under the block's own Pi_l and its
    heads' projections U_l as :data:`BASIS_KINDS` says (means over the images ``X``):

    ``length`` (mean token length), ``rc_var_<kind>`` and ``rc_proj_<kind>``
    (:func:`rates_from_covariances`, at ``eps``), ``offdiag_<kind>`` (:func:`offdiag_share` of
    the second moments, averaged over heads) and ``offdiag_centred_<kind>`` (the same for the
    centred covariances). R_c^proj is the same for ``qr`` and ``polar`` (one subspace)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        _, inter = model.forward(X, return_intermediates=True)
        toks, out = inter["tokens"], []
        for l, blk in enumerate(model.blocks):
            if inter["pi"][l] is None:
                out.append(None)
                continue
            X0 = blk.ln_1.forward(toks[l])  # (B, n, D)
            A = blk.attn.forward(X0)  # (B, n, D), the TSSA output
            P = memberships(blk.attn.last_pi)  # (B, n, H)
            X2 = blk.ln_1.forward(toks[l + 1])
            A = np.asarray(to_numpy(A), dtype=np.float64)
            D = A.shape[-1]
            X0 = np.asarray(to_numpy(X0), dtype=np.float64)
            reps = dict(zip(PROFILE_REPS, (X0, rescale(X0), A, rescale(A), X2)))
            bases = {kind: head_bases(blk, kind) for kind in BASIS_KINDS}
            row = {}
            for name, Z in reps.items():
                Z = np.asarray(to_numpy(Z), dtype=np.float64)
                n = Z.shape[1]
                entry = {"length": float(np.linalg.norm(Z, axis=-1).mean())}
                for kind, U in bases.items():
                    C, n_k = projected_covariances(Z, P, U)
                    rc_var, rc_proj = rates_from_covariances(C, n_k, n, D, eps)
                    entry[f"rc_var_{kind}"] = float(rc_var.mean())
                    entry[f"rc_proj_{kind}"] = float(rc_proj.mean())
                    entry[f"offdiag_{kind}"] = float(offdiag_share(C).mean())
                    Cc, _ = projected_covariances(Z, P, U, centred=True)
                    entry[f"offdiag_centred_{kind}"] = float(offdiag_share(Cc).mean())
                row[name] = entry
            out.append(row)
    return out


def profile_report(checkpoint, eps=EPS_PROFILE) -> dict:
    """:func:`layer_profile` of a digits checkpoint on its training and test images (without
    augmentation), trained and at initialization (the same architecture and seed)."""
    from .models import build, load
    from .train import load_digits_split

    Xtr, _, Xte, _ = load_digits_split()
    model = load(checkpoint)
    nets = {"trained": model, "init": build(model.config)}
    report = {"eps": eps}
    for state, net in nets.items():
        report[state] = {
            "train": layer_profile(net, Xtr, eps),
            "test": layer_profile(net, Xte, eps),
        }
    return report


#: The quantities of :func:`layer_profile` that :func:`summarize_profile` follows over depth.
PROFILE_KEYS = ("length",) + tuple(
    f"{q}_{kind}"
    for q in ("rc_var", "rc_proj", "offdiag", "offdiag_centred")
    for kind in BASIS_KINDS
)


def summarize_profile(per_seed) -> dict:
    """Over the seeds' ``"profile"`` reports: per state, split, representation and quantity the
    per-block spread, and in how many seeds the quantity is lower in the last block than in the
    first (``falls``) and falls from every block to the next (``falls_every_block``)."""
    first = per_seed[0]["profile"]
    L = len(first["trained"]["test"])
    out = {"blocks": L, "eps": first["eps"], "spread": {}, "claims": {}}
    for state in ("trained", "init"):
        for split in ("train", "test"):
            for rep in PROFILE_REPS:
                for key in PROFILE_KEYS:
                    name = f"{state}_{split}_{rep}_{key}"

                    def curve(r, state=state, split=split, rep=rep, key=key):
                        return [b[rep][key] for b in r["profile"][state][split]]

                    out["spread"][name] = [
                        _spread([curve(r)[l] for r in per_seed]) for l in range(L)
                    ]
                    out["claims"][f"{name}_falls"] = _count(
                        per_seed, lambda r, curve=curve: curve(r)[-1] < curve(r)[0]
                    )
                    out["claims"][f"{name}_falls_every_block"] = _count(
                        per_seed,
                        lambda r, curve=curve: all(b < a for a, b in zip(curve(r), curve(r)[1:])),
                    )
    return out


def network_report(model, X, y, controls: bool = False, control=None) -> dict:
    """Everything above for one network on images ``X`` (B, 1, 8, 8) with labels ``y``;
    ``controls``: also :func:`update_controls` at every precision of :data:`EPS_LN` (with the
    softmax network ``control`` as the third arm when given)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        logits, inter = model.forward(X, return_intermediates=True)
        report = {
            "accuracy": float((to_numpy(logits).argmax(axis=1) == y).mean()),
            "rates": layer_rates(inter),
        }
        if any(p is not None for p in inter["pi"]):
            report["membership"] = [membership_stats(p, y) for p in inter["pi"]]
            report["substep"] = {f"{eps:g}": attention_substep(model, inter, eps) for eps in EPS_LN}
            if controls:
                c_inter = (
                    None if control is None else control.forward(X, return_intermediates=True)[1]
                )
                report["controls"] = {
                    f"{eps:g}": update_controls(model, inter, eps, control, c_inter)
                    for eps in EPS_LN
                }
    return report


def digits_report(checkpoint, control_checkpoint=None) -> dict:
    """:func:`network_report` of a digits checkpoint, trained and at initialization (the same
    architecture and seed: the run's starting point), on the 450 test images; the trained ToST
    also with the controls of :func:`update_controls` (``control_checkpoint``: a softmax
    network's checkpoint for the third arm, e.g. the baseline of the same seed)."""
    from .models import build, load
    from .train import load_digits_split

    _, _, Xte, yte = load_digits_split()
    model = load(checkpoint)
    control = load(control_checkpoint) if control_checkpoint is not None else None
    report = {"trained": network_report(model, Xte, yte, controls=True, control=control)}
    if model.blocks[0].attn.__class__.__name__ != "SoftmaxAttention":
        report["init"] = network_report(build(model.config), Xte, yte)
    return report


def _count(per_seed, test) -> dict:
    held = [r["seed"] for r in per_seed if test(r)]
    return {"held": len(held), "of": len(per_seed), "seeds": held}


def _spread(values) -> dict:
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.mean(values), 4), "std": round(std, 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}  # fmt: skip


def summarize(per_seed) -> dict:
    """The chapters' claims over the seeds: how many seeds each held in, and the spreads."""
    if "init" not in per_seed[0]:  # softmax network: R per layer only
        L = len(per_seed[0]["trained"]["rates"])
        return {
            "R_in": [
                _spread([r["trained"]["rates"][l]["in"]["R"] for r in per_seed]) for l in range(L)
            ],  # fmt: skip
            "R_out": [
                _spread([r["trained"]["rates"][l]["out"]["R"] for r in per_seed]) for l in range(L)
            ],  # fmt: skip
        }
    L = len(per_seed[0]["trained"]["membership"])
    out = {"blocks": L, "claims": {}, "spread": {}}
    claims, spread = out["claims"], out["spread"]
    for state in ("trained", "init"):
        for key in ("confidence", "entropy", "position_share_mean", "class_share_mean",
                    "individual_share_mean"):  # fmt: skip
            spread[f"{state}_{key}"] = [
                _spread([r[state]["membership"][l][key] for r in per_seed]) for l in range(L)
            ]
        for eps in per_seed[0][state]["substep"]:
            for key in ("attention_lowers_share", "attention_change", "cos_mean"):
                spread[f"{state}_{key}_eps{eps}"] = [
                    _spread([r[state]["substep"][eps][l][key] for r in per_seed]) for l in range(L)
                ]
        for key in ("R", "R_c", "delta_R"):
            spread[f"{state}_{key}_in"] = [
                _spread([r[state]["rates"][l]["in"][key] for r in per_seed]) for l in range(L)
            ]
            spread[f"{state}_{key}_out"] = [
                _spread([r[state]["rates"][l]["out"][key] for r in per_seed]) for l in range(L)
            ]
    m = lambda r, s, l, k: r[s]["membership"][l][k]  # noqa: E731
    for l in range(L):
        claims[f"training_sharpens_pi_block{l + 1}"] = _count(
            per_seed,
            lambda r, l=l: (
                m(r, "trained", l, "entropy") < m(r, "init", l, "entropy")
                and m(r, "trained", l, "confidence") > m(r, "init", l, "confidence")
            ),
        )
    if L >= 2:
        claims["block1_more_positional_than_block2"] = _count(
            per_seed,
            lambda r: (
                m(r, "trained", 0, "position_share_mean")
                > m(r, "trained", 1, "position_share_mean")
            ),
        )
        claims["block1_more_positional_than_at_init"] = _count(
            per_seed,
            lambda r: (
                m(r, "trained", 0, "position_share_mean") > m(r, "init", 0, "position_share_mean")
            ),
        )
    for eps in per_seed[0]["trained"]["substep"]:
        for l in range(L):
            for state in ("trained", "init"):
                sub = lambda r, s=state, l=l, e=eps: r[s]["substep"][e][l]  # noqa: E731
                claims[f"{state}_block{l + 1}_lowers_rc_var_in_every_image_eps{eps}"] = _count(
                    per_seed, lambda r, sub=sub: sub(r)["attention_lowers_share"] == 1.0
                )
                claims[f"{state}_block{l + 1}_lowers_rc_var_on_average_eps{eps}"] = _count(
                    per_seed, lambda r, sub=sub: sub(r)["attention_change"] < 0
                )
    for l in range(L):
        claims[f"trained_delta_R_rises_block{l + 1}"] = _count(
            per_seed,
            lambda r, l=l: (
                r["trained"]["rates"][l]["out"]["delta_R"]
                > r["trained"]["rates"][l]["in"]["delta_R"]
            ),
        )
    # Delta R across blocks: Z_l is block l's output (under Pi_l) and block l+1's input (under
    # Pi_{l+1}); the jump at the boundary is the change of grouping alone, the tokens are the same
    dR = lambda r, l, io: r["trained"]["rates"][l][io]["delta_R"]  # noqa: E731
    spread["trained_delta_R_jump"] = [
        _spread([dR(r, l + 1, "in") - dR(r, l, "out") for r in per_seed]) for l in range(L - 1)
    ]
    for l in range(L - 1):
        claims[f"trained_delta_R_jumps_up_at_boundary{l + 1}"] = _count(
            per_seed, lambda r, l=l: dR(r, l + 1, "in") > dR(r, l, "out")
        )
    claims["trained_delta_R_rises_end_to_end"] = _count(
        per_seed, lambda r: dR(r, L - 1, "out") > dR(r, 0, "in")
    )
    if "controls" in per_seed[0]["trained"]:
        _summarize_controls(per_seed, L, out)
    return out


def _summarize_controls(per_seed, L, out) -> None:
    """Spreads of :func:`update_controls` per arm and block, and per block the seeds in which
    the trained update lowers R_c^var more, and lines up better with -grad R_c^var, than each
    control; and in how many seeds each arm lowers R_c^var for every image."""
    claims, spread = out["claims"], out["spread"]
    ctl = lambda r, e, l: r["trained"]["controls"][e][l]  # noqa: E731
    for eps in per_seed[0]["trained"]["controls"]:
        arms = [  # an arm in every block of every seed (a shallower control has fewer blocks)
            a for a in CONTROL_ARMS if all(a in ctl(r, eps, l) for r in per_seed for l in range(L))
        ]
        for arm in arms:
            for key in ("change_mean", "lowers_share", "cos_mean", "cos2_mean"):
                spread[f"control_{arm}_{key}_eps{eps}"] = [
                    _spread([ctl(r, eps, l)[arm][key] for r in per_seed]) for l in range(L)
                ]
            for l in range(L):
                claims[f"control_{arm}_block{l + 1}_lowers_rc_var_in_every_image_eps{eps}"] = (
                    _count(
                        per_seed, lambda r, l=l, a=arm, e=eps: ctl(r, e, l)[a]["lowers_share"] == 1
                    )
                )
        for arm in arms[1:]:
            for l in range(L):
                claims[f"trained_block{l + 1}_beats_{arm}_eps{eps}"] = _count(
                    per_seed,
                    lambda r, l=l, a=arm, e=eps: (
                        ctl(r, e, l)["trained"]["change_mean"] < ctl(r, e, l)[a]["change_mean"]
                        and ctl(r, e, l)["trained"]["cos_mean"] > ctl(r, e, l)[a]["cos_mean"]
                    ),
                )


class ClaimFailed(AssertionError):
    """A claim a chapter makes about a training run does not hold."""


def check_claim(holds, claim: str, detail: str = "") -> str:
    """Raise :class:`ClaimFailed` with a readable message unless ``holds``; else return a line
    that says the claim was checked (the line itself does not depend on the numbers)."""
    if not bool(holds):
        raise ClaimFailed(f"the claim '{claim}' does not hold" + (f": {detail}" if detail else ""))
    return f"checked: {claim}"
