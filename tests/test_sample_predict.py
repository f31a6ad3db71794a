"""Using a trained model on its own: models.load on raw digits, python -m whitebox.predict and
python -m whitebox.sample, with the checkpoint alone (normalization and vocabulary inside)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whitebox import models, predict, sample
from whitebox import train as T

TINY = dict(depth=1, dim=16, heads=2, batch_size=32, warmup=2)
TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    cfg = T.make_config(task="digits", steps=200, eval_every=200, out=str(out), **TINY)
    return T.train(cfg, progress=False)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    (out / "poem.txt").write_text(TEXT, encoding="utf-8")
    cfg = T.make_config(task="text", steps=30, eval_every=30, block_size=16,
                        text_file=str(out / "poem.txt"), out=str(out), **TINY)  # fmt: skip
    return T.train(cfg, progress=False)


def raw_test_digits():
    """The test split straight from scikit-learn (an oracle independent of whitebox.data)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    _, Xte, _, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    return Xte.reshape(-1, 8, 8), yte


def test_loaded_model_on_raw_digits_gives_the_trained_accuracy(digits_run):
    model = models.load(digits_run["checkpoint"])
    Xte, yte = raw_test_digits()  # raw 0..16, float64, (N, 8, 8)
    acc = (np.asarray(model.forward(Xte)).argmax(axis=1) == yte).mean()
    assert round(float(acc), 4) == digits_run["test_accuracy"]
    assert digits_run["test_accuracy"] > 0.15  # learning (chance: 0.1)


def test_in_model_normalization_matches_the_old_standardized_pipeline(digits_run):
    """(x / 16 - mean) / std inside the model == the same network fed standardized images."""
    model = models.load(digits_run["checkpoint"])
    norm = model.config["input_norm"]
    Xte, _ = raw_test_digits()
    plain = models.build({**model.config, "input_norm": None})
    plain.load_state_dict(model.state_dict())
    x01 = (Xte / 16.0).astype(np.float32)
    std = (x01 - norm["mean"]) / norm["std"]
    np.testing.assert_array_equal(model.forward(Xte), plain.forward(std))
    # the stored statistics are those of the training split in [0, 1]
    Xtr = T.load_digits_split()[0] / np.float32(16)
    assert norm["scale"] == 16.0 and np.isclose(norm["mean"], Xtr.mean(dtype=np.float64), rtol=1e-5)
    assert np.isclose(norm["std"], Xtr.std(dtype=np.float64), rtol=1e-5)


def test_normalized_classifier_input_gradient_by_finite_differences():
    norm = {"scale": 16.0, "mean": 0.3, "std": 0.4}
    model = models.build(dict(model="classifier", dim=8, depth=1, num_heads=2,
                              dtype="float64", input_norm=norm))  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, (2, 1, 8, 8))
    g = rng.standard_normal((2, 10))
    model.forward(x)
    dx = model.backward(g)
    h = 1e-5
    i = (1, 0, 3, 4)
    xp, xm = x.copy(), x.copy()
    xp[i] += h
    xm[i] -= h
    fd = ((model.forward(xp) * g).sum() - (model.forward(xm) * g).sum()) / (2 * h)
    assert np.isclose(dx[i], fd, rtol=1e-6, atol=1e-10)


def test_predict_reports_accuracy_and_a_confusion_matrix(digits_run, capsys):
    assert predict.main([digits_run["checkpoint"], "--no-progress"]) == 0
    out = capsys.readouterr().out
    res = json.loads(out.strip().splitlines()[-1])
    cm = np.array(res["confusion_matrix"])
    _, yte = raw_test_digits()
    assert cm.shape == (10, 10) and cm.sum() == len(yte)
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(yte, minlength=10))
    assert res["test_accuracy"] == digits_run["test_accuracy"]
    assert np.isclose(np.trace(cm) / cm.sum(), res["test_accuracy"], atol=1e-4)
    assert "confusion matrix" in out


