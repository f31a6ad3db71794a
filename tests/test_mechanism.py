"""whitebox.mechanism against independent computations: a least-squares read-out of the weights
from the layer's outputs, a re-implemented softmax attention, hand-worked n-gram counts, a
dictionary n-gram model, and the synthetic task's conditional entropy counted from a sample."""

import math
from collections import Counter

import numpy as np
import pytest
from scipy.special import rel_entr
from scipy.stats import entropy

from whitebox import mechanism as mech
from whitebox import nn
from whitebox.models import ToSTLanguageModel


def small_model(attention, seed=0, D=32, H=2, T=12, V=7, layers=2):
    model = ToSTLanguageModel(V, T, n_layer=layers, n_head=H, n_embd=D, attention=attention,
                              dtype="float64", seed=seed)  # fmt: skip
    rng = np.random.default_rng(seed + 100)
    for name, arr in model.parameters().items():  # scramble: memberships far from uniform
        if name.endswith(("weight", "temp", "denom_bias")):
            arr[...] = rng.standard_normal(arr.shape) * (0.5 if "denom" not in name else 1.0)
    model.eval()
    return model


# ---- the synthetic task ----------------------------------------------------------------------


def test_lag_task_floor_matches_a_direct_entropy():
    V, p = 16, 0.9
    probs = np.full(V, (1 - p) / V)
    probs[0] += p
    assert mech.lag_task_floor(V, p) == pytest.approx(entropy(probs), rel=1e-12)
    assert mech.lag_task_floor(V, p) == pytest.approx(0.5650, abs=1e-4)
    assert mech.lag_task_floor(V, 0.0) == pytest.approx(math.log(V))
    assert mech.lag_task_floor(V, 1.0) == pytest.approx(0.0, abs=1e-15)


def test_lag_task_empirical_conditional_entropy_and_rule():
    text = mech.lag_task(200_000, seed=3)
    assert text == mech.lag_task(200_000, seed=3)  # seeded
    assert text != mech.lag_task(200_000, seed=4)
    assert set(text) == set(mech.LAG_ALPHABET)
    x = np.array([mech.LAG_ALPHABET.index(c) for c in text])
    sigma = mech.lag_task_permutation(16, 0)
    assert sorted(sigma) == list(range(16))
    # p(next = sigma(two back)) = 0.9 + 0.1 / 16
    hit = (x[2:] == sigma[x[:-2]]).mean()
    assert hit == pytest.approx(0.9 + 0.1 / 16, abs=0.003)
    # H(x_{t+1} | x_{t-1}) counted from the sample against the closed form
    pairs = Counter(zip(x[:-2].tolist(), x[2:].tolist()))
    first = Counter(x[:-2].tolist())
    n = len(x) - 2
    h = -sum(c / n * math.log(c / first[a]) for (a, _), c in pairs.items())
    assert h == pytest.approx(mech.lag_task_floor(), abs=0.01)
    # the previous symbol alone says nothing: H(x_{t+1} | x_t) is ln 16
    pairs1 = Counter(zip(x[:-1].tolist(), x[1:].tolist()))
    first1 = Counter(x[:-1].tolist())
    h1 = -sum(c / (len(x) - 1) * math.log(c / first1[a]) for (a, _), c in pairs1.items())
    assert h1 == pytest.approx(math.log(16), abs=0.01)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"length": 0}, "length"), ({"length": 10, "num_symbols": 17}, "num_symbols"),
     ({"length": 10, "p_copy": 1.5}, "p_copy"), ({"length": 10, "lag": 0}, "lag"),
     ({"length": 10, "seed": -1}, "seed"), ({"length": 2.5}, "length")],
)  # fmt: skip
def test_lag_task_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mech.lag_task(**kwargs)


# ---- n-grams -----------------------------------------------------------------------------------


def test_ngram_loss_hand_worked():
    train, test = np.array([0, 1, 0, 1]), np.array([0, 1, 1])
    # bigram, add-one: c(0,1) = 2, c(0) = 2 -> 3/4; c(1,1) = 0, c(1 as context) = 1 -> 1/3
    assert mech.ngram_loss(train, test, 2, 1.0, 2) == pytest.approx(
        -(math.log(3 / 4) + math.log(1 / 3)) / 2
    )
    # unigram, add-0.5: (2 + 0.5) / (4 + 1) for both symbols
    assert mech.ngram_loss(train, test, 1, 0.5, 2) == pytest.approx(-math.log(0.5))
    # trigram, add-k with V = 3 (a symbol never seen): contexts (0,1) -> 0 once, (1,0) -> 1 once
    k = 0.1
    want = -math.log((0 + k) / (1 + 3 * k))  # test window (0, 1, 1): c(0,1,1) = 0, c(0,1) = 1
    assert mech.ngram_loss(train, test, 3, k, 3) == pytest.approx(want)


