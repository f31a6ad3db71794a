"""Checkpoints and the training command trust nothing (issue: loader hardening, --resume,
symlink-safe writes, temporary files, the run lock, a full disk, range-checked flags)."""

from __future__ import annotations

import ast
import errno
import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from whitebox import checkpoint, demo, models
from whitebox import train as T
from whitebox.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint

TINY = dict(depth=1, dim=16, heads=2, batch_size=32, warmup=2)
ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, capsys):
    try:
        code = T.main([*args, "--no-progress"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    cfg = T.make_config(task="digits", steps=4, eval_every=2, out=str(out), **TINY)
    T.train(cfg, progress=False)
    return out / "model.npz"


def npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def members_of(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def with_meta(good, path, change):
    """A copy of ``good`` whose metadata went through ``change(meta)``."""
    m = members_of(good)
    meta = json.loads(str(np.load(io.BytesIO(m["meta.npy"]))))
    meta = change(meta) or meta
    m["meta.npy"] = npy_bytes(np.array(json.dumps(meta)))
    return write_zip(path, m)


# --------------------------------------------------------------------------- the loader


def test_checkpoint_module_knows_nothing_of_models():
    tree = ast.parse((ROOT / "whitebox" / "checkpoint.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and "models" in m}
    assert not hasattr(checkpoint, "load_model")


def test_npy_renamed_npz(tmp_path):
    p = tmp_path / "x.npz"
    p.write_bytes(npy_bytes(np.zeros(3)))
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(p)


def test_unsupported_compression_and_encryption_flag(good, tmp_path):
    bz = write_zip(tmp_path / "bz.npz", members_of(good), zipfile.ZIP_BZIP2)
    with pytest.raises(CheckpointError, match="unsupported compression"):
        load_checkpoint(bz)
    data = bytearray(good.read_bytes())
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        i = data.find(sig)
        while i >= 0:
            data[i + off] |= 0x1  # "encrypted"
            i = data.find(sig, i + 4)
    enc = tmp_path / "enc.npz"
    enc.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="encrypted"):
        load_checkpoint(enc)
    data = bytearray(good.read_bytes())  # an unknown method number (99)
    i = data.find(b"PK\x01\x02")
    while i >= 0:
        struct.pack_into("<H", data, i + 10, 99)
        i = data.find(b"PK\x01\x02", i + 4)
    odd = tmp_path / "odd.npz"
    odd.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(odd)


def test_tiny_file_declaring_a_huge_array_is_refused_before_allocating(good, tmp_path):
    m = members_of(good)
    header = npy_bytes(np.zeros(0))  # then claim 10**12 float64s (8 TB)
    m["model/head.weight.npy"] = header.replace(b"(0,)", b"(1000000000000,)")
    p = write_zip(tmp_path / "huge.npz", m)
    assert p.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="declares"):
        load_checkpoint(p)


def test_unknown_members_are_refused_unread_and_sizes_are_capped(good, tmp_path, monkeypatch):
    m = members_of(good)
    m["bomb.npy"] = b"\0" * (4 << 20)  # compresses to a few kB
    bomb = write_zip(tmp_path / "bomb.npz", m, zipfile.ZIP_DEFLATED)
    reads = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, *a, **k: reads.append(a) or real_open(self, *a, **k))  # fmt: skip
    with pytest.raises(CheckpointError, match="unexpected members"):
        load_checkpoint(bomb)
    assert reads == []  # nothing was decompressed
    monkeypatch.setattr(checkpoint, "MAX_BYTES", 1000)
    with pytest.raises(CheckpointError, match="at most 1000"):
        load_checkpoint(good)
    assert reads == []


@pytest.mark.parametrize(
    "change,message",
    [(lambda m: {**m, "model_config": {**m["model_config"], "bogus": 1}}, "unknown keys"),
     (lambda m: {**m, "model_config": {**m["model_config"], "dim": 10**9}}, "does not fit"),
     (lambda m: {**m, "model_config": {**m["model_config"], "dim": "16"}}, r"\['dim'\]: expected int"),
     (lambda m: {**m, "model_config": {**m["model_config"], "dtype": "int32"}}, "'dtype'.*float32"),
     (lambda m: {**m, "model_config": {**m["model_config"], "dtype": "object"}}, "'dtype'.*float32"),
     (lambda m: {**m, "model_config": {**m["model_config"], "dtype": 5}}, "'dtype'.*expected str"),
     (lambda m: {**m, "model_config": {**m["model_config"], "layer_scale_init": 1e30}}, "'layer_scale_init'.*finite"),
     (lambda m: {**m, "model_config": {**m["model_config"], "layer_scale_init": "nan"}}, "'layer_scale_init'.*expected float"),
     (lambda m: {**m, "model_config": {**m["model_config"], "pool": 1}}, "'pool'"),
     (lambda m: {**m, "model_config": {**m["model_config"], "seed": -1}}, "'seed'"),
     (lambda m: {**m, "model_config": {**m["model_config"], "input_norm": {"scale": "16", "mean": 0, "std": 1}}}, "input_norm"),
     (lambda m: {**m, "model_config": {**m["model_config"], "input_norm": [1]}}, "input_norm"),
     (lambda m: {**m, "model_config": {**m["model_config"], "image_size": 4, "patch_size": 1}}, "implies"),
     (lambda m: {**m, "model_config": {**m["model_config"], "model": "rnn"}}, "no known model"),
     (lambda m: {**m, "model_config": {**m["model_config"], "depth": 2}}, "do not fit"),
     (lambda m: {**m, "model_config": [1, 2]}, "no model_config")],
)  # fmt: skip
def test_bad_model_config_is_a_checkpoint_error(good, tmp_path, change, message):
    bad = with_meta(good, tmp_path / "bad.npz", change)
    with pytest.raises(CheckpointError, match=message):
        models.load(bad)


@pytest.mark.parametrize(
    "change",
    [lambda m: m.update(step="4"), lambda m: m.update(step=-1), lambda m: m.pop("history"),
     lambda m: m.update(history=[1, 2]), lambda m: m.update(rng_state={"x": 1}),
     lambda m: m.update(rng_state="PCG64"), lambda m: m.update(perm="0 1 2"),
     lambda m: m["train_config"].update(lr=-1.0), lambda m: m["train_config"].update(bogus=1),
     lambda m: m.update(train_config=[]), lambda m: m["train_config"].update(task=3),
     lambda m: m.update(step=10**6), lambda m: m["history"][-1].pop("train_loss"),
     lambda m: m["history"][0].update(test_accuracy="high"),
     lambda m: m["train_config"].update(dtype="object")],
)  # fmt: skip
def test_malformed_training_state_exits_2_on_resume(good, tmp_path, capsys, change):
    bad = with_meta(good, tmp_path / "bad.npz", change)
    code, out, err = run_cli(["--resume", str(bad)], capsys)
    assert code == 2 and "Traceback" not in err and str(bad) in err


# --------------------------------------------------------------------------- --resume trust


def test_resume_writes_beside_the_checkpoint_not_where_it_says(good, tmp_path, capsys):
    target = tmp_path / "planted" / "deep"
    ck = tmp_path / "here" / "model.npz"
    ck.parent.mkdir()
    with_meta(good, ck, lambda m: m["train_config"].update(out=str(target), steps=6))
    code, out, err = run_cli(["--resume", str(ck)], capsys)
    assert code == 0, err
    assert not (tmp_path / "planted").exists()
    assert json.loads(out.splitlines()[-1])["checkpoint"] == str(ck)
    assert {"metrics.jsonl", "curves.png", "config.json"} <= {p.name for p in ck.parent.iterdir()}


def test_text_resume_needs_the_text_named_again_and_checks_its_hash(tmp_path, capsys, monkeypatch):
    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    cfg = T.make_config(task="text", steps=4, eval_every=2, block_size=16, text_file=str(text),
                        out=str(tmp_path / "r"), **TINY)  # fmt: skip
    ck = T.train(cfg, progress=False, stop_after=1)["checkpoint"]
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me " * 100)
    planted = with_meta(Path(ck), tmp_path / "r" / "planted.npz",
                        lambda m: m["train_config"].update(text_file=str(secret)))  # fmt: skip
    opened = []
    real = T.load_text
    monkeypatch.setattr(T, "load_text", lambda p=None: opened.append(p) or real(p))
    code, out, err = run_cli(["--resume", str(planted)], capsys)
    assert code == 2 and "--text-file" in err and "never opened" in err
    other = tmp_path / "other.txt"
    other.write_text("a different text, long enough for a block of sixteen. " * 40)
    code, out, err = run_cli(["--resume", str(planted), "--text-file", str(other)], capsys)
    assert code == 2 and "SHA-256" in err
    code, out, err = run_cli(["--resume", str(planted), "--text-file", str(text)], capsys)
    assert code == 0, err
    assert str(secret) not in map(str, opened)


def test_resume_refuses_contradicting_flags_by_name(good, capsys):
    code, out, err = run_cli(["--resume", str(good), "--dim", "32", "--lr", "0.1",
                              "--task", "text"], capsys)  # fmt: skip
    assert code == 2
    for flag in ("--dim 32", "--lr 0.1", "--task text"):
        assert flag in err
    code, out, err = run_cli(["--resume", str(good), "--dim", "16", "--out", str(good.parent)],
                             capsys)  # fmt: skip
    assert code == 0, err  # the stored value itself is no contradiction


def test_resume_with_more_steps_trains_longer_and_says_so(good, tmp_path, capsys):
    ck = tmp_path / "model.npz"
    ck.write_bytes(good.read_bytes())
    code = T.main(["--resume", str(ck), "--steps", "8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "training longer, to 8 steps" in err
    assert json.loads(out.splitlines()[-1])["steps"] == 8
    assert [h["step"] for h in load_checkpoint(ck)["meta"]["history"]] == [2, 4, 6, 8]
    code, out, err = run_cli(["--resume", str(ck), "--steps", "3"], capsys)
    assert code == 2 and "--steps" in err


# --------------------------------------------------------------------------- writes


def test_planted_symlinks_are_replaced_not_followed(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    victims = {}
    for name in ("metrics.jsonl.tmp", "metrics.jsonl", "curves.png", "config.json",
                 "model.npz"):  # fmt: skip
        victim = tmp_path / f"victim-{name}"
        victim.write_text("precious")
        (out / name).symlink_to(victim)
        victims[name] = victim
    code, _, err = run_cli(["--steps", "2", "--depth", "1", "--dim", "16", "--heads", "2",
                            "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    assert all(v.read_text() == "precious" for v in victims.values())
    for name in ("metrics.jsonl", "curves.png", "config.json", "model.npz"):
        assert (out / name).is_file() and not (out / name).is_symlink()


def test_temporaries_of_a_killed_save_are_removed_by_the_next(good, tmp_path):
    path = tmp_path / "model.npz"
    for i in range(5):
        (tmp_path / f"model.npz.killed{i}.tmp").write_bytes(b"x" * 1000)
    (tmp_path / "unrelated.tmp").write_bytes(b"keep")
    checkpoint.save_checkpoint(path, models.load(good))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz", "unrelated.tmp"]


def test_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(good, tmp_path,
                                                                           monkeypatch, capsys):  # fmt: skip
    path = tmp_path / "model.npz"
    path.write_bytes(good.read_bytes())
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(CheckpointWriteError, match="No space left.*previous version is kept"):
        checkpoint.save_checkpoint(path, models.load(good))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    code, out, err = run_cli(["--resume", str(path), "--steps", "6"], capsys)
    assert code == 2 and "No space left" in err and "Traceback" not in err
    assert path.read_bytes() == before


def test_second_training_into_the_same_folder_is_refused(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a first training holds the folder
    try:
        code, _, err = run_cli(["--steps", "2", "--out", str(out)], capsys)
    finally:
        os.close(fd)
    assert code == 2 and "another training" in err
    assert not (out / "model.npz").exists()
    code, _, err = run_cli(["--steps", "2", "--depth", "1", "--dim", "16", "--heads", "2",
                            "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err  # released: the folder is free again


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "flags,flag",
    [(["--epochs", "-5"], "--epochs"), (["--epochs", "0"], "--epochs"),
     (["--steps", "-1"], "--steps"), (["--steps", "0"], "--steps"),
     (["--eval-every", "0"], "--eval-every"), (["--batch-size", "0"], "--batch-size"),
     (["--block-size", "0"], "--block-size"), (["--lr", "-1"], "--lr"),
     (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--clip", "-1"], "--clip"),
     (["--clip", "0"], "--clip"), (["--clip", "nan"], "--clip"), (["--depth", "0"], "--depth"),
     (["--dim", "0"], "--dim"), (["--heads", "0"], "--heads"), (["--warmup", "-1"], "--warmup"),
     (["--weight-decay", "-0.1"], "--weight-decay"), (["--seed", "-1"], "--seed"),
     (["--label-smoothing", "1"], "--label-smoothing"), (["--threads", "0"], "--threads"),
     (["--stop-after", "0"], "--stop-after"), (["--steps", "2.5"], "--steps")],
)  # fmt: skip
def test_numeric_flags_are_range_checked_by_name(capsys, flags, flag):
    code, out, err = run_cli(flags, capsys)
    assert code == 2 and flag in err and "Traceback" not in err


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run_cli(["--out", str(f)], capsys)
    assert code == 2 and "--out" in err and "not a folder" in err
    code, _, err = run_cli(["--out", str(f / "sub")], capsys)
    assert code == 2 and "--out" in err


def test_python_api_checks_the_same_ranges():
    with pytest.raises(ValueError, match="--clip"):
        T.make_config(clip=0.0)
    with pytest.raises(ValueError, match="--steps"):
        T.make_config(steps=-3)


@pytest.mark.parametrize("flags", [["--steps", "-1"], ["--noise", "-1"], ["--noise", "nan"]])
def test_demo_flags_are_range_checked(capsys, flags):
    with pytest.raises(SystemExit) as e:
        demo.main(flags)
    assert e.value.code == 2 and flags[0] in capsys.readouterr().err


def test_a_planted_lock_symlink_is_refused_not_followed(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / ".lock").symlink_to(victim)
    code, _, err = run_cli(["--steps", "2", "--out", str(out)], capsys)
    assert code == 2 and ".lock" in err and "Traceback" not in err
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("bad", [np.array(["a"] * 10), np.full(10, np.nan), np.ones(10) * 1j])
def test_weights_must_be_finite_floats(good, tmp_path, bad):
    m = members_of(good)
    name = next(k for k in m if k.startswith("model/"))
    m[name] = npy_bytes(bad)
    with pytest.raises(CheckpointError, match="not finite floating point"):
        models.load(write_zip(tmp_path / "w.npz", m))
