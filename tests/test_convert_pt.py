"""scripts/convert_pt.py: no code from a .pt, one-line errors, nothing written on failure.

The security cases and a few representative ones run the script as a subprocess (exit code,
one line on stderr, no traceback); the many other cases call its ``main`` in this process,
which is the same code path without the cost of importing torch again for each case. Skipped
when torch is not installed; torch is never a dependency of the library."""

import argparse
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_pt.py"
_spec = importlib.util.spec_from_file_location("convert_pt", SCRIPT)
convert_pt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_pt)


def run_subprocess(*args, umask=None):
    """Run the script; returns (rc, stdout, stderr)."""
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )
    return r.returncode, r.stdout, r.stderr


def run(capfd, *args):
    """``main`` in this process; returns (rc, stdout, stderr)."""
    rc = convert_pt.main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


def assert_refused(result, *fragments):
    """Exit 2, one line on stderr starting with 'convert_pt: error:', naming ``fragments``."""
    rc, out, err = result
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("convert_pt: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def listing(folder):
    return sorted(os.listdir(folder))


def state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "qkv.weight": torch.randn(6, 4, generator=g),
        "qkv.bias": torch.randn(6, generator=g),
        "bn.running_var": torch.rand(3, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
    }


def assert_same(npz_path, expected):
    with np.load(npz_path) as f:
        assert sorted(f.files) == sorted(expected)
        for k, v in expected.items():
            np.testing.assert_array_equal(f[k], v.numpy(), err_msg=k)


class Touch:
    """Unpickling this runs ``os.mkdir(path)``: a stand-in for any shell command."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


MKDIR = f"{os.mkdir.__module__}.mkdir"  # how the pickle names it: posix.mkdir


# --------------------------------------------------------------------------------------------
# No code from the file (X01, X02)
# --------------------------------------------------------------------------------------------


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    pwned = tmp_path / "pwned"
    torch.save({"model": state(), "extra": Touch(pwned)}, tmp_path / "evil.pt")
    before = listing(tmp_path)
    line = assert_refused(
        run_subprocess(tmp_path / "evil.pt", tmp_path / "w.npz"), MKDIR, "--unsafe-pickle"
    )
    assert "weights-only" in line
    assert not pwned.exists()
    assert listing(tmp_path) == before  # no .npz, no temporary file


def test_malicious_object_inside_the_state_dict_is_refused(tmp_path, capfd):
    pwned = tmp_path / "pwned"
    torch.save({"model": dict(state(), evil=Touch(pwned))}, tmp_path / "evil.pt")
    assert_refused(run(capfd, tmp_path / "evil.pt", tmp_path / "w.npz"), MKDIR)
    assert not pwned.exists() and not (tmp_path / "w.npz").exists()


def test_unsafe_pickle_opt_in_loads_a_trusted_file_and_runs_its_code(tmp_path):
    """Documented: --unsafe-pickle is weights_only=False, so the file's code does run."""
    pwned = tmp_path / "pwned"
    sd = state()
    torch.save({"model": sd, "extra": Touch(pwned)}, tmp_path / "trusted.pt")
    rc, out, err = run_subprocess(tmp_path / "trusted.pt", tmp_path / "w.npz", "--unsafe-pickle")
    assert rc == 0, err
    assert pwned.is_dir()  # the code in the file ran: this is what the flag's help says
    assert "wrote 4 arrays" in out
    assert_same(tmp_path / "w.npz", sd)


def test_unsafe_pickle_help_text():
    text = convert_pt.build_parser().format_help()
    assert "--unsafe-pickle" in text and "trust" in text and "runs code" in text


def test_whole_module_is_refused_safely_and_explained_when_unsafe(tmp_path, capfd):
    torch.save(torch.nn.Linear(2, 3), tmp_path / "model.pt")
    assert_refused(run(capfd, tmp_path / "model.pt", tmp_path / "w.npz"), "Linear")
    assert_refused(
        run(capfd, tmp_path / "model.pt", tmp_path / "w.npz", "--unsafe-pickle"),
        "whole",
        "state_dict()",
    )
    torch.save({"model": torch.nn.Linear(2, 3)}, tmp_path / "obj.pt")
    assert_refused(run(capfd, tmp_path / "obj.pt", tmp_path / "w.npz"), "Linear")
    assert_refused(
        run(capfd, tmp_path / "obj.pt", tmp_path / "w.npz", "--unsafe-pickle"), "'model'"
    )
    assert not (tmp_path / "w.npz").exists()


# --------------------------------------------------------------------------------------------
# What the public training checkpoints hold loads without --unsafe-pickle
# --------------------------------------------------------------------------------------------


def test_vision_training_checkpoint_with_args_namespace(tmp_path, capfd):
    """DeiT-style main.py: model, optimizer, lr_scheduler, epoch, model_ema, scaler, args."""
    lin = torch.nn.Linear(4, 6)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3)
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    sd = {"module." + k: v for k, v in lin.state_dict().items()}
    args = argparse.Namespace(model="tost_cab_tiny_12_p16", lr=5e-4, epochs=300, output_dir="",
                              model_ema=True, opt_betas=None, smoothing=0.1, repeated_aug=True)  # fmt: skip
    ckpt = {"model": sd, "optimizer": opt.state_dict(), "lr_scheduler": {"base_values": [1e-3]},
            "epoch": 3, "model_ema": {k: v + 1 for k, v in lin.state_dict().items()},
            "scaler": {"scale": 65536.0, "_growth_tracker": 0}, "args": args}  # fmt: skip
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    rc, out, err = run(capfd, tmp_path / "checkpoint.pth", tmp_path / "w.npz")
    assert rc == 0 and err == "", err
    assert out.strip() == f"wrote 2 arrays to {tmp_path / 'w.npz'}"
    assert_same(tmp_path / "w.npz", lin.state_dict())
    assert not (tmp_path / "w.json").exists()  # no model_args in a vision checkpoint
    rc, out, err = run(capfd, tmp_path / "checkpoint.pth", tmp_path / "ema.npz", "--key",
                       "model_ema")  # fmt: skip
    assert rc == 0, err
    assert_same(tmp_path / "ema.npz", {k: v + 1 for k, v in lin.state_dict().items()})