def brute_ngram(train, test, n, k, V):
    full, ctx = Counter(), Counter()
    for i in range(len(train) - n + 1):
        full[tuple(train[i : i + n])] += 1
        ctx[tuple(train[i : i + n - 1])] += 1
    losses = [
        -math.log((full[tuple(test[i : i + n])] + k) / (ctx[tuple(test[i : i + n - 1])] + k * V))
        for i in range(len(test) - n + 1)
    ]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_loss_against_a_dictionary_model(n):
    rng = np.random.default_rng(n)
    train, test = rng.integers(0, 5, 3000), rng.integers(0, 5, 400)
    got = mech.ngram_loss(train, test, n, 0.3, 6)
    assert got == pytest.approx(brute_ngram(train.tolist(), test.tolist(), n, 0.3, 6), rel=1e-12)


def test_choose_add_k_inside_and_edge():
    ids = np.array([mech.LAG_ALPHABET.index(c) for c in mech.lag_task(60_000, seed=1)])
    pick = mech.choose_add_k(ids[:40_000], ids[40_000:], 3, 16, (0.001, 0.01, 0.1, 1.0, 10.0))
    assert pick["k"] in (0.01, 0.1, 1.0)
    assert pick["val_losses"][pick["grid"].index(pick["k"])] == min(pick["val_losses"])
    with pytest.raises(ValueError, match="grid"):  # the trigram prefers k far above 1e-3
        mech.choose_add_k(ids[:40_000], ids[40_000:], 3, 16, (1e-6, 1e-5, 1e-4))
    with pytest.raises(ValueError, match="grid"):
        mech.choose_add_k(ids[:100], ids[100:200], 2, 16, (0.1, 0.01, 1.0))


@pytest.mark.parametrize(
    "args, name",
    [((np.array([0.5]), np.array([0]), 1, 1.0, 2), "train"),
     ((np.array([0, 1]), np.array([[0]]), 1, 1.0, 2), "test"),
     ((np.array([0, 1]), np.array([0, 1]), 2, 0.0, 2), "k"),
     ((np.array([0, 1]), np.array([0, 3]), 2, 1.0, 2), "vocab_size"),
     ((np.array([0, 1]), np.array([0, 1]), 3, 1.0, 2), "n")],
)  # fmt: skip
def test_ngram_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        mech.ngram_loss(*args)


# ---- measurements on models --------------------------------------------------------------------


def test_prefix_weights_tssa_read_back_from_the_outputs():
    """The weight of token u in y_t, recovered by least squares from the layer's outputs:
    with W_out = I and b_out = 0, y_t = -Pi_t w_t / v_t - 1 and y_t = sum_u lambda_tu w_u^2."""
    model = small_model("tssa")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 7, size=(3, 12))
    got = mech.prefix_weights(model, x, lag=1)
    got2 = mech.prefix_weights(model, x, lag=3)
    assert got.shape == (2, 12) and np.isnan(got[:, 0]).all() and np.isnan(got2[:, :3]).all()
    # block 1's attention input, then the layer again with an identity output projection
    z = model.wte.params["weight"][x] + model.wpe.params["weight"][np.arange(12)]
    h = model.blocks[0].ln_1.forward(z)
    params = dict(model.blocks[0].attn.params)
    params["proj.weight"], params["proj.bias"] = np.eye(32), np.zeros(32)
    out, cache = nn.causal_tssa_forward(h, params)
    H, p = 2, 16
    w = (h @ params["qkv.weight"] + params["qkv.bias"]).reshape(3, 12, H, p).transpose(0, 2, 1, 3)
    v = out.reshape(3, 12, H, p).transpose(0, 2, 1, 3)
    y = -cache["pi"][..., None] * w / v - 1  # (B, H, T, p)
    lam = np.zeros((3, H, 12, 12))
    for b in range(3):
        for hh in range(H):
            for t in range(12):
                A = (w[b, hh, : t + 1] ** 2).T  # (p, t + 1): p >= t + 1 equations
                lam[b, hh, t, : t + 1] = np.linalg.lstsq(A, y[b, hh, t], rcond=None)[0]
    t = np.arange(1, 12)
    np.testing.assert_allclose(got[0, 1:], lam[:, :, t, t - 1].mean(axis=(0, 1)), rtol=1e-6)
    t3 = np.arange(3, 12)
    np.testing.assert_allclose(got2[0, 3:], lam[:, :, t3, t3 - 3].mean(axis=(0, 1)), rtol=1e-6)
    # far from uniform: the scrambled model's weights are not all 1 / (t + 1)
    assert np.abs(got[0, 1:] * (t + 1) - 1).max() > 0.05


