"""Trust nothing you are handed (issue 19): a loaded model is in evaluation mode, checkpoint
configs and ``--config`` files are checked as strictly as weights, a trained model is never
silently replaced, sampling and prediction are numerically safe, and every exception a user
can provoke (Ctrl-C and a closed pipe included) ends in one clear line."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from whitebox import models, predict, sample
from whitebox import train as T
from whitebox.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

TINY = dict(depth=1, dim=16, heads=2, batch_size=32, warmup=2)
ROOT = Path(__file__).resolve().parents[1]
TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40


def run_train(args, capsys):
    try:
        code = T.main([*args, "--no-progress"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cmd(main, args, capsys):
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def members_of(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def rewrite(src, dst, meta_change=None, arrays=None):
    """A copy of the checkpoint ``src`` with its metadata changed and some arrays replaced."""
    m = members_of(src)
    if meta_change is not None:
        meta = json.loads(str(np.load(io.BytesIO(m["meta.npy"]))))
        meta = meta_change(meta) or meta
        m["meta.npy"] = npy_bytes(np.array(json.dumps(meta)))
    for name, a in (arrays or {}).items():
        m[name + ".npy"] = npy_bytes(a)
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in m.items():
            zf.writestr(name, data)
    return dst


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


@pytest.fixture(scope="module")
def cab_run(tmp_path_factory):
    """A ToST-CAB trained for a few steps: its BatchNorm running statistics are still far from
    any batch's statistics, so batch-statistics BatchNorm would classify differently."""
    out = tmp_path_factory.mktemp("cab")
    cfg = T.make_config(task="digits", model="tost-cab", steps=120, eval_every=120, depth=1,
                        dim=32, heads=4, warmup=10, lr=4e-3, out=str(out))  # fmt: skip
    return T.train(cfg, progress=False)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    cfg = T.make_config(task="digits", steps=40, eval_every=20, out=str(out), **TINY)
    return T.train(cfg, progress=False)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    (out / "poem.txt").write_text(TEXT, encoding="utf-8")
    cfg = T.make_config(task="text", steps=30, eval_every=30, block_size=16,
                        text_file=str(out / "poem.txt"), out=str(out), **TINY)  # fmt: skip
    return T.train(cfg, progress=False)


# --------------------------------------------------------------------------- 2. evaluation mode