def test_language_checkpoint_with_model_args_and_config(tmp_path, capfd):
    """nanoGPT-style train.py: model, optimizer, model_args, iter_num, best_val_loss, config."""
    sd = {"_orig_mod." + k: v for k, v in state().items()}
    model_args = dict(n_layer=1, n_head=2, n_embd=4, block_size=8, bias=True, vocab_size=11,
                      dropout=0.0)  # fmt: skip
    ckpt = {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "model_args": model_args,
            "iter_num": 5, "best_val_loss": torch.tensor(2.5),
            "config": {"dtype": "bfloat16", "compile": True}}  # fmt: skip
    torch.save(ckpt, tmp_path / "ckpt.pt")
    rc, _, err = run(capfd, tmp_path / "ckpt.pt", tmp_path / "w.npz")
    assert rc == 0 and err == "", err
    assert_same(tmp_path / "w.npz", state())
    assert json.loads((tmp_path / "w.json").read_text()) == model_args


# --------------------------------------------------------------------------------------------
# Not a checkpoint
# --------------------------------------------------------------------------------------------


def test_missing_source(tmp_path):
    assert_refused(run_subprocess(tmp_path / "nope.pt", tmp_path / "w.npz"), "nope.pt", "exist")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("kind", ["folder", "empty", "text", "random", "truncated", "npz",
                                  "plain_pickle"])  # fmt: skip
def test_not_a_checkpoint(tmp_path, capfd, kind):
    src = tmp_path / "src.pt"
    if kind == "folder":
        src.mkdir()
    elif kind == "empty":
        src.write_bytes(b"")
    elif kind == "text":
        src.write_text("hello world\n" * 20)
    elif kind == "random":
        src.write_bytes(np.random.default_rng(0).bytes(1000))
    elif kind == "truncated":
        torch.save(state(), src)
        src.write_bytes(src.read_bytes()[:300])
    elif kind == "npz":
        with open(src, "wb") as f:
            np.savez(f, a=np.ones(2))
    else:
        import pickle

        src.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    before = listing(tmp_path)
    assert_refused(run(capfd, src, tmp_path / "w.npz"), "'" + str(src))
    assert listing(tmp_path) == before