def test_predict_on_a_npy_of_raw_digits(digits_run, tmp_path, capsys):
    Xte, _ = raw_test_digits()
    np.save(tmp_path / "x.npy", Xte[:7].reshape(7, 64))  # the (N, 64) layout of load_digits
    assert predict.main([digits_run["checkpoint"], "--images", str(tmp_path / "x.npy")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = models.load(digits_run["checkpoint"])
    assert res["predictions"] == np.asarray(model.forward(Xte[:7])).argmax(axis=1).tolist()


@pytest.mark.parametrize(
    "array,message",
    [(np.full((3, 8, 8), 255.0), "0..16"), (np.zeros((3, 7, 7)), "expected shape"),
     (np.array(["a", "b"]), "real numeric"), (np.full((2, 8, 8), np.nan), "0..16")],
)  # fmt: skip
def test_predict_refuses_bad_images(digits_run, tmp_path, capsys, array, message):
    np.save(tmp_path / "bad.npy", array)
    code = predict.main([digits_run["checkpoint"], "--images", str(tmp_path / "bad.npy")])
    err = capsys.readouterr().err
    assert code == 2 and "--images" in err and message in err and "Traceback" not in err


def test_wrong_kind_of_checkpoint_exits_2(digits_run, text_run, tmp_path, capsys):
    assert sample.main([digits_run["checkpoint"], "--no-progress"]) == 2
    assert "not a language model" in capsys.readouterr().err
    assert predict.main([text_run["checkpoint"], "--no-progress"]) == 2
    assert "not a digits classifier" in capsys.readouterr().err
    cfg = T.make_config(task="subspaces", steps=2, eval_every=2, out=str(tmp_path), **TINY)
    sub = T.train(cfg, progress=False)["checkpoint"]
    assert predict.main([sub]) == 2 and sample.main([sub]) == 2
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert predict.main([str(tmp_path / "junk.npz")]) == 2
    assert "not a readable whitebox checkpoint" in capsys.readouterr().err


def test_text_checkpoint_carries_its_vocabulary(text_run):
    model = models.load(text_run["checkpoint"])
    assert "".join(model.codec.chars) == "".join(sorted(set(TEXT)))
    assert model.decode(model.encode("lazy fox")) == "lazy fox"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.encode("Z")


def greedy_oracle(model, prompt, n):
    """Greedy decoding written out: argmax of the last logits, one token at a time."""
    ids = list(model.encode(prompt))
    for _ in range(n):
        window = np.array(ids[-model.block_size :])[None, :]
        ids.append(int(np.argmax(np.asarray(model.forward(window))[0, -1])))
    return model.decode(ids)


def test_sample_temperature_zero_is_greedy_decoding(text_run, capsys):
    args = [text_run["checkpoint"], "--prompt", "the ", "--tokens", "40", "--no-progress"]
    assert sample.main([*args, "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out[:-1]  # print adds one newline
    model = models.load(text_run["checkpoint"])
    assert greedy == greedy_oracle(model, "the ", 40)
    assert sample.main([*args, "--top-k", "1", "--seed", "5"]) == 0  # top-1 sampling = greedy
    assert capsys.readouterr().out[:-1] == greedy


def test_sample_is_seeded_and_equals_one_generate_call(text_run, capsys):
    args = [text_run["checkpoint"], "--prompt", "fox", "--tokens", "30", "--no-progress"]
    outs = []
    for seed in ("3", "3", "4"):
        assert sample.main([*args, "--seed", seed, "--temperature", "1.0", "--top-k", "5"]) == 0
        outs.append(capsys.readouterr().out[:-1])
    assert outs[0] == outs[1] != outs[2]
    model = models.load(text_run["checkpoint"])
    ids = model.generate(model.encode("fox")[None, :], 30, temperature=1.0, top_k=5, seed=3)
    assert outs[0] == model.decode(ids[0])
    assert set(outs[2]) <= set(TEXT)


@pytest.mark.parametrize(
    "flags,message",
    [(["--prompt", "Z!"], "--prompt"), (["--tokens", "-1"], "--tokens"),
     (["--temperature", "-1"], "--temperature"), (["--temperature", "nan"], "--temperature"),
     (["--top-k", "0"], "--top-k")],
)  # fmt: skip
def test_sample_refuses_bad_flags(text_run, capsys, flags, message):
    try:
        code = sample.main([text_run["checkpoint"], *flags])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_predict_takes_a_tost_cab_checkpoint_too(tmp_path, capsys):
    cfg = T.make_config(task="digits", model="tost-cab", steps=4, eval_every=4, depth=1, dim=16,
                        heads=2, out=str(tmp_path / "cab"))  # fmt: skip
    run = T.train(cfg, progress=False)
    assert predict.main([run["checkpoint"], "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["test_accuracy"] == run["test_accuracy"]  # the model applies its own normalization
