"""The training command: outputs, determinism, exact resume, atomic checkpoints, clear errors."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from whitebox import checkpoint, models
from whitebox import train as T
from whitebox.backend import gpu_available

TINY = dict(depth=1, dim=16, heads=2, batch_size=32, warmup=2)


def run_cli(args, capsys):
    code = T.main([*args, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_digits_run_writes_result_checkpoint_metrics_and_plot(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run_cli(
        ["--steps", "6", "--eval-every", "3", "--depth", "1", "--dim", "16", "--heads", "2",
         "--out", str(out_dir)], capsys,
    )  # fmt: skip
    assert code == 0, err
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])  # the last line is the JSON result
    assert result["task"] == "digits" and result["attention"] == "tssa"
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["params"] == models.load(out_dir / "model.npz").num_parameters()
    assert result["checkpoint"] == str(out_dir / "model.npz")
    assert isinstance(result["seconds"], float)
    assert len(lines) == 3  # two short evaluation lines, then the JSON
    metrics = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3, 6]
    assert (out_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_same_metrics_to_the_last_digit(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = T.make_config(task="digits", steps=8, eval_every=4, out=str(tmp_path / name), **TINY)
        T.train(cfg, progress=False)
        runs.append((tmp_path / name / "metrics.jsonl").read_text())
    assert runs[0] == runs[1]
    other = T.make_config(
        task="digits", steps=8, eval_every=4, seed=1, out=str(tmp_path / "c"), **TINY
    )
    T.train(other, progress=False)
    assert (tmp_path / "c" / "metrics.jsonl").read_text() != runs[0]


@pytest.mark.parametrize("task", ["digits", "text", "subspaces"])
def test_resume_continues_to_exactly_the_uninterrupted_result(tmp_path, task):
    kw = dict(task=task, steps=9, eval_every=3, **TINY)
    if task == "text":
        kw.update(block_size=16)
    full = T.train(T.make_config(out=str(tmp_path / "full"), **kw), progress=False)
    part = T.train(T.make_config(out=str(tmp_path / "part"), **kw), progress=False, stop_after=1)
    assert part["interrupted_at_step"] == 3
    resumed = T.train(
        T.make_config(out=str(tmp_path / "part"), **kw), resume=part["checkpoint"], progress=False
    )
    for key in set(full) - {"seconds", "checkpoint"}:
        assert resumed[key] == full[key], key
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (
        tmp_path / "part" / "metrics.jsonl"
    ).read_text()
    a = checkpoint.load_checkpoint(tmp_path / "full" / "model.npz")
    b = checkpoint.load_checkpoint(tmp_path / "part" / "model.npz")
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k])
    for k in a["optim"]:
        np.testing.assert_array_equal(a["optim"][k], b["optim"][k])


def test_softmax_baseline_trains_with_the_same_code(tmp_path):
    cfg = T.make_config(
        task="digits", attention="softmax", steps=4, eval_every=4, out=str(tmp_path), **TINY
    )
    result = T.train(cfg, progress=False)
    assert result["attention"] == "softmax"
    assert models.load(tmp_path / "model.npz").config["attention"] == "softmax"


def test_text_task_reports_nats_per_char_and_a_sample(tmp_path, capsys):
    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    code, out, err = run_cli(
        ["--task", "text", "--text-file", str(text), "--steps", "4", "--block-size", "16",
         "--depth", "1", "--dim", "16", "--heads", "2", "--out", str(tmp_path / "o")], capsys,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["val_loss_nats_per_char"] > 0
    assert len(result["sample"]) == 200
    assert set(result["sample"]) <= set(text.read_text())
    assert "sample:" in out


def test_default_text_is_cpythons_documentation():
    text = T.load_text()
    assert len(text) > 400_000
    assert "assert" in text and "lambda" in text


def test_subspaces_task_reports_membership_recovery_per_layer(tmp_path):
    cfg = T.make_config(task="subspaces", steps=4, eval_every=4, depth=2, out=str(tmp_path))
    result = T.train(cfg, progress=False)
    rec = result["membership_recovery"]
    assert [r["layer"] for r in rec] == [0, 1]
    assert all(-1 <= r["ari"] <= 1 and 0 <= r["nmi"] <= 1 for r in rec)


@pytest.mark.parametrize(
    "content,message",
    [(None, "does not exist"), (b"", "is empty"), (b"\x00\x01\x02abc", "binary"),
     (b"\xff\xfe\xfa text", "not UTF-8")],
)  # fmt: skip
def test_bad_text_files_give_a_clear_error(tmp_path, capsys, content, message):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run_cli(["--task", "text", "--text-file", str(path)], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_truncated_and_foreign_checkpoints_give_a_clear_error(tmp_path, capsys):
    cfg = T.make_config(task="digits", steps=2, eval_every=2, out=str(tmp_path / "r"), **TINY)
    good = T.train(cfg, progress=False)["checkpoint"]
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    for bad, message in ((truncated, "truncated or foreign"), (foreign, "not a whitebox checkpoint"),
                         (tmp_path / "missing.npz", "does not exist")):  # fmt: skip
        code, out, err = run_cli(["--resume", str(bad)], capsys)
        assert code == 2 and message in err and "Traceback" not in err
        with pytest.raises(ValueError, match=message):
            models.load(bad)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    cfg = T.make_config(task="digits", steps=2, eval_every=2, out=str(tmp_path), **TINY)
    path = T.train(cfg, progress=False)["checkpoint"]
    before = open(path, "rb").read()
    model = models.load(path)

    def crash(f, **arrays):
        f.write(b"half a file")
        raise KeyboardInterrupt  # the run dies in the middle of writing

    monkeypatch.setattr(checkpoint.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(path, model)
    assert open(path, "rb").read() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU")
def test_gpu_without_cupy_says_how_to_install(capsys):
    code, out, err = run_cli(["--device", "gpu", "--steps", "1"], capsys)
    assert code == 2
    assert 'pip install -e ".[gpu]"' in err and "Traceback" not in err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        T.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--task", "--attention", "--depth", "--dim", "--heads", "--epochs", "--steps",
                 "--batch-size", "--lr", "--seed", "--device", "--out", "--resume", "--text-file"):  # fmt: skip
        assert flag in text


def test_bad_configuration_is_rejected(capsys):
    code, out, err = run_cli(["--dim", "30", "--heads", "4", "--steps", "1"], capsys)
    assert code == 2 and "divisible" in err


def test_random_shift_moves_images_by_at_most_one_pixel():
    rng = np.random.default_rng(0)
    x = np.zeros((50, 1, 8, 8), dtype=np.float32)
    x[:, :, 3, 4] = 1.0
    shifted = T.random_shift(x, rng)
    assert shifted.shape == x.shape and shifted.dtype == x.dtype
    rows, cols = np.nonzero(shifted[:, 0].sum(axis=0))
    assert set(rows) <= {2, 3, 4} and set(cols) <= {3, 4, 5}
    np.testing.assert_array_equal(shifted.reshape(50, -1).sum(axis=1), 1.0)


@pytest.mark.slow
def test_default_digits_model_reaches_097(tmp_path):
    """The README's main command: the tuned default ToST reaches >= 0.97 test accuracy."""
    result = T.train(T.make_config(task="digits", out=str(tmp_path)), progress=False)
    assert result["test_accuracy"] >= 0.97