def test_not_a_checkpoint_subprocess(tmp_path):
    (tmp_path / "x.pt").write_text("hello world\n")
    assert_refused(run_subprocess(tmp_path / "x.pt", tmp_path / "w.npz"), "not a PyTorch")


def test_needs_torch(tmp_path):
    """Without torch: one line, exit 2 (torch is blocked in the child interpreter)."""
    torch.save(state(), tmp_path / "a.pt")
    code = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = ['convert_pt', {str(tmp_path / 'a.pt')!r}, {str(tmp_path / 'w.npz')!r}]; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert_refused((r.returncode, r.stdout, r.stderr), "needs PyTorch")


# --------------------------------------------------------------------------------------------
# No state dict where it should be
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ckpt, fragments",
    [
        ([torch.ones(2)], ["list", "not a state dict"]),  # X_list
        (torch.ones(2), ["Tensor", "not a state dict"]),  # X_tensor
        ({}, ["empty", "no tensors"]),  # X_empty
        ({"model": {}}, ["'model'", "no tensors"]),
        ({1: torch.ones(2)}, ["key 1", "int"]),  # X_intkeys
        ({"w": torch.ones(2), "epoch": 3}, ["'epoch'", "int", "not a tensor", "--key"]),
        ({"model": {"w": torch.ones(2), "note": "hi"}}, ["'note'", "str", "not a tensor"]),
        ({"model": {"w": torch.ones(2), "sub": {"x": torch.ones(1)}}}, ["'sub'", "dict"]),
        ({"model": "resnet", "w": torch.ones(2)}, ["'model'", "str", "not a tensor"]),
    ],
)
def test_no_state_dict(tmp_path, capfd, ckpt, fragments):
    torch.save(ckpt, tmp_path / "c.pt")
    before = listing(tmp_path)
    assert_refused(run(capfd, tmp_path / "c.pt", tmp_path / "w.npz"), *fragments)
    assert listing(tmp_path) == before  # never an empty .npz


def test_absent_key_lists_the_keys(tmp_path, capfd):
    torch.save({"model": state(), "epoch": 3}, tmp_path / "c.pt")
    assert_refused(
        run(capfd, tmp_path / "c.pt", tmp_path / "w.npz", "--key", "model_ema"),
        "--key 'model_ema'",
        "'model'",
        "'epoch'",
    )
    torch.save(torch.ones(2), tmp_path / "t.pt")
    assert_refused(run(capfd, tmp_path / "t.pt", tmp_path / "w.npz", "--key", "model"), "Tensor")
    assert not (tmp_path / "w.npz").exists()


# --------------------------------------------------------------------------------------------
# Tensors NumPy cannot take as they are
# --------------------------------------------------------------------------------------------


def _quantized():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8)


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda: torch.ones(3).to_sparse(), ["sparse", "sparse_coo", "to_dense"]),
        (lambda: torch.eye(3).to_sparse_csr(), ["sparse", "sparse_csr"]),
        (_quantized, ["quantized", "qint8"]),
        (lambda: torch.empty(3, device="meta"), ["meta", "no data"]),
        (lambda: torch.ones(2, dtype=torch.complex32), ["complex32", "NumPy"]),
    ],
)
def test_tensors_that_do_not_convert(tmp_path, capfd, make, fragments):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"model": dict(state(), odd=make())}, tmp_path / "c.pt")
    assert_refused(run(capfd, tmp_path / "c.pt", tmp_path / "w.npz"), "'odd'", *fragments)
    assert not (tmp_path / "w.npz").exists()