def test_prefix_weights_one_head_is_uniform():
    model = small_model("tssa", H=1)
    got = mech.prefix_weights(model, np.zeros((2, 12), dtype=np.int64) + 3, lag=2)
    t = np.arange(2, 12)
    np.testing.assert_allclose(got[:, 2:], np.broadcast_to(1 / (t + 1 + 1e-8), (2, 10)), rtol=1e-12)


def test_prefix_weights_softmax_against_a_reimplementation():
    model = small_model("softmax", H=4)
    x = np.random.default_rng(1).integers(0, 7, size=(2, 12))
    got = mech.prefix_weights(model, x, lag=2)
    z = model.wte.params["weight"][x] + model.wpe.params["weight"][np.arange(12)]
    h = model.blocks[0].ln_1.forward(z)
    prm = model.blocks[0].attn.params
    qkv = h @ prm["qkv.weight"] + prm["qkv.bias"]
    q, k = qkv[..., :32].reshape(2, 12, 4, 8), qkv[..., 32:64].reshape(2, 12, 4, 8)
    s = np.einsum("bthd,buhd->bhtu", q, k) / math.sqrt(8)
    s = np.where(np.tril(np.ones((12, 12), bool)), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    t = np.arange(2, 12)
    np.testing.assert_allclose(got[0, 2:], a[:, :, t, t - 2].mean(axis=(0, 1)), rtol=1e-10)


def test_loss_by_position_and_buckets():
    model = small_model("tssa")
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 7, (4, 12)), rng.integers(0, 7, (4, 12))
    got = mech.loss_by_position(model, x, y)
    logits = model.forward(x)
    want = [float(nn.cross_entropy(logits[:, t], y[:, t])[0]) for t in range(12)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert mech.bucket_means([1, 2, 3, 4, 5], [(0, 1), (2, 4)]) == [1.5, 4.0]
    with pytest.raises(ValueError, match="buckets"):
        mech.bucket_means([1, 2], [(1, 2)])


@pytest.mark.parametrize("attention", ["tssa", "softmax"])
def test_lag_sensitivity_against_scipy(attention):
    model = small_model(attention)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 7, (5, 12))
    rep = mech.random_replacements(x[:, 6], np.arange(7), rng)
    assert (rep != x[:, 6]).all()
    got = mech.lag_sensitivity(model, x, 9, 3, rep)
    changed = x.copy()
    changed[:, 6] = rep

    def probs(a):
        z = model.forward(a)[:, 9]
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    want = rel_entr(probs(x), probs(changed)).sum(-1).mean()
    assert got == pytest.approx(want, rel=1e-9) and got > 0
    with pytest.raises(ValueError, match="replacements"):
        mech.lag_sensitivity(model, x, 9, 3, x[:, 6])
    with pytest.raises(ValueError, match="t"):
        mech.lag_sensitivity(model, x, 2, 3, rep)


def test_random_replacements_follow_the_pool():
    rng = np.random.default_rng(4)
    pool = np.array([2, 2, 2, 5])
    rep = mech.random_replacements(np.array([2] * 50 + [5] * 50), pool, rng)
    assert (rep[:50] == 5).all() and (rep[50:] == 2).all()
    with pytest.raises(ValueError, match="pool"):
        mech.random_replacements(np.array([1]), np.array([3, 3]), rng)


def test_windows():
    x, y = mech.windows(np.arange(100), 8, 5)
    assert x.shape == y.shape == (5, 8)
    assert (y == x + 1).all() and x[0, 0] == 0 and y[-1, -1] == 99
    with pytest.raises(ValueError, match="data"):
        mech.windows(np.arange(5), 8, 1)