def test_an_images_logits_do_not_depend_on_the_rest_of_its_batch(cab_run):
    model = models.load(cab_run["checkpoint"])
    Xte = T.load_digits_split()[2]
    alone = np.asarray(model.forward(Xte[:1]))
    with_tests = np.asarray(model.forward(Xte[:5]))[:1]
    with_blanks = np.asarray(model.forward(np.concatenate([Xte[:1], np.zeros_like(Xte[:4])])))[:1]
    np.testing.assert_allclose(with_tests, alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(with_blanks, alone, rtol=1e-4, atol=1e-5)


def test_predict_reports_the_accuracy_training_reported(cab_run, capsys):
    code, out, err = run_cmd(predict.main, [cab_run["checkpoint"], "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["test_accuracy"] == cab_run["test_accuracy"]
    # the setting is one where batch statistics would give another accuracy
    model = models.load(cab_run["checkpoint"]).train()
    Xte, yte = T.load_digits_split()[2:]
    proba = predict.predict_proba(model, Xte)
    assert round(float((proba.argmax(1) == yte).mean()), 4) != cab_run["test_accuracy"]


def test_a_language_model_with_dropout_samples_with_dropout_off(tmp_path, capsys):
    vocab = "abcdefgh\n"
    cfg = dict(model="language_model", vocab_size=len(vocab), block_size=8, n_layer=2,
               n_head=2, n_embd=16, vocab=vocab, dropout=0.5, seed=3)  # fmt: skip
    model = models.build(cfg)
    rng = np.random.default_rng(0)
    for p in model.parameters().values():
        p[...] = rng.standard_normal(p.shape).astype(p.dtype)
    save_checkpoint(tmp_path / "lm.npz", model)
    oracle = models.build({**cfg, "dropout": 0.0})  # the same weights, no dropout at all
    oracle.load_state_dict(model.state_dict())
    want = oracle.decode(oracle.generate(oracle.encode("ab")[None], 38, temperature=0)[0])
    loaded = models.load(tmp_path / "lm.npz")
    assert not any(getattr(m, "training", False) for _, m in loaded.named_modules())
    for _ in range(2):
        code, out, err = run_cmd(sample.main, [str(tmp_path / "lm.npz"), "--prompt", "ab",
                                               "--tokens", "38", "--temperature", "0"], capsys)  # fmt: skip
        assert code == 0, err
        assert out == want + "\n"


def test_batchnorm_buffers_are_validated(cab_run, tmp_path):
    ck = Path(cab_run["checkpoint"])
    name = next(k for k in load_checkpoint(ck)["model"] if k.endswith("running_var"))
    n = load_checkpoint(ck)["model"][name].size
    bad = rewrite(ck, tmp_path / "negvar.npz", arrays={f"model/{name}": -np.ones(n, np.float32)})
    with pytest.raises(CheckpointError, match="negative variance"):
        models.load(bad)


# --------------------------------------------------------------------------- 3. configs


def _configs():
    """Small configurations of every model kind, every layout option."""
    out = []
    for att in ("tssa", "softmax"):
        for pool in ("mean", "cls"):
            out.append(dict(model="classifier", image_size=8, patch_size=2, in_chans=3,
                            num_classes=7, dim=12, depth=2, num_heads=3, mlp_ratio=2,
                            attention=att, pool=pool))  # fmt: skip
        out.append(dict(model="token_classifier", in_dim=5, num_classes=3, dim=8, depth=3,
                        num_heads=2, attention=att, mlp_ratio=3))  # fmt: skip
        for bias in (True, False):
            out.append(dict(model="language_model", vocab_size=11, block_size=9, n_layer=2,
                            n_head=2, n_embd=8, attention=att, mlp_ratio=3, bias=bias))  # fmt: skip
    for p in (2, 4, 8, 16):
        out.append(dict(model="tost_cab", image_size=32, patch_size=p, in_chans=2, num_classes=5,
                        dim=16, depth=2, num_heads=2, mlp_ratio=2, cls_attn_layers=3))  # fmt: skip
    return out


@pytest.mark.parametrize("config", _configs(), ids=lambda c: c["model"])
def test_weights_a_config_implies_are_counted_before_building(config):
    built = models.build(config)
    assert models.expected_weights(config) == sum(v.size for v in built.state_dict().values())


def test_a_small_file_cannot_make_the_loader_allocate_gigabytes(digits_run, tmp_path):
    ck = Path(digits_run["checkpoint"])
    budget = sum(v.size for v in load_checkpoint(ck)["model"].values())
    # every size within the stored-weight count, but dim^2 * depth of them: gigabytes
    crafted = rewrite(ck, tmp_path / "dos.npz", lambda m: m["model_config"].update(
        dim=budget // 4 * 4, num_heads=4, depth=8))  # fmt: skip
    assert crafted.stat().st_size < 200_000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match="implies .* weights"):
            models.load(crafted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20 and time.perf_counter() - t0 < 5


@pytest.mark.parametrize(
    "change,message",
    [(dict(ln_eps=1e30), "'ln_eps'"), (dict(ln_eps=0.0), "'ln_eps'"), (dict(eta=float("inf")), "'eta'"),
     (dict(dtype="int32"), "'dtype'"), (dict(dtype="float16"), "'dtype'"), (dict(eta="1"), "'eta'")],
)  # fmt: skip
def test_tost_cab_config_floats_and_dtype_are_checked(cab_run, tmp_path, change, message):
    bad = rewrite(cab_run["checkpoint"], tmp_path / "bad.npz",
                  lambda m: m["model_config"].update(change))  # fmt: skip
    with pytest.raises(CheckpointError, match=message):
        models.load(bad)


def test_language_model_config_dropout_and_bias_are_typed(tmp_path):
    vocab = "abc"
    model = models.build(dict(model="language_model", vocab_size=3, block_size=4, n_embd=8,
                              n_head=2, vocab=vocab, bias=False, dropout=0.1))  # fmt: skip
    save_checkpoint(tmp_path / "ok.npz", model)
    assert models.load(tmp_path / "ok.npz").config["bias"] is False  # a bool, where it belongs
    for change, message in ((dict(dropout=1.5), "'dropout'"), (dict(bias="no"), "'bias'"),
                            (dict(vocab=5), "'vocab'")):  # fmt: skip
        bad = rewrite(tmp_path / "ok.npz", tmp_path / "bad.npz",
                      lambda m, c=change: m["model_config"].update(c))  # fmt: skip
        with pytest.raises(CheckpointError, match=message):
            models.load(bad)


@pytest.mark.parametrize("change", [dict(num_classes=12), dict(in_chans=3)])
def test_predict_shows_only_ten_digit_one_channel_models(digits_run, tmp_path, capsys, change):
    model = models.build({**models.load(digits_run["checkpoint"]).config, **change})
    save_checkpoint(tmp_path / "other.npz", model)
    key = next(iter(change))
    for extra in ([], ["--images", str(tmp_path / "x.npy")]):
        np.save(tmp_path / "x.npy", np.zeros((2, 8, 8)))
        code, out, err = run_cmd(predict.main, [str(tmp_path / "other.npz"), "--no-progress",
                                                *extra], capsys)  # fmt: skip
        assert code == 2 and key in err and "Traceback" not in err and out == ""


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "content,flag",
    [('{"holdout": "no"}', "--holdout"), ('{"text_file": 123, "task": "text"}', "--text-file"),
     ('{"dim": [64]}', "dim"), ('{"dim": "64"}', "--dim"), ('{"steps": true}', "--steps"),
     ('{"lr": "0.1"}', "--lr"), ('{"model": 1}', "--model"), ("[" * 100000 + "]" * 100000, "nested"),
     ('{"text_file": "", "task": "text"}', "--text-file")],
)  # fmt: skip
def test_config_json_is_typed_and_flat(tmp_path, capsys, content, flag):
    code, out, err = run_train(["--config", _write(tmp_path / "c.json", content),
                                "--out", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 2 and flag in err and "Traceback" not in err
    assert not (tmp_path / "r" / "model.npz").exists()


def test_config_numbers_that_are_integers_become_integers():
    cfg = T.make_config(dim=32.0, steps=3.0, heads=4)
    assert type(cfg.dim) is int and type(cfg.steps) is int and cfg.dim == 32
    with pytest.raises(ValueError, match="--holdout: expected true or false"):
        T.make_config(holdout="no")


def test_a_config_naming_a_text_file_is_said_and_checked(tmp_path, capsys):
    cfg = _write(tmp_path / "c.json", json.dumps({"task": "text", "text_file": "/nonexistent"}))
    code, out, err = run_train(["--config", cfg, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "text_file '/nonexistent'" in err and "--text-file" in err
    cfg = _write(tmp_path / "d.json", json.dumps({"task": "text", "text_file": str(tmp_path)}))
    code, out, err = run_train(["--config", cfg, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "not a file" in err


@pytest.mark.parametrize(
    "flags",
    [["--dim", "1000000000", "--heads", "1"], ["--task", "text", "--batch-size", "1000000000"]],
)
def test_sizes_beyond_memory_are_refused_before_allocating(tmp_path, capsys, flags):
    code, out, err = run_train([*flags, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "GiB" in err and "Traceback" not in err


def test_empty_out_is_refused(capsys):
    code, out, err = run_train(["--out", ""], capsys)
    assert code == 2 and "--out" in err and "''" in err


# --------------------------------------------------------------------------- 4. nothing replaced


def test_a_new_run_never_replaces_a_trained_model(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--steps", "2", "--depth", "1", "--dim", "16", "--heads", "2", "--out", str(out)]
    assert run_train(args, capsys)[0] == 0
    before = (out / "model.npz").read_bytes()
    code, _, err = run_train([*args, "--seed", "1"], capsys)
    assert code == 2 and "--resume" in err and "--out" in err and "--overwrite" in err
    assert (out / "model.npz").read_bytes() == before
    assert "--overwrite" in T.build_parser().format_help()
    code, _, err = run_train([*args, "--seed", "1", "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "model.npz").read_bytes() != before


def test_written_files_keep_the_users_mode(tmp_path, capsys):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        code, _, err = run_train(["--steps", "4", "--eval-every", "2", "--stop-after", "1",
                                  "--depth", "1", "--dim", "16", "--heads", "2",
                                  "--out", str(out)], capsys)  # fmt: skip
        assert code == 0, err
        for name in ("model.npz", "config.json", "metrics.jsonl"):
            assert stat.S_IMODE((out / name).stat().st_mode) == 0o640, name  # 0666 & ~027
        os.chmod(out / "model.npz", 0o644)  # the user's choice is kept on a rewrite
        code, _, err = run_train(["--resume", str(out / "model.npz")], capsys)
        assert code == 0, err
        assert stat.S_IMODE((out / "model.npz").stat().st_mode) == 0o644
        assert stat.S_IMODE((out / "curves.png").stat().st_mode) == 0o640
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- 5. numerics


def test_a_denormal_temperature_is_greedy_not_nan(text_run, capsys):
    greedy = run_cmd(sample.main, [text_run["checkpoint"], "--temperature", "0", "--tokens",
                                   "30", "--no-progress"], capsys)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow or NaN warning fails the test
        tiny = run_cmd(sample.main, [text_run["checkpoint"], "--temperature", "1e-310",
                                     "--tokens", "30", "--no-progress"], capsys)  # fmt: skip
    assert tiny[0] == greedy[0] == 0 and tiny[1] == greedy[1]
    assert "below 1e-06" in sample.build_parser().format_help()
    model = models.load(text_run["checkpoint"])
    ids = model.generate(model.encode("the")[None], 5, temperature=1e-300, seed=0)
    assert (ids == model.generate(model.encode("the")[None], 5, temperature=0)).all()


@pytest.mark.parametrize(
    "array,what",
    [(T.load_digits_split()[2][:20] / 16.0, "every pixel is <= 1"),
     (T.load_digits_split()[2][:20] > 8, "a bool array")],
)  # fmt: skip
def test_images_in_an_implausible_scale_give_a_warning(digits_run, tmp_path, capsys, array, what):
    np.save(tmp_path / "x.npy", array)
    code, out, err = run_cmd(predict.main, [digits_run["checkpoint"], "--images",
                                            str(tmp_path / "x.npy")], capsys)  # fmt: skip
    assert code == 0
    assert f"warning: --images: {what}" in err and "0..16 scale" in err and "multiply" in err
    np.save(tmp_path / "raw.npy", T.load_digits_split()[2][:20])  # the right scale: no word
    assert run_cmd(predict.main, [digits_run["checkpoint"], "--images",
                                  str(tmp_path / "raw.npy")], capsys)[2] == ""  # fmt: skip


def test_a_npy_header_declaring_gigabytes_and_zero_images_are_refused(digits_run, tmp_path, capsys):
    header = npy_bytes(np.zeros((0, 8, 8)))
    (tmp_path / "huge.npy").write_bytes(header.replace(b"(0, 8, 8)", b"(500000000, 8, 8)"))
    tracemalloc.start()
    try:
        code, out, err = run_cmd(predict.main, [digits_run["checkpoint"], "--images",
                                                str(tmp_path / "huge.npy")], capsys)  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 2 and "--images" in err and "declares 256000000000 bytes" in err
    assert peak < 100 << 20
    np.save(tmp_path / "none.npy", np.zeros((0, 8, 8)))
    code, out, err = run_cmd(predict.main, [digits_run["checkpoint"], "--images",
                                            str(tmp_path / "none.npy")], capsys)  # fmt: skip
    assert code == 2 and "zero images" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    """A digits run stopped mid-epoch (its checkpoint stores the epoch's shuffle order)."""
    out = tmp_path_factory.mktemp("half")
    cfg = T.make_config(task="digits", steps=8, eval_every=3, out=str(out), **TINY)
    return Path(T.train(cfg, progress=False, stop_after=1)["checkpoint"])


@pytest.mark.parametrize(
    "meta_change,arrays,message",
    [(lambda m: m.update(perm=[-1] * len(m["perm"])), None, "perm"),
     (lambda m: m.update(perm=[10**6] * len(m["perm"])), None, "perm"),
     (lambda m: m.update(perm=m["perm"][:-1]), None, "perm"),
     (None, {"optim/step": np.array(-(10**12))}, "optimizer's step"),
     (None, {"optim/step": np.array(10**15)}, "optimizer's step"),
     (None, {"optim/step": np.array(3.0)}, "optimizer's step"),
     (lambda m: m["rng_state"]["state"].update(state=-5), None, "training state"),
     (lambda m: m["rng_state"]["state"].update(inc=2**200), None, "training state")],
)  # fmt: skip
def test_crafted_resume_state_exits_2_with_a_message(half_run, tmp_path, capsys, meta_change,
                                                     arrays, message):  # fmt: skip
    bad = rewrite(half_run, tmp_path / "bad.npz", meta_change, arrays)
    code, out, err = run_train(["--resume", str(bad)], capsys)
    assert code == 2 and message in err and str(bad) in err and "Traceback" not in err


def test_negative_second_moments_are_refused_on_resume(half_run, tmp_path, capsys):
    optim = load_checkpoint(half_run)["optim"]
    name = next(k for k in optim if k.startswith("exp_avg_sq."))
    bad = rewrite(half_run, tmp_path / "bad.npz", arrays={f"optim/{name}": -optim[name] - 1})
    code, out, err = run_train(["--resume", str(bad)], capsys)
    assert code == 2 and f"optimizer state {name!r} is negative" in err


# --------------------------------------------------------------------------- 7. named exceptions


def test_a_text_shorter_than_a_validation_window_is_refused(tmp_path, capsys):
    (tmp_path / "short.txt").write_text("abcdefghij" * 7)  # 70 >= 4 (16 + 1): the old check
    code, out, err = run_train(["--task", "text", "--text-file", str(tmp_path / "short.txt"),
                                "--block-size", "16", "--steps", "2", "--out",
                                str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 2 and "--text-file" in err and "161" in err and "Traceback" not in err
    for holdout in (False, True):  # the shortest text accepted trains and evaluates
        n = T.min_text_length(16, holdout)
        (tmp_path / "ok.txt").write_text(("abcdefghij" * 100)[:n])
        cfg = T.make_config(task="text", text_file=str(tmp_path / "ok.txt"), block_size=16,
                            steps=2, holdout=holdout, out=str(tmp_path / f"ok{holdout}"), **TINY)  # fmt: skip
        assert T.train(cfg, progress=False)["steps"] == 2
        (tmp_path / "ok.txt").write_text(("abcdefghij" * 100)[: n - 1])
        with pytest.raises(ValueError, match="--text-file"):
            T.TextTask(cfg)


def test_predict_into_a_closed_pipe_exits_quietly(digits_run, tmp_path):
    np.save(tmp_path / "x.npy", np.tile(T.load_digits_split()[2], (12, 1, 1, 1)))  # 100+ kB out
    proc = subprocess.Popen(
        [sys.executable, "-m", "whitebox.predict", digits_run["checkpoint"], "--images",
         str(tmp_path / "x.npy"), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    first = proc.stdout.readline()  # as `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert first.startswith(b"0\t") and err == ""


def test_ctrl_c_in_training_says_where_the_checkpoint_is(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "whitebox.train", "--steps", "100000", "--eval-every", "2",
         "--depth", "1", "--dim", "16", "--heads", "2", "--out", str(out), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    deadline = time.time() + 120
    while not (out / "model.npz").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and str(out / "model.npz") in lines[0] and "--resume" in lines[0]
    assert err.rstrip().splitlines()[-1] == lines[0]
    step = int(lines[0].split("(step ")[1].split(")")[0])
    assert load_checkpoint(out / "model.npz")["meta"]["step"] == step  # intact, as said


def test_ctrl_c_in_sample_keeps_what_was_generated(text_run):
    proc = subprocess.Popen(
        [sys.executable, "-m", "whitebox.sample", text_run["checkpoint"], "--tokens", "1000000",
         "--prompt", "the", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    got = b""
    deadline = time.time() + 120
    while len(got) < 13 and time.time() < deadline:  # streamed as generated: before the end
        if select.select([proc.stdout], [], [], 1.0)[0]:
            got += os.read(proc.stdout.fileno(), 13 - len(got))
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130 and "Traceback" not in err
    assert got.startswith(b"the") and len(got) == 13
    text = (got + rest).decode()
    n = int(err.split("interrupted after ")[1].split()[0])
    assert text == "the" + text[3:] and len(text.rstrip("\n")) >= 3 + n - 1
    assert len(err.strip().splitlines()) == 1