def test_bfloat16_and_float8_are_upcast_to_float32_and_said(tmp_path, capfd):
    bf = torch.randn(5, 3).to(torch.bfloat16)
    f8 = torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)
    torch.save({"a": bf, "b": f8, "c": torch.ones(2, dtype=torch.float16)}, tmp_path / "c.pt")
    rc, out, err = run(capfd, tmp_path / "c.pt", tmp_path / "w.npz")
    assert rc == 0
    assert "bfloat16" in err and "float8_e4m3fn" in err and "float32" in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("convert_pt: note:")
    with np.load(tmp_path / "w.npz") as f:
        assert f["a"].dtype == np.float32 and f["b"].dtype == np.float32
        assert f["c"].dtype == np.float16  # NumPy holds float16: kept
        np.testing.assert_array_equal(f["a"], bf.float().numpy())  # exact
        np.testing.assert_array_equal(f["b"], [0.5, -2.0, 448.0])


def test_names_that_are_numpy_savez_keywords(tmp_path, capfd):
    """np.savez(dst, **arrays) fails for a tensor called 'file' (or sets allow_pickle)."""
    sd = {"file": torch.ones(2), "allow_pickle": torch.zeros(3), "w": torch.arange(4)}
    torch.save(sd, tmp_path / "c.pt")
    rc, _, err = run(capfd, tmp_path / "c.pt", tmp_path / "w.npz")
    assert rc == 0, err
    assert_same(tmp_path / "w.npz", sd)


# --------------------------------------------------------------------------------------------
# torch.compile and DDP prefixes
# --------------------------------------------------------------------------------------------


def test_prefixes_in_any_order_are_stripped(tmp_path, capfd):
    names = {
        "module._orig_mod.a": "a",
        "_orig_mod.module.b": "b",
        "module.module.c": "c",
        "_orig_mod._orig_mod.module._orig_mod.d": "d",
        "e.module.f": "e.module.f",  # only prefixes: an inner 'module.' is a real name
        "module_x": "module_x",
    }
    sd = {k: torch.full((2,), float(i)) for i, k in enumerate(names)}
    torch.save({"model": sd}, tmp_path / "c.pt")
    rc, _, err = run(capfd, tmp_path / "c.pt", tmp_path / "w.npz")
    assert rc == 0, err
    assert_same(tmp_path / "w.npz", {names[k]: v for k, v in sd.items()})


@pytest.mark.parametrize(
    "a, b",
    [
        ("module.x", "x"),
        ("_orig_mod.module.x", "module._orig_mod.x"),
        ("_orig_mod.x", "module.x"),
    ],
)
def test_names_colliding_after_stripping_are_refused(tmp_path, capfd, a, b):
    torch.save({"model": {a: torch.ones(2), b: torch.zeros(2)}}, tmp_path / "c.pt")
    assert_refused(run(capfd, tmp_path / "c.pt", tmp_path / "w.npz"), repr(a), repr(b), "'x'")
    assert not (tmp_path / "w.npz").exists()


def test_name_that_is_only_a_prefix(tmp_path, capfd):
    torch.save({"module.": torch.ones(2)}, tmp_path / "c.pt")
    assert_refused(run(capfd, tmp_path / "c.pt", tmp_path / "w.npz"), "'module.'", "no name")


# --------------------------------------------------------------------------------------------
# The destination
# --------------------------------------------------------------------------------------------


@pytest.fixture
def src(tmp_path):
    torch.save({"model": state(), "model_args": {"n_layer": 1}}, tmp_path / "c.pt")
    return tmp_path / "c.pt"


def test_destination_without_npz_suffix(tmp_path, capfd, src):
    assert_refused(run(capfd, src, tmp_path / "plain"), "'" + str(tmp_path / "plain"), ".npz")
    assert not (tmp_path / "plain").exists() and not (tmp_path / "plain.npz").exists()


def test_destination_folder(tmp_path, capfd, src):
    (tmp_path / "out.npz").mkdir()
    assert_refused(run(capfd, src, tmp_path / "out.npz"), "folder")
    assert_refused(run(capfd, src, tmp_path / "out.npz", "--force"), "folder")
    assert listing(tmp_path / "out.npz") == []