def test_ngram_references_split_and_choice():
    ids = np.array([mech.LAG_ALPHABET.index(c) for c in mech.lag_task(200_000, seed=2)])
    ref = mech.ngram_references(ids, orders=(3, 4))
    cut, split = 160_000, 180_000
    for n in (3, 4):
        r = ref[f"{n}-gram"]
        assert r["grid"][0] < r["k"] < r["grid"][-1]
        test = ids[split + 4 - n :]
        assert r["add_k"] == round(mech.ngram_loss(ids[:split], test, n, r["k"], 16), 4)
        assert r["add_one"] == round(brute_ngram(ids[:split].tolist(), test.tolist(), n, 1, 16), 4)
        val = ids[cut + 4 - n : split]
        assert r["val_losses"][r["grid"].index(r["k"])] == round(
            mech.ngram_loss(ids[:cut], val, n, r["k"], 16), 4
        )
    # the trigram sees the symbol two back: it sits near the floor, the 4-gram above it
    assert ref["3-gram"]["add_k"] == pytest.approx(mech.lag_task_floor(), abs=0.02)
    assert ref["4-gram"]["add_k"] > ref["3-gram"]["add_k"]


def test_script_summaries(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "mechanism.py"
    spec = importlib.util.spec_from_file_location("mechanism_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    s = script.summarize(
        [{"a": 1.0, "b": {"c": 2.0}, "n": "x"}, {"a": 3.0, "b": {"c": 4.0}, "n": "y"}]
    )
    assert s["a"]["mean"] == 2.0 and s["a"]["std"] == pytest.approx(math.sqrt(2), abs=1e-4)
    assert s["b"]["c"]["min"] == 2.0 and s["b"]["c"]["max"] == 4.0 and "n" not in s
    # a run folder is kept only when finished with the same flags
    run = tmp_path / "run"
    run.mkdir()
    assert not script._matches(run, {"lr": 0.01}, None)
    (run / "config.json").write_text('{"lr": 0.01, "seed": 0}')
    assert not script._matches(run, {"lr": 0.01}, None)  # not finished
    (run / "result.json").write_text("{}")
    (run / "model.npz").write_bytes(b"")
    assert script._matches(run, {"lr": 0.01, "seed": 0}, None)
    assert not script._matches(run, {"lr": 0.02, "seed": 0}, None)
    with pytest.raises(SystemExit) as e:
        script.main(["--seeds", "x"])
    assert e.value.code == 2


def test_synthetic_lr_search_extends_edges_for_both_models_and_picks_inside(tmp_path, monkeypatch):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "mechanism.py"
    spec = importlib.util.spec_from_file_location("mechanism_script2", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # a made-up validation loss with its minimum at lr 0.001 for ToST (below the first grid) and
    # at 0.01 for GPT (inside); a diverged run reports NaN and must count as the worst
    best = {"text-tssa": 0.001, "text-softmax": 0.01}
    calls = []

    def fake_train(name, seed, flags, extra=(), tag=None, reuse=True):
        calls.append((name, flags["lr"], seed))
        assert (
            flags["holdout"] is True
            and flags["text_file"] == "lag.txt"
            and tag.startswith("lag2tune")
        )
        out = tmp_path / f"{tag}-seed{seed}"
        out.mkdir(exist_ok=True)
        loss = abs(math.log(flags["lr"] / best[name])) + 0.01 * seed
        if name == "text-softmax" and flags["lr"] > 0.05:
            loss = float("nan")
        (out / "result.json").write_text(json.dumps({"val_loss_nats_per_char": loss}))
        return out

    monkeypatch.setattr(script, "train", fake_train)
    settings = {n: {"lr": 0.08, "weight_decay": 0.05} for n in script.MODELS}
    out = script.tune_synthetic(settings, "lag.txt", ("--steps", "3"), reuse=False)
    for n in script.MODELS:
        lrs = out[n]["grid"]
        assert lrs == sorted(lrs) and len(lrs) >= 4 and out[n]["inside"]
        assert lrs[0] < out[n]["chosen_lr"] < lrs[-1]
        assert {(r["lr"], r["seed"]) for r in out[n]["runs"]} == {
            (lr, s) for lr in lrs for s in script.SYNTHETIC_TUNE_SEEDS
        }
    assert out["text-tssa"]["chosen_lr"] == pytest.approx(0.001)
    assert out["text-softmax"]["chosen_lr"] == pytest.approx(0.01)
    assert out["text-tssa"]["grid"] == out["text-softmax"]["grid"]  # the same budget for both
    assert len(calls) == len(set(calls))  # no run twice