def test_help_shows_each_tasks_own_defaults(capsys):
    with pytest.raises(SystemExit):
        T.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "task default" not in text
    d, t, s = T.DEFAULTS["digits"], T.DEFAULTS["text"], T.DEFAULTS["subspaces"]
    assert f"digits {d['epochs']}" in text  # --epochs
    assert f"text {t['steps']}, subspaces {s['steps']}" in text  # --steps
    assert f"digits {d['lr']}, text {t['lr']}, subspaces {s['lr']}" in text
    assert f"digits {d['dim']}, text {t['dim']}, subspaces {s['dim']}" in text


def test_run_prints_its_configuration_and_stores_it_to_repeat_the_run(tmp_path, capsys):
    first = tmp_path / "first"
    args = ["--steps", "4", "--eval-every", "2", "--depth", "1", "--dim", "16", "--heads", "2",
            "--seed", "3"]  # fmt: skip
    assert T.main([*args, "--out", str(first), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    stored = json.loads((first / "config.json").read_text())
    assert stored == asdict(T.make_config(task="digits", steps=4, eval_every=2, depth=1,
                                          dim=16, heads=2, seed=3, out=str(first)))  # fmt: skip
    for key, value in stored.items():  # every setting, on stderr, before the first evaluation
        assert f"{key} = {value!r}" in err
    assert err.index("config:") < err.index("lr = ")
    again = tmp_path / "again"
    assert (
        T.main(["--config", str(first / "config.json"), "--out", str(again), "--no-progress"]) == 0
    )
    capsys.readouterr()
    assert (again / "metrics.jsonl").read_text() == (first / "metrics.jsonl").read_text()


def test_resume_from_another_folder_writes_beside_the_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    cfg = T.make_config(task="digits", steps=4, eval_every=2, out=str(run), **TINY)
    ck = T.train(cfg, progress=False, stop_after=1)["checkpoint"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(["--resume", ck], capsys)
    assert code == 0, err
    assert list(elsewhere.iterdir()) == []  # no runs/ in the current folder
    assert json.loads(out.splitlines()[-1])["checkpoint"] == ck


def test_curves_show_the_learning_rate_schedule(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self) or real(self, *a, **k))  # fmt: skip
    history = [{"step": s, "lr": 0.01 * s, "train_loss": 1.0, "test_loss": 1.0,
                "test_accuracy": 0.5} for s in (1, 2, 3)]  # fmt: skip
    T.plot_curves(history, tmp_path / "curves.png")
    labels = [ax.get_ylabel() for ax in figures[0].axes]
    assert "learning rate" in labels and "test accuracy" in labels
    lr_ax = figures[0].axes[labels.index("learning rate")]
    np.testing.assert_allclose(lr_ax.lines[0].get_ydata(), [0.01, 0.02, 0.03])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_holdout_carves_validation_out_of_the_training_data_only():
    from whitebox.data import HOLDOUT_SHARE, load_digits_split

    Xtr, ytr, Xte, yte = load_digits_split()
    Htr, hytr, Hval, hyval = load_digits_split(holdout=True)
    as_set = lambda X: {x.tobytes() for x in X.reshape(len(X), -1)}  # noqa: E731
    assert as_set(Hval) | as_set(Htr) == as_set(Xtr)  # both parts come from the training set
    assert not as_set(Hval) & as_set(Xte) and not as_set(Htr) & as_set(Xte)  # test untouched
    assert len(Hval) == -(-HOLDOUT_SHARE * len(Xtr) // 1)  # ceil, as scikit-learn rounds
    assert np.bincount(hyval).min() >= 20  # stratified: every class in the validation split


def test_holdout_run_reports_validation_metrics(tmp_path):
    cfg = T.make_config(task="digits", steps=3, holdout=True, out=str(tmp_path / "h"))
    result = T.train(cfg, progress=False)
    assert result["holdout"] is True and "val_accuracy" in result and "test_accuracy" not in result
    text = T.make_config(task="text", steps=2, eval_every=2, holdout=True, out=str(tmp_path / "t"))
    assert T.train(text, progress=False)["holdout"] is True
