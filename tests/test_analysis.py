"""The layer-wise measurements of chapter 10 (``whitebox.analysis``) against independent
computations: hand-built covariances, ``whitebox.mcr2`` on the paper's d x n layout, and the
closed form of the polar factor."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

import whitebox as wb
from whitebox import analysis
from whitebox.models import ToSTClassifier


def _soft_memberships(rng, B, n, K):
    logits = rng.normal(size=(B, n, K))
    P = np.exp(logits)
    return P / P.sum(axis=-1, keepdims=True)


# ---- bases -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["qr", "polar"])
@pytest.mark.parametrize("shape", [(6, 2), (16, 4), (5, 5)])
def test_orthonormalize_keeps_the_subspace_with_orthonormal_columns(kind, shape):
    W = np.random.default_rng(0).normal(size=shape) * np.array([3.0, 0.1] * shape[1])[: shape[1]]
    U = analysis.orthonormalize(W, kind)
    assert U.shape == shape
    np.testing.assert_allclose(U.T @ U, np.eye(shape[1]), atol=1e-12)
    # the same column space: the orthogonal projectors agree
    proj_W = W @ np.linalg.solve(W.T @ W, W.T)
    np.testing.assert_allclose(U @ U.T, proj_W, atol=1e-10)


def test_polar_factor_is_w_times_inverse_square_root_of_its_gram():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(8, 3))
    lam, V = np.linalg.eigh(W.T @ W)  # closed form W (W^T W)^{-1/2}, computed differently
    expected = W @ (V @ np.diag(lam**-0.5) @ V.T)
    np.testing.assert_allclose(analysis.orthonormalize(W, "polar"), expected, atol=1e-12)
    # and it is the closest orthonormal matrix: QR's factor (same subspace) is no closer
    Q = analysis.orthonormalize(W, "qr")
    assert np.linalg.norm(W - expected) <= np.linalg.norm(W - Q) + 1e-12


def test_orthonormalize_raw_is_the_learned_matrix_and_bad_input_is_refused():
    W = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(analysis.orthonormalize(W, "raw"), W)
    with pytest.raises(ValueError, match="kind"):
        analysis.orthonormalize(W, "svd")
    with pytest.raises(ValueError, match="W: expected a \\(D, p\\)"):
        analysis.orthonormalize(W.T, "qr")


# ---- covariances and rates -------------------------------------------------------------------


def test_offdiag_share_of_hand_built_covariances():
    C = np.array([[2.0, 1.0], [1.0, 2.0]])  # off-diagonal energy 1 + 1 of 4 + 4 + 1 + 1
    assert analysis.offdiag_share(C) == pytest.approx(0.2, abs=1e-15)
    assert analysis.offdiag_share(np.diag([3.0, 0.5, 1.0])) == 0.0
    assert analysis.offdiag_share(np.zeros((2, 2))) == 0.0
    rank_one = np.outer([1.0, 1.0], [1.0, 1.0])  # all four entries equal: half is off-diagonal
    assert analysis.offdiag_share(rank_one) == pytest.approx(0.5, abs=1e-15)
    stacked = analysis.offdiag_share(np.stack([C, np.eye(2)]))
    np.testing.assert_allclose(stacked, [0.2, 0.0], atol=1e-15)
    with pytest.raises(ValueError, match="C: expected"):
        analysis.offdiag_share(np.ones((2, 3)))


@pytest.mark.parametrize("B, n, d, K, p", [(2, 7, 6, 3, 2), (1, 16, 8, 2, 4)])
def test_projected_covariances_match_the_papers_layout(B, n, d, K, p):
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(B, n, d))  # rows are tokens, the layer layout
    P = _soft_memberships(rng, B, n, K)
    U = rng.normal(size=(K, d, p))
    C, n_k = analysis.projected_covariances(Z, P, U)
    assert C.shape == (B, K, p, p) and n_k.shape == (B, K)
    for b in range(B):
        Zp = Z[b].T  # (d, n): the paper's layout
        y = wb.token_statistics(Zp, P[b], U)  # (K, p)
        for k in range(K):
            nk = P[b, :, k].sum()
            M = Zp @ np.diag(P[b, :, k]) @ Zp.T / nk  # the group's second moment
            np.testing.assert_allclose(C[b, k], U[k].T @ M @ U[k], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.diag(C[b, k]), y[k], rtol=1e-12)
            assert n_k[b, k] == pytest.approx(nk, rel=1e-14)
    with pytest.raises(ValueError, match="Z, P, U"):
        analysis.projected_covariances(Z, P[:, :, :1], U)


def test_centred_covariances_are_numpys_weighted_covariances():
    rng = np.random.default_rng(7)
    B, n, d, K, p = 2, 10, 5, 3, 2
    Z = rng.normal(size=(B, n, d)) + 3.0  # a common mean, which centring removes
    P = _soft_memberships(rng, B, n, K)
    U = rng.normal(size=(K, d, p))
    C, _ = analysis.projected_covariances(Z, P, U, centred=True)
    C2, _ = analysis.projected_covariances(Z, P, U)
    for b in range(B):
        for k in range(K):
            W = Z[b] @ U[k]  # (n, p)
            want = np.cov(W.T, aweights=P[b, :, k], bias=True)
            np.testing.assert_allclose(C[b, k], want, rtol=1e-10, atol=1e-12)
            m = P[b, :, k] @ W / P[b, :, k].sum()
            np.testing.assert_allclose(C2[b, k] - np.outer(m, m), want, rtol=1e-9, atol=1e-10)


def test_rates_from_covariances_match_mcr2():
    rng = np.random.default_rng(3)
    B, n, d, K, p, eps = 3, 9, 8, 2, 3, 0.7
    Z = rng.normal(size=(B, n, d))
    P = _soft_memberships(rng, B, n, K)
    U = np.stack([np.linalg.qr(rng.normal(size=(d, p)))[0] for _ in range(K)])
    C, n_k = analysis.projected_covariances(Z, P, U)
    rc_var, rc_proj = analysis.rates_from_covariances(C, n_k, n, d, eps)
    for b in range(B):
        Zp = Z[b].T
        assert rc_var[b] == pytest.approx(
            wb.variational_compression_rate(Zp, P[b], U, eps), rel=1e-12
        )
        # R_c^proj as chapter 2 codes it: each group's weighted projection U_k^T Z diag(sqrt pi_k)
        # (p x n) with wb.coding_rate, whose scale p/(n eps'^2) must equal d/(n_k eps^2)
        want = 0.0
        for k in range(K):
            nk = P[b, :, k].sum()
            Zk = U[k].T @ Zp * np.sqrt(P[b, :, k])
            eps_k = eps * np.sqrt(p * nk / (d * n))
            want += nk / n * wb.coding_rate(Zk, eps_k)
        assert rc_proj[b] == pytest.approx(want, rel=1e-10)
        assert rc_var[b] >= rc_proj[b]  # the bound
    with pytest.raises(ValueError, match="eps"):
        analysis.rates_from_covariances(C, n_k, n, d, 0.0)


def test_bound_is_an_equality_when_the_basis_diagonalizes_the_projected_covariance():
    rng = np.random.default_rng(4)
    n, d, p, eps = 12, 6, 3, 0.5
    Z = rng.normal(size=(1, n, d))
    P = np.ones((1, n, 1))
    U0 = np.linalg.qr(rng.normal(size=(d, p)))[0][None]  # (1, d, p)
    C0, _ = analysis.projected_covariances(Z, P, U0)
    _, V = np.linalg.eigh(C0[0, 0])
    U = U0 @ V  # the same subspace, rotated onto the eigenvectors of its covariance
    C, n_k = analysis.projected_covariances(Z, P, U)
    assert analysis.offdiag_share(C)[0, 0] < 1e-20
    rc_var, rc_proj = analysis.rates_from_covariances(C, n_k, n, d, eps)
    assert rc_var[0] == pytest.approx(rc_proj[0], rel=1e-12)
    # R_c^proj does not depend on the basis inside the subspace; R_c^var and the share do
    rc_var0, rc_proj0 = analysis.rates_from_covariances(C0, n_k, n, d, eps)
    assert rc_proj0[0] == pytest.approx(rc_proj[0], rel=1e-12)
    assert rc_var0[0] > rc_var[0] and analysis.offdiag_share(C0)[0, 0] > 1e-3


# ---- the profile of a network ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    model = ToSTClassifier(dim=16, depth=2, num_heads=2, dtype="float64", seed=5)
    X = np.random.default_rng(6).uniform(0, 1, size=(3, 1, 8, 8))
    return model, X


def test_layer_profile_against_mcr2_per_image(tiny):
    model, X = tiny
    eps = 1.5
    prof = analysis.layer_profile(model, X, eps)
    assert len(prof) == 2
    _, inter = model.forward(X, return_intermediates=True)
    for l, blk in enumerate(model.blocks):
        assert set(prof[l]) == set(analysis.PROFILE_REPS)
        X0 = blk.ln_1.forward(inter["tokens"][l])
        A = blk.attn.forward(X0)
        P = analysis.memberships(blk.attn.last_pi)
        X2 = blk.ln_1.forward(inter["tokens"][l + 1])
        A_scaled = np.stack([a * np.sqrt(a.shape[1] * len(a) / (a**2).sum()) for a in A])
        X0_scaled = np.stack([x * np.sqrt(x.shape[1] * len(x) / (x**2).sum()) for x in X0])
        reps = (
            ("in", X0),
            ("in_scaled", X0_scaled),
            ("tssa_out", A),
            ("tssa_out_scaled", A_scaled),
            ("out", X2),
        )
        for rep, Z in reps:
            for kind in analysis.BASIS_KINDS:
                U = analysis.head_bases(blk, kind)
                want = np.mean(
                    [wb.variational_compression_rate(z.T, p, U, eps) for z, p in zip(Z, P)]
                )
                assert prof[l][rep][f"rc_var_{kind}"] == pytest.approx(want, rel=1e-10)
                assert prof[l][rep][f"rc_var_{kind}"] >= prof[l][rep][f"rc_proj_{kind}"]
                Cc, _ = analysis.projected_covariances(Z, P, U, centred=True)
                want = analysis.offdiag_share(Cc).mean()
                assert prof[l][rep][f"offdiag_centred_{kind}"] == pytest.approx(want, rel=1e-12)
            # one subspace, two orthonormal bases: the same R_c^proj
            assert prof[l][rep]["rc_proj_qr"] == pytest.approx(prof[l][rep]["rc_proj_polar"])
            assert prof[l][rep]["length"] == pytest.approx(np.linalg.norm(Z, axis=-1).mean())
        # the rescaled TSSA output has the LayerNorm scale: mean squared length D
        assert np.mean((A_scaled**2).sum(-1)) == pytest.approx(A.shape[-1])


def test_head_bases_default_is_qr_as_before(tiny):
    model, _ = tiny
    blk = model.blocks[0]
    W = blk.attn.params["qkv.weight"]
    p = W.shape[1] // blk.attn.num_heads
    np.testing.assert_array_equal(analysis.head_bases(blk)[1], np.linalg.qr(W[:, p : 2 * p])[0])


def test_summarize_profile_counts_seeds_and_spreads_per_seed_values():
    def report(curve):  # a fake profile: every quantity follows ``curve`` over three blocks
        blocks = [{rep: {key: v for key in analysis.PROFILE_KEYS} for rep in analysis.PROFILE_REPS}
                  for v in curve]  # fmt: skip
        split = {"train": blocks, "test": blocks}
        return {"eps": 4.0, "trained": split, "init": split}

    curves = {0: [3.0, 2.0, 1.0], 1: [3.0, 4.0, 1.0], 2: [1.0, 2.0, 3.0]}
    per_seed = [{"seed": s, "profile": report(c)} for s, c in curves.items()]
    out = analysis.summarize_profile(per_seed)
    assert out["blocks"] == 3 and out["eps"] == 4.0
    claims = out["claims"]
    assert claims["trained_test_in_offdiag_polar_falls"]["seeds"] == [0, 1]
    assert claims["trained_test_in_offdiag_polar_falls_every_block"]["seeds"] == [0]
    assert claims["init_train_out_length_falls"]["of"] == 3
    block2 = out["spread"]["trained_train_tssa_out_rc_var_raw"][1]
    values = [c[1] for c in curves.values()]
    assert block2["mean"] == pytest.approx(statistics.mean(values), abs=1e-4)
    assert block2["std"] == pytest.approx(statistics.stdev(values), abs=1e-4)
    assert (block2["min"], block2["max"]) == (min(values), max(values))


# ---- chapter 10's controls -------------------------------------------------------------------


def test_rescale_gives_mean_squared_length_d_with_one_factor_per_image():
    rng = np.random.default_rng(8)
    Z = rng.normal(size=(3, 5, 4)) * np.array([0.1, 2.0, 30.0])[:, None, None]
    S = analysis.rescale(Z)
    for z, s in zip(Z, S):
        assert np.mean(np.sum(s**2, axis=1)) == pytest.approx(4.0, rel=1e-12)
        ratio = s / z  # one factor for every entry of an image
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-12)


def test_same_norm_random_keeps_each_tokens_norm_and_draws_an_unrelated_direction():
    rng = np.random.default_rng(9)
    delta = rng.normal(size=(4, 50, 16)) * rng.uniform(0.1, 5.0, size=(4, 50, 1))
    r = analysis.same_norm_random(delta, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), np.linalg.norm(delta, axis=-1))
    cos = (r * delta).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(delta, axis=-1))
    # 200 cosines of independent directions in 16 dimensions: mean 0, std 1/4 each
    assert abs(cos.mean()) < 4 * 0.25 / np.sqrt(cos.size)
    assert cos.std() == pytest.approx(0.25, rel=0.2)


@pytest.fixture(scope="module")
def tiny_pair():
    tost = ToSTClassifier(dim=16, depth=2, num_heads=2, dtype="float64", seed=5)
    soft = ToSTClassifier(dim=16, depth=2, num_heads=2, dtype="float64", seed=6,
                          attention="softmax")  # fmt: skip
    for net in (tost, soft):  # layer scales of a trained size, so the updates are not tiny
        for blk in net.blocks:
            blk.params["gamma1"][...] = 0.3
    X = np.random.default_rng(6).uniform(0, 1, size=(4, 1, 8, 8))
    return tost, soft, X


def test_update_controls_against_independent_computations(tiny_pair):
    tost, soft, X = tiny_pair
    eps, h = 1.5, 1e-6
    _, inter = tost.forward(X, return_intermediates=True)
    _, sinter = soft.forward(X, return_intermediates=True)
    got = analysis.update_controls(tost, inter, eps, soft, sinter, seed=3)
    same = analysis.attention_substep(tost, inter, eps)
    rng = np.random.default_rng(3)
    for l, blk in enumerate(tost.blocks):
        assert set(got[l]) == set(analysis.CONTROL_ARMS)
        W = blk.attn.params["qkv.weight"]
        p = W.shape[1] // 2
        U = np.stack([np.linalg.qr(W[:, k * p : (k + 1) * p])[0] for k in range(2)])
        Z = inter["tokens"][l]
        X0 = blk.ln_1.forward(Z)
        delta = blk.params["gamma1"] * blk.attn.forward(X0)
        P = np.transpose(inter["pi"][l], (0, 2, 1))  # (B, n, K), rows sum to 1
        r = analysis.same_norm_random(delta, rng)  # the draws in the function's order
        sb = soft.blocks[l]
        S0 = sb.ln_1.forward(sinter["tokens"][l])
        S1 = sb.ln_1.forward(sinter["tokens"][l] + sb.params["gamma1"] * sb.attn.forward(S0))
        pairs = {
            "trained": (X0, blk.ln_1.forward(Z + delta)),
            "random": (X0, blk.ln_1.forward(Z + r)),
            "softmax": (S0, S1),  # the softmax net's own tokens, the ToST's U and Pi
        }
        for arm, (A0, A1) in pairs.items():
            rc = lambda Y, b, P=P, U=U: wb.variational_compression_rate(Y.T, P[b], U, eps)  # noqa: E731
            change = np.array([rc(A1[b], b) - rc(A0[b], b) for b in range(len(X))])
            cos = []
            for b in range(len(X)):
                step = A1[b] - A0[b]
                # the directional derivative by central differences, the gradient's norm from mcr2
                slope = (rc(A0[b] + h * step, b) - rc(A0[b] - h * step, b)) / (2 * h)
                g = wb.variational_compression_grad(A0[b].T, P[b], U, eps)
                cos.append(-slope / (np.linalg.norm(step) * np.linalg.norm(g)))
            cos = np.array(cos)
            want = {"change_mean": change.mean(), "lowers_share": np.mean(change < 0),
                    "cos_mean": cos.mean(), "cos2_mean": np.mean(cos**2)}  # fmt: skip
            for key, value in want.items():
                assert got[l][arm][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (l, arm, key)
        # the trained arm is attention_substep's measurement
        assert got[l]["trained"]["change_mean"] == pytest.approx(same[l]["attention_change"])
        assert got[l]["trained"]["cos2_mean"] == pytest.approx(same[l]["cos2_mean"])
    # without a control network: no softmax arm
    alone = analysis.update_controls(tost, inter, eps, seed=3)
    assert all(set(b) == {"trained", "random"} for b in alone)


def test_summarize_counts_the_delta_r_jumps_and_the_controls_from_the_per_seed_reports(tiny_pair):
    _, soft, X = tiny_pair
    y = np.arange(len(X))
    per_seed = []
    for seed in (0, 1, 2):
        net = ToSTClassifier(dim=16, depth=3, num_heads=2, dtype="float64", seed=seed)
        for blk in net.blocks:
            blk.params["gamma1"][...] = 0.5
        report = {"trained": analysis.network_report(net, X, y, controls=True, control=soft)}
        report["init"] = analysis.network_report(net, X, y)
        per_seed.append({"seed": seed, **report})
    out = analysis.summarize(per_seed)
    claims, spread = out["claims"], out["spread"]
    for l in range(2):  # boundaries 1|2 and 2|3: the same tokens Z_l under Pi_l and Pi_{l+1}
        jumps = [r["trained"]["rates"][l + 1]["in"]["delta_R"]
                 - r["trained"]["rates"][l]["out"]["delta_R"] for r in per_seed]  # fmt: skip
        assert claims[f"trained_delta_R_jumps_up_at_boundary{l + 1}"]["seeds"] == [
            s for s, j in zip((0, 1, 2), jumps) if j > 0
        ]
        assert spread["trained_delta_R_jump"][l]["mean"] == pytest.approx(
            statistics.mean(jumps), abs=1e-4
        )
    ends = [(r["trained"]["rates"][2]["out"]["delta_R"], r["trained"]["rates"][0]["in"]["delta_R"])
            for r in per_seed]  # fmt: skip
    assert claims["trained_delta_R_rises_end_to_end"]["seeds"] == [
        s for s, (b, a) in zip((0, 1, 2), ends) if b > a
    ]
    # the softmax network has two blocks: its arm exists where it has a block
    ctl = [r["trained"]["controls"]["4"] for r in per_seed]
    assert all("softmax" in c[1] and "softmax" not in c[2] for c in ctl)
    assert "control_softmax_cos_mean_eps4" not in spread  # not in every block
    beats = [
        s for s, c in zip((0, 1, 2), ctl)
        if c[0]["trained"]["change_mean"] < c[0]["random"]["change_mean"]
        and c[0]["trained"]["cos_mean"] > c[0]["random"]["cos_mean"]
    ]  # fmt: skip
    assert claims["trained_block1_beats_random_eps4"]["seeds"] == beats
    values = [c[0]["random"]["cos2_mean"] for c in ctl]
    assert spread["control_random_cos2_mean_eps4"][0]["max"] == pytest.approx(max(values), abs=1e-4)