def test_destination_in_a_missing_folder(tmp_path):
    torch.save(state(), tmp_path / "c.pt")
    assert_refused(
        run_subprocess(tmp_path / "c.pt", tmp_path / "nodir" / "x.npz"), "nodir", "not exist"
    )
    assert not (tmp_path / "nodir").exists()


def test_existing_destination_needs_force(tmp_path, capfd, src):
    (tmp_path / "w.npz").write_bytes(b"precious")
    before = listing(tmp_path)
    assert_refused(run(capfd, src, tmp_path / "w.npz"), "exists", "--force")
    assert (tmp_path / "w.npz").read_bytes() == b"precious" and listing(tmp_path) == before
    rc, _, err = run(capfd, src, tmp_path / "w.npz", "--force")
    assert rc == 0, err
    assert_same(tmp_path / "w.npz", state())


def test_symlink_destination_is_never_written_through(tmp_path, src):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    (tmp_path / "w.npz").symlink_to(target)
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "nothing-here")
    for extra in ([], ["--force"]):
        assert_refused(run_subprocess(src, tmp_path / "w.npz", *extra), "symbolic link")
        assert_refused(run_subprocess(src, tmp_path / "dangling.npz", *extra), "symbolic link")
    assert target.read_text() == "keep me" and (tmp_path / "w.npz").is_symlink()
    assert not (tmp_path / "nothing-here").exists()


def test_json_twin_is_never_overwritten_silently(tmp_path, capfd, src):
    (tmp_path / "w.json").write_text("my notes")
    before = listing(tmp_path)
    assert_refused(run(capfd, src, tmp_path / "w.npz"), "w.json", "--force")
    assert (tmp_path / "w.json").read_text() == "my notes"
    assert listing(tmp_path) == before  # the .npz is not written either: all or nothing
    rc, _, err = run(capfd, src, tmp_path / "w.npz", "--force")
    assert rc == 0, err
    assert json.loads((tmp_path / "w.json").read_text()) == {"n_layer": 1}


def test_json_twin_symlink_is_refused(tmp_path, capfd, src):
    (tmp_path / "notes.txt").write_text("keep")
    (tmp_path / "w.json").symlink_to(tmp_path / "notes.txt")
    assert_refused(run(capfd, src, tmp_path / "w.npz", "--force"), "w.json", "symbolic link")
    assert (tmp_path / "notes.txt").read_text() == "keep" and not (tmp_path / "w.npz").exists()


def test_model_args_that_are_not_json(tmp_path, capfd):
    """A torch.dtype or a non-finite float is written as a string and said on stderr."""
    args = {"dtype": torch.float16, "eps": float("nan"), "sizes": (1, 2), "n": 3}
    torch.save({"model": state(), "model_args": args}, tmp_path / "c.pt")
    rc, _, err = run(capfd, tmp_path / "c.pt", tmp_path / "w.npz")
    assert rc == 0, err
    assert "['dtype']" in err and "['eps']" in err and "strings" in err
    data = json.loads((tmp_path / "w.json").read_text())
    assert data == {"dtype": "torch.float16", "eps": "nan", "sizes": [1, 2], "n": 3}


def test_outputs_keep_the_umask_mode(tmp_path, src):
    rc, _, err = run_subprocess(src, tmp_path / "w.npz", umask=0o027)
    assert rc == 0, err
    for name in ("w.npz", "w.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    os.chmod(tmp_path / "w.npz", 0o604)  # a replaced file keeps its mode
    rc, _, err = run_subprocess(src, tmp_path / "w.npz", "--force", umask=0o077)
    assert rc == 0, err
    assert stat.S_IMODE((tmp_path / "w.npz").stat().st_mode) == 0o604
    assert not [n for n in listing(tmp_path) if n.endswith(".tmp")]


def test_write_failure_leaves_nothing_behind(tmp_path, capfd, src, monkeypatch):
    """A failure while writing (here: the disk is full) leaves no file and no temporary."""
    out = tmp_path / "out"
    out.mkdir()

    def full(f, arrays):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_pt, "_write_npz", full)
    assert_refused(run(capfd, src, out / "w.npz"), "No space left", "nothing was written")
    assert listing(out) == []
