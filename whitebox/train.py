"""Train a small ToST (or its softmax-attention baseline) on data that ships with Python.

    python -m whitebox.train                      # ToST on scikit-learn's 8 x 8 digits
    python -m whitebox.train --attention softmax  # the ViT baseline, same code, same budget
    python -m whitebox.train --task text          # causal char-level ToST on CPython's docs
    python -m whitebox.train --task subspaces     # synthetic subspaces: does Pi find the groups?

Tasks (nothing is downloaded):

* ``digits``: the 1,797 handwritten 8 x 8 digits in ``sklearn.datasets.load_digits``, a fixed
  seeded stratified train/test split, 2 x 2 patches as tokens.
* ``text``: the documentation text in ``pydoc_data.topics`` (ships with every CPython), or any
  UTF-8 file given with ``--text-file``; split by position into train and validation; the
  validation loss is reported in nats per character, and a 200-character sample is printed.
* ``subspaces``: sets of tokens from the mixture of random subspaces in ``whitebox.data``;
  each token is classified into its group, and after training we report how well every
  layer's membership Pi (argmax over heads) recovers the true groups.

stdout holds short per-evaluation lines and, last, one JSON line with the result; the full
configuration (at the start) and the progress bar go to stderr. The run folder (``--out``;
default ``runs/TASK-ATTENTION``, or the checkpoint's folder with ``--resume``) receives
``config.json`` (the configuration: ``--config config.json`` repeats the run), ``model.npz``
(checkpoint, written atomically after every evaluation), ``metrics.jsonl`` and ``curves.png``.
Same seed, same machine: same metrics.

A trained model is never replaced silently: a new run into a folder that holds a
``model.npz`` is refused (continue it with ``--resume``, choose another ``--out``, or pass
``--overwrite``). Ctrl-C ends a run with status 130 and one line naming the last checkpoint;
written files get the mode of the file they replace, or 0666 & ~umask when new.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import module as policy
from . import nn, optim
from .backend import device_module, to_numpy
from .checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from .data import (  # re-exported: notebooks import them from here
    HOLDOUT_SHARE,
    CharCodec,
    digits_normalization,
    load_digits_split,
    load_text,
    random_orthonormal_bases,
    random_shift,
)
from .models import build

__all__ = ["CharCodec", "Config", "load_digits_split", "load_text", "make_config",
           "random_shift", "train"]  # fmt: skip

TASKS = ("digits", "text", "subspaces")

#: Defaults per task: the small models ``make train`` trains. Peak lr and weight decay are the
#: ToST setting that ``make results`` chose on a validation split (``results/tuning.json``).
DEFAULTS = {
    "digits": dict(
        depth=2, dim=64, heads=4, epochs=100, steps=None, batch_size=64, lr=8e-3,
        weight_decay=0.05, warmup=100, label_smoothing=0.1, clip=1.0, patch_size=2,
        eval_every=None,
    ),
    "text": dict(
        depth=2, dim=64, heads=4, epochs=None, steps=1500, batch_size=32, lr=8e-2,
        weight_decay=0.05, warmup=100, label_smoothing=0.0, clip=1.0, block_size=64,
        eval_every=250,
    ),
    "subspaces": dict(
        depth=2, dim=16, heads=4, epochs=None, steps=600, batch_size=32, lr=3e-3,
        weight_decay=0.0, warmup=50, label_smoothing=0.0, clip=1.0, eval_every=100,
    ),
}  # fmt: skip


@dataclass
class Config:
    """Everything that determines a run (stored in every checkpoint)."""

    task: str = "digits"
    attention: str = "tssa"
    model: str = "tost"  # digits: "tost" (simplified ToSTClassifier) or "tost-cab" (ToSTCAB)
    depth: int = 2
    dim: int = 64
    heads: int = 4
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    label_smoothing: float = 0.0
    clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    out: str | None = None
    patch_size: int = 2
    block_size: int = 64
    eval_every: int | None = None
    text_file: str | None = None
    threads: int = 1
    holdout: bool = False


#: the range of every numeric setting: (type, lowest, lowest allowed?, highest or None)
RANGES = {
    "depth": (int, 1, True, None), "dim": (int, 1, True, None), "heads": (int, 1, True, None),
    "epochs": (int, 1, True, None), "steps": (int, 1, True, None),
    "batch_size": (int, 1, True, None), "block_size": (int, 1, True, None),
    "eval_every": (int, 1, True, None), "threads": (int, 1, True, None),
    "patch_size": (int, 1, True, None), "warmup": (int, 0, True, None),
    "seed": (int, 0, True, None), "lr": (float, 0.0, False, None),
    "clip": (float, 0.0, False, None), "weight_decay": (float, 0.0, True, None),
    "stop_after": (int, 1, True, None),
    "label_smoothing": (float, 0.0, True, 1.0),
}  # fmt: skip


def check_value(name: str, value):
    """``value`` of the setting ``name`` checked against :data:`RANGES`; returns it (a ValueError
    naming the flag otherwise). ``None`` (the task's default) passes."""
    if value is None or name not in RANGES:
        return value
    kind, lo, lo_ok, hi = RANGES[name]
    flag = "--" + name.replace("_", "-")
    what = f"{'an integer' if kind is int else 'a finite number'} {'>=' if lo_ok else '>'} {lo}"
    what += f" and < {hi}" if hi is not None else ""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (kind is float or float(value).is_integer()) and math.isfinite(value)
    ok = ok and (value >= lo if lo_ok else value > lo) and (hi is None or value < hi)
    if not ok:
        raise ValueError(f"{flag}: expected {what}, got {value!r}")
    return kind(value)


def _type_name(kind) -> str:
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}[kind]


def check_types(cfg: Config) -> None:
    """Every setting of ``cfg`` of its declared type (a ValueError naming the flag otherwise):
    ``holdout`` a bool (the string "no" is not false), paths strings, numbers numbers."""
    for name, field in Config.__dataclass_fields__.items():
        value = getattr(cfg, name)
        kinds = field.type.replace(" ", "").split("|")
        if value is None and "None" in kinds:
            continue
        kind = {"str": str, "int": int, "float": float, "bool": bool}[kinds[0]]
        ok = type(value) is kind or (kind is float and type(value) is int)
        ok = ok or (kind is int and type(value) is float and float(value).is_integer())
        if not ok:
            what = _type_name(kind) + (" or null" if "None" in kinds else "")
            raise ValueError(f"--{name.replace('_', '-')}: expected {what}, got {value!r:.60}")


def check_config(cfg: Config) -> Config:
    """Every setting of ``cfg`` of its type and in its range (a ValueError naming the flag
    otherwise)."""
    check_types(cfg)
    if cfg.out is not None and not cfg.out.strip():
        raise ValueError(f"--out: expected a folder name, got {cfg.out!r}")
    if cfg.text_file is not None and not cfg.text_file.strip():
        raise ValueError(f"--text-file: expected a file name, got {cfg.text_file!r}")
    if cfg.task not in TASKS:
        raise ValueError(f"--task: expected one of {TASKS}, got {cfg.task!r}")
    if cfg.attention not in ("tssa", "softmax"):
        raise ValueError(f"--attention: expected 'tssa' or 'softmax', got {cfg.attention!r}")
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {cfg.dtype!r}")
    if cfg.device not in ("cpu", "gpu"):
        raise ValueError(f"--device: expected 'cpu' or 'gpu', got {cfg.device!r}")
    for name in RANGES.keys() & Config.__dataclass_fields__.keys():
        setattr(cfg, name, check_value(name, getattr(cfg, name)))  # 64.0 from a JSON -> 64
    if cfg.dim % cfg.heads:
        raise ValueError(f"--dim ({cfg.dim}) must be divisible by --heads ({cfg.heads})")
    return cfg


# --------------------------------------------------------------------------- tasks


class DigitsTask:
    """Image classification on the digits; one evaluation per epoch (on the test split, or with
    ``holdout`` on a validation split carved out of the training images)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.split = "val" if cfg.holdout else "test"
        self.metric = f"{self.split}_accuracy"
        # raw, 0..16; with holdout the second pair is the validation split
        self.Xtr, self.ytr, self.Xte, self.yte = load_digits_split(holdout=cfg.holdout)
        self.norm = digits_normalization(self.Xtr)  # the model applies it (in its config)
        self.steps_per_epoch = math.ceil(len(self.Xtr) / cfg.batch_size)
        self.total_steps = cfg.steps or (cfg.epochs or 30) * self.steps_per_epoch
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.perm = None

    def model_config(self):
        c = self.cfg
        if c.model == "tost-cab":  # the public vision layout, shrunk: a one-stage stem at p=2
            if c.attention != "tssa":
                raise ValueError("--model tost-cab: only --attention tssa")
            return dict(
                model="tost_cab", image_size=8, patch_size=c.patch_size, in_chans=1,
                num_classes=10, dim=c.dim, depth=c.depth, num_heads=c.heads, eta=1.0,
                dtype=c.dtype, seed=c.seed, input_norm=self.norm,
            )  # fmt: skip
        return dict(
            model="classifier", image_size=8, patch_size=c.patch_size, in_chans=1,
            num_classes=10, dim=c.dim, depth=c.depth, num_heads=c.heads,
            attention=c.attention, dtype=c.dtype, seed=c.seed, input_norm=self.norm,
        )  # fmt: skip

    def batch(self, step, rng):
        i = step % self.steps_per_epoch
        if i == 0 or self.perm is None:
            self.perm = rng.permutation(len(self.Xtr))
        idx = self.perm[i * self.cfg.batch_size : (i + 1) * self.cfg.batch_size]
        return random_shift(self.Xtr[idx], rng), self.ytr[idx]

    def evaluate(self, model, xp):
        if hasattr(model, "eval"):  # BatchNorm: running statistics while evaluating
            model.eval()
            try:
                return self._evaluate(model, xp)
            finally:
                model.train()
        return self._evaluate(model, xp)

    def _evaluate(self, model, xp):
        loss, correct = 0.0, 0
        for s in range(0, len(self.Xte), 256):
            logits = model.forward(xp.asarray(self.Xte[s : s + 256]))
            y = self.yte[s : s + 256]
            l, _ = nn.cross_entropy(logits, xp.asarray(y))
            loss += float(l) * len(y)
            correct += int((to_numpy(logits).argmax(axis=1) == y).sum())
        n = len(self.Xte)
        return {f"{self.split}_loss": loss / n, f"{self.split}_accuracy": correct / n}

    def finish(self, model, xp):
        return {}


def _text_splits(n: int, holdout: bool) -> tuple[int, int]:
    """Lengths of (train, validation) of a text of n characters (see :class:`TextTask`)."""
    split = int(0.9 * n)
    if holdout:
        cut = int((0.9 - HOLDOUT_SHARE * 0.5) * n)
        return cut, split - cut
    return split, n - split


def min_text_length(block_size: int, holdout: bool = False) -> int:
    """The shortest text a text run with this block size can use: its validation part holds
    one window of block_size + 1 characters and its training part more (random windows)."""
    T = block_size

    def fits(n):
        train, val = _text_splits(n, holdout)
        return val >= T + 1 and train >= T + 2

    n = max(1, 4 * (T + 1))
    while not fits(n):  # the splits are within a few characters of 90/10 (80/10): few steps
        n = max(n + 1, int(n * (T + 1) / max(_text_splits(n, holdout)[1], 1)) - 2)
    while n > 1 and fits(n - 1):
        n -= 1
    return n


class TextTask:
    """Character-level causal language modelling; evaluation every ``eval_every`` steps.

    The text is split by position: the first 90% for training, the last 10% held out (the
    reported ``val_loss``). With ``holdout`` the model trains on the first 80% only and is
    evaluated on the 80-90% stretch, so that tuning never sees the last 10%."""

    metric = "val_loss"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        text = load_text(cfg.text_file)
        need = min_text_length(cfg.block_size, cfg.holdout)
        if len(text) < need:
            raise ValueError(
                f"--text-file: the text has {len(text)} characters; need at least {need} for "
                f"--block-size {cfg.block_size} (one window of {cfg.block_size + 1} characters "
                "in the validation part, the last tenth, and more in the training part)"
            )
        self.codec = CharCodec(sorted(set(text)))
        self.text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.prompt = "\n" if "\n" in self.codec.index else text[0]  # start samples at a line
        data = self.codec.encode(text)
        split = int(0.9 * len(data))
        self.train, self.val = data[:split], data[split:]
        if cfg.holdout:
            cut = int((0.9 - HOLDOUT_SHARE * 0.5) * len(data))  # 80%: a validation tenth
            self.train, self.val = data[:cut], data[cut:split]
        self.total_steps = cfg.steps or 1500
        self.eval_every = cfg.eval_every or 250
        # a fixed set of validation windows, evenly spaced: the same estimate in every run
        T = cfg.block_size
        n_windows = min(64, max(1, (len(self.val) - T - 1) // T))
        self.val_starts = np.linspace(0, len(self.val) - T - 1, n_windows).astype(np.int64)

    def model_config(self):
        c = self.cfg
        return dict(
            model="language_model", vocab_size=len(self.codec.chars), block_size=c.block_size,
            n_layer=c.depth, n_head=c.heads, n_embd=c.dim, attention=c.attention,
            dtype=c.dtype, seed=c.seed, vocab="".join(self.codec.chars),
        )  # fmt: skip

    def _windows(self, data, starts):
        T = self.cfg.block_size
        offs = starts[:, None] + np.arange(T + 1)[None, :]  # (B, T + 1)
        chunk = data[offs]
        return chunk[:, :-1], chunk[:, 1:]

    def batch(self, step, rng):
        T = self.cfg.block_size
        starts = rng.integers(0, len(self.train) - T - 1, size=self.cfg.batch_size)
        return self._windows(self.train, starts)

    def evaluate(self, model, xp):
        total, count = 0.0, 0
        for s in range(0, len(self.val_starts), 16):
            x, y = self._windows(self.val, self.val_starts[s : s + 16])
            l, _ = nn.cross_entropy(model.forward(xp.asarray(x)), xp.asarray(y))
            total += float(l) * y.size
            count += y.size
        return {"val_loss": total / count}

    def finish(self, model, xp):
        prompt = self.codec.encode(self.prompt)[None, :]
        ids = model.generate(prompt, 200, temperature=0.8, top_k=None, seed=self.cfg.seed)
        return {"sample": self.codec.decode(ids[0, 1:])}


class SubspaceTask:
    """Per-token group classification of sets of tokens drawn from K random subspaces."""

    metric = "test_accuracy"
    n_tokens, d, p = 64, 16, 2

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.K = cfg.heads  # one head per group: Pi over heads can then find the groups
        self.U = random_orthonormal_bases(self.K, self.d, self.p, np.random.default_rng(1234))
        self.total_steps = cfg.steps or 600
        self.eval_every = cfg.eval_every or 100
        self.Xte, self.yte = self.sample(np.random.default_rng(4321), 64)

    def sample(self, rng, B, noise=0.1):
        labels = rng.integers(0, self.K, size=(B, self.n_tokens))  # (B, n)
        coeffs = rng.standard_normal((B, self.n_tokens, self.p)) / np.sqrt(self.p)
        x = np.einsum("bndp,bnp->bnd", self.U[labels], coeffs)  # (B, n, d)
        x += noise * rng.standard_normal(x.shape) / np.sqrt(self.d)
        return x.astype(np.float32), labels

    def model_config(self):
        c = self.cfg
        return dict(
            model="token_classifier", in_dim=self.d, num_classes=self.K, dim=c.dim,
            depth=c.depth, num_heads=c.heads, attention=c.attention, dtype=c.dtype,
            seed=c.seed,
        )  # fmt: skip

    def batch(self, step, rng):
        return self.sample(rng, self.cfg.batch_size)

    def evaluate(self, model, xp):
        logits = model.forward(xp.asarray(self.Xte))
        loss, _ = nn.cross_entropy(logits, xp.asarray(self.yte))
        acc = float((to_numpy(logits).argmax(axis=-1) == self.yte).mean())
        return {"test_loss": float(loss), "test_accuracy": acc}

    def finish(self, model, xp):
        """How well each layer's Pi (argmax over heads) recovers the true groups (ARI, NMI)."""
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        model.forward(xp.asarray(self.Xte))
        truth = self.yte.reshape(-1)
        layers = []
        for l, pi in enumerate(model.intermediates["pi"]):
            if pi is None:  # softmax attention has no membership
                continue
            groups = to_numpy(pi).argmax(axis=1).reshape(-1)  # (B, H, n) -> head of each token
            layers.append(
                {
                    "layer": l,
                    "ari": round(float(adjusted_rand_score(truth, groups)), 4),
                    "nmi": round(float(normalized_mutual_info_score(truth, groups)), 4),
                }
            )
        return {"membership_recovery": layers}


TASK_CLASSES = {"digits": DigitsTask, "text": TextTask, "subspaces": SubspaceTask}


def _metric_key(cfg: Config) -> str:
    """The key of a run's headline metric in its history rows."""
    if cfg.task == "digits":
        return "val_accuracy" if cfg.holdout else "test_accuracy"
    return TASK_CLASSES[cfg.task].metric


# --------------------------------------------------------------------------- the loop


def _rng_state(rng) -> dict:
    return rng.bit_generator.state


def _set_rng_state(rng, state) -> None:
    rng.bit_generator.state = state


def plot_curves(history, path, title=""):
    """Loss (train and evaluation), the task's accuracy (if any) and the learning-rate schedule
    against the step, to a PNG (written atomically)."""
    # a bare Figure (no pyplot): works headless and leaves a notebook's backend alone
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    acc = next((k for k in ("test_accuracy", "val_accuracy") if k in history[0]), None)
    has_acc = acc is not None
    fig = Figure(figsize=(13 if has_acc else 9, 3.4))
    axes = fig.subplots(1, 3 if has_acc else 2)
    axes[0].plot(steps, [h["train_loss"] for h in history], label="train")
    for key in ("test_loss", "val_loss"):
        if key in history[0]:
            axes[0].plot(steps, [h[key] for h in history], label=key.split("_")[0])
    axes[0].set_ylabel("cross-entropy (nats)")
    axes[0].legend()
    axes[0].set_title("loss")
    if has_acc:
        axes[1].plot(steps, [h[acc] for h in history], color="C2")
        axes[1].set_ylabel(acc.replace("_", " "))
        axes[1].set_title("accuracy")
    axes[-1].plot(steps, [h["lr"] for h in history], color="C3", marker=".")
    axes[-1].set_ylabel("learning rate")
    axes[-1].set_title("schedule (lr at each evaluation)")
    for ax in axes:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def make_config(**overrides) -> Config:
    """A :class:`Config` with the task's tuned defaults, then ``overrides`` (checked)."""
    task = overrides.get("task") or "digits"
    if task not in TASKS:
        raise ValueError(f"--task: expected one of {TASKS}, got {task!r}")
    values = dict(DEFAULTS[task], task=task)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = set(Config.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
    return check_config(Config(**values))


def train(cfg: Config, resume: str | None = None, progress: bool = True, stop_after=None,
          explicit=None, echo_config=None, overwrite=True):  # fmt: skip
    """Train according to ``cfg`` with ``cfg.threads`` BLAS threads (see :func:`_train`)."""
    from threadpoolctl import threadpool_limits

    # These models are small: their matrix products are too thin to gain from several BLAS
    # threads, and a multi-threaded BLAS stalls badly when another process holds a core
    # (measured: 13 ms per digits step on one thread, 105 ms on two beside one busy process).
    with threadpool_limits(limits=cfg.threads, user_api="blas"):
        return _train(cfg, resume, progress, stop_after, explicit, echo_config, overwrite)


#: settings a resumed run may change: where and how it runs, not what it computes
RESUME_FREE = {"device", "threads", "out", "text_file"}


def _stored_state(meta, resume) -> Config:
    """The training state in a checkpoint's metadata, checked (CheckpointError otherwise)."""
    where = f"{str(resume)!r}"
    stored = meta.get("train_config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{where} holds no training state (not from whitebox.train)")
    try:
        cfg = check_config(Config(**stored))
        assert all(isinstance(getattr(cfg, k), str) for k in ("task", "attention", "dtype"))
        assert isinstance(cfg.text_file, str | None) and isinstance(cfg.out, str | None)
        step, history = meta["step"], meta["history"]
        assert isinstance(step, int) and not isinstance(step, bool) and step >= 1
        assert isinstance(history, list) and history and all(isinstance(h, dict) for h in history)
        assert all(isinstance(h.get("step"), int) for h in history) and history[-1]["step"] == step
        assert all(
            isinstance(h.get(k), int | float) and not isinstance(h.get(k), bool)
            for h in history
            for k in ("lr", "train_loss", _metric_key(cfg))
        )
        state = meta["rng_state"]
        assert isinstance(state, dict) and state.get("bit_generator") == "PCG64"
        np.random.default_rng().bit_generator.state = state
        perm = meta.get("perm")
        assert perm is None or (isinstance(perm, list) and all(type(i) is int for i in perm))
        assert (
            isinstance(meta.get("total_steps", step), int) and meta.get("total_steps", step) >= step
        )
    except (TypeError, ValueError, KeyError, AssertionError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"{where}: malformed training state in the metadata ({e})") from None
    return cfg


def _resume_config(meta, resume, cfg: Config, explicit):
    """The configuration to continue a checkpoint with: the stored one, with where/how it runs
    from ``cfg`` and the output beside the checkpoint unless ``cfg.out``. Flags in ``explicit``
    (the names the user gave) that contradict it are refused, except ``steps``/``epochs``, which
    train longer. Returns (config, "longer" or None)."""
    stored = _stored_state(meta, resume)
    new = asdict(stored)
    new.update(device=cfg.device, threads=cfg.threads, text_file=cfg.text_file)
    new["out"] = cfg.out or str(Path(resume).parent)  # never where the checkpoint says
    conflicts, longer = [], None
    for k in sorted(set(explicit or ()) - RESUME_FREE):
        v, old = getattr(cfg, k), getattr(stored, k)
        if v == old:
            continue
        if k in ("steps", "epochs"):
            longer = k
            new[k] = v
            if k == "epochs" and stored.steps is not None and "steps" not in (explicit or ()):
                new["steps"] = None
            continue
        conflicts.append(f"--{k.replace('_', '-')} {v} (the checkpoint's run has {old})")
    if conflicts:
        raise ValueError(
            "--resume: these flags contradict the checkpoint's configuration: "
            + "; ".join(conflicts)
            + ". Drop them to continue the stored run, or start a new one."
        )
    if stored.task == "text" and stored.text_file is not None and cfg.text_file is None:
        raise ValueError(
            "--resume: this text run was trained on a file of your own; name it again with "
            "--text-file (the path stored in the checkpoint is never opened)"
        )
    return Config(**new), longer


def _lock(out: Path):
    """Hold an exclusive lock on ``out`` for the run (released when the process ends, even
    when it is killed); a second training into the same folder is refused."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    try:
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:  # e.g. a planted symlink named .lock
        raise RuntimeError(f"--out: cannot lock {str(out / '.lock')!r} ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RuntimeError(
            f"--out: another training is writing into {str(out)!r}; wait for it to finish or "
            "choose another --out"
        ) from None
    return fd


def _unlock(fd) -> None:
    if fd is not None:
        os.close(fd)


def _print_config(cfg: Config, out: Path) -> None:
    print("config:", file=sys.stderr)
    for k, v in asdict(cfg).items():
        print(f"  {k} = {v!r}", file=sys.stderr)
    print(f"  (written to {str(out / 'config.json')!r})", file=sys.stderr)


def _train(cfg: Config, resume: str | None = None, progress: bool = True, stop_after=None,
           explicit=None, echo_config=None, overwrite=True):  # fmt: skip
    """Train according to ``cfg``; returns the result dict (also printed by ``main``).

    ``resume``: a checkpoint to continue from: its stored configuration wins, apart from
    ``device``, ``threads``, ``text_file`` and ``out`` (default: the checkpoint's folder);
    ``explicit``: the settings the user gave (``main`` passes its flags): contradicting the
    checkpoint they are refused, except ``steps``/``epochs``, which train longer.
    ``progress``: a progress bar on stderr; ``echo_config``: the configuration on stderr at
    the start (default: as ``progress``; the command line always does). ``stop_after``: stop after that
    many evaluations in this call (simulates an interruption; the checkpoint written then
    resumes exactly). ``overwrite=False`` (the command line's default, ``--overwrite`` turns
    it on) refuses an output folder that already holds another trained ``model.npz``.
    A ``KeyboardInterrupt`` leaves with ``checkpoint`` and ``step`` attributes: the last
    checkpoint written (None before the first)."""
    start_time = time.perf_counter()
    ckpt, longer = None, None
    check_config(cfg)
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg, longer = _resume_config(ckpt["meta"], resume, cfg, explicit)
    xp = device_module(cfg.device)
    if cfg.model not in ("tost", "tost-cab") or (cfg.model == "tost-cab" and cfg.task != "digits"):
        raise ValueError(f"--model {cfg.model}: expected tost, or tost-cab with --task digits")
    task = TASK_CLASSES[cfg.task](cfg)
    _check_memory(cfg, task.model_config())
    model = build(task.model_config())
    if cfg.device != "cpu":
        model.to(cfg.device)
    opt = optim.AdamW(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 1)  # data order and augmentation
    history, step = [], 0
    total = task.total_steps
    if ckpt is not None:
        meta = ckpt["meta"]
        if cfg.task == "text" and meta.get("text_sha256") != task.text_sha256:
            raise ValueError(
                "--text-file: this is not the text the checkpoint was trained on (its SHA-256 "
                "differs); resume with the same text"
            )
        _check_optim_state(ckpt["optim"], meta["step"], resume)
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optim"])
        except ValueError as e:
            raise CheckpointError(f"{str(resume)!r}: state does not fit its config ({e})") from None
        _set_rng_state(rng, meta["rng_state"])
        history, step = meta["history"], meta["step"]
        if hasattr(task, "perm"):
            task.perm = _stored_perm(meta.get("perm"), len(task.Xtr), resume)
        elif meta.get("perm") is not None:
            raise CheckpointError(f"{str(resume)!r}: a shuffle order 'perm' for a {cfg.task} run")
        before = meta.get("total_steps", step)
        if longer and total <= step:
            raise ValueError(
                f"--{longer}: the checkpoint is at step {step}; to train longer ask for more "
                f"than that (this asks for {total} steps in all)"
            )
        if longer and progress:
            print(f"resuming at step {step}: training longer, to {total} steps in all (was "
                  f"{before}); the learning-rate schedule follows the new total", file=sys.stderr)  # fmt: skip
    tag = "-cab" if cfg.model == "tost-cab" else ""
    out = Path(cfg.out or f"runs/{cfg.task}-{cfg.attention}{tag}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out: cannot create {str(out)!r} ({e.strerror})") from None
    lock = _lock(out)
    try:
        if not overwrite:
            _refuse_replacing(out / "model.npz", resume)
        if progress if echo_config is None else echo_config:
            _print_config(cfg, out)
        atomic_write(
            out / "config.json", lambda f: f.write(json.dumps(asdict(cfg), indent=1).encode())
        )
        saved = {"checkpoint": str(resume) if resume is not None else None, "step": step}
        try:
            return _loop(cfg, task, model, opt, rng, xp, history, step, total, out, progress,
                         stop_after, start_time, saved)  # fmt: skip
        except KeyboardInterrupt as e:
            _settle_interrupted_save(saved, out / "model.npz")
            e.checkpoint, e.step = saved["checkpoint"], saved["step"]
            raise
    finally:
        _unlock(lock)


def _settle_interrupted_save(saved, path: Path) -> None:
    """After Ctrl-C during a save: the file on disk says whether that save finished."""
    pending = saved.pop("pending", None)
    if pending is None:
        return
    try:
        if load_checkpoint(path)["meta"].get("step") == pending:
            saved.update(checkpoint=str(path), step=pending)
    except (CheckpointError, OSError):
        pass


def _refuse_replacing(path: Path, resume) -> None:
    """A ValueError when ``path`` holds a trained model (a regular file: a symlink there is
    replaced, its target kept, as every output) and this run is not one resumed from a
    checkpoint in that folder."""
    if path.is_symlink() or not path.is_file():
        return
    if resume is not None:  # continuing a run in its own folder writes on its checkpoints
        try:
            if path.parent.samefile(Path(resume).parent):
                return
        except OSError:
            pass
    raise ValueError(
        f"--out: {str(path.parent)!r} already holds a trained model ({path.name}); continue it "
        f"with --resume {str(path)!r}, choose another --out, or pass --overwrite to replace it"
    )


def _memory_limit() -> int:
    """The most memory (bytes) a run may ask for: the machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def _check_memory(cfg: Config, model_config) -> None:
    """A ValueError naming the sizes when the run would need more memory than the machine has
    (so that ``--dim 1000000000`` is refused at once, not by the allocator): parameters,
    gradients and AdamW's two moments, plus a batch of activations, estimated from the config
    before anything is built."""
    from .models import _activations, expected_weights

    itemsize = np.dtype(cfg.dtype).itemsize
    batch = cfg.batch_size if cfg.task != "digits" else min(cfg.batch_size, 2048)  # 1,347 images
    need = (4 * expected_weights(model_config)
            + 3 * batch * _activations(model_config)) * itemsize  # fmt: skip
    limit = _memory_limit()
    if need > limit:
        raise ValueError(
            f"--dim/--depth/--batch-size/--block-size: this configuration needs about "
            f"{need / 2**30:.3g} GiB, more than this machine's {limit / 2**30:.3g} GiB"
        )


def _stored_perm(perm, n, resume):
    """The stored shuffle order of the current epoch: None or a permutation of range(n)."""
    if perm is None:
        return None
    arr = np.array(perm, dtype=np.int64)
    if arr.shape != (n,) or not np.array_equal(np.sort(arr), np.arange(n)):
        raise CheckpointError(
            f"{str(resume)!r}: the stored shuffle order 'perm' is not a permutation of the "
            f"{n} training images"
        )
    return arr


def _check_optim_state(state, step, resume) -> None:
    """The stored AdamW state is what training wrote: its step is the run's step (a crafted
    -1e12 would overflow b1**t), its moments finite, the second one non-negative."""
    where = repr(str(resume))
    t = state.get("step")
    if t is None or t.shape != () or t.dtype.kind not in "iu" or int(t) != step:
        raise CheckpointError(
            f"{where}: the optimizer's step {t if t is None else t.tolist()!r} is not the "
            f"run's step {step}"
        )
    for k, v in state.items():
        if k == "step":
            continue
        if v.dtype.kind != "f" or not np.isfinite(v).all():
            raise CheckpointError(f"{where}: optimizer state {k!r} is not finite floating point")
        if k.startswith("exp_avg_sq.") and (v < 0).any():
            raise CheckpointError(f"{where}: optimizer state {k!r} is negative")


def _loop(cfg, task, model, opt, rng, xp, history, step, total, out, progress, stop_after,
          start_time, saved=None):  # fmt: skip
    """The training loop; ``saved`` (a dict) records the last checkpoint written and its step."""
    ckpt_path = out / "model.npz"
    saved = {} if saved is None else saved
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, disable=not progress, file=sys.stderr, leave=False)
    try:
        return _steps(cfg, task, model, opt, rng, xp, history, step, total, out, stop_after,
                      start_time, saved, ckpt_path, bar)  # fmt: skip
    finally:
        bar.close()


def _steps(cfg, task, model, opt, rng, xp, history, step, total, out, stop_after, start_time,
           saved, ckpt_path, bar):  # fmt: skip
    running, n_running, evals = 0.0, 0, 0
    while step < total:
        x, y = task.batch(step, rng)
        lr = optim.cosine_lr(step, total, cfg.warmup, cfg.lr, cfg.lr * 0.01)
        loss = _train_step(model, opt, x, y, xp, cfg, lr, step)
        step += 1
        running += loss
        n_running += 1
        bar.update(1)
        if step % task.eval_every == 0 or step == total:
            row = {"step": step, "lr": lr, "train_loss": running / n_running}
            if cfg.task == "digits":
                row["epoch"] = step // task.steps_per_epoch
            row.update(task.evaluate(model, xp))
            history.append(row)
            running, n_running = 0.0, 0
            bar.write(_format_row(row), file=sys.stdout)
            meta = {
                "train_config": asdict(cfg),
                "step": step,
                "total_steps": total,
                "history": history,
                "rng_state": _rng_state(rng),
                "perm": None if getattr(task, "perm", None) is None else task.perm.tolist(),
            }
            if cfg.task == "text":
                meta["text_sha256"] = task.text_sha256
            saved["pending"] = step  # Ctrl-C may come after the file is in place, before...
            save_checkpoint(ckpt_path, model, opt, meta)
            saved.update(checkpoint=str(ckpt_path), step=step, pending=None)  # ...this line
            _write_metrics(out / "metrics.jsonl", history)
            evals += 1
            if stop_after is not None and evals >= stop_after and step < total:
                bar.close()
                return {"interrupted_at_step": step, "checkpoint": str(ckpt_path)}
    bar.close()
    plot_curves(history, out / "curves.png", f"{cfg.task}: {cfg.attention} attention")
    result = {"task": cfg.task, "attention": cfg.attention}
    last = history[-1]
    if task.metric.endswith("accuracy"):
        result[task.metric] = round(last[task.metric], 4)
    else:
        result["val_loss_nats_per_char"] = round(last["val_loss"], 4)
    if cfg.holdout:
        result["holdout"] = True
    result["params"] = model.num_parameters()
    result["steps"] = step
    result.update(task.finish(model, xp))
    result["seconds"] = round(time.perf_counter() - start_time, 1)
    result["checkpoint"] = str(ckpt_path)
    return result


def _train_step(model, opt, x, y, xp, cfg, lr, step) -> float:
    """One optimizer step on the batch (x, y) (NumPy arrays); returns the loss.

    On a GPU it waits for the device once: the loss and the gradient norm come back together
    (the running loss, and the check that training has not diverged). The layers' own input
    checks (``whitebox.module.CHECK_INPUTS``) would each wait too; the batch is checked here, on
    the host, before it is uploaded, and a non-finite loss or gradient stops the run with an
    error."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"step {step}: the input batch contains NaN or Inf")
    check, policy.CHECK_INPUTS = policy.CHECK_INPUTS, False
    try:
        logits = model.forward(xp.asarray(x))
        n_classes = logits.shape[-1]
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"step {step}: targets outside [0, {n_classes})")
        loss, dlogits = nn.cross_entropy(logits, xp.asarray(y), cfg.label_smoothing, as_array=True)
        model.backward(dlogits)
        norm = optim.clip_grad_norm(model, cfg.clip)
        loss_host, norm_host = to_numpy(xp.stack([loss.astype(np.float64), norm]))  # one wait
        if not (math.isfinite(loss_host) and math.isfinite(norm_host)):
            raise RuntimeError(
                f"training diverged at step {step}: loss {loss_host}, gradient norm {norm_host}"
                " (try a lower --lr)"
            )
        opt.step(lr)
    finally:
        policy.CHECK_INPUTS = check
    return float(loss_host)


def _format_row(row) -> str:
    parts = [f"step {row['step']:5d}"]
    if "epoch" in row:
        parts.insert(0, f"epoch {row['epoch']:3d}")
    parts.append(f"train loss {row['train_loss']:.4f}")
    for key in ("test_loss", "val_loss", "test_accuracy", "val_accuracy"):
        if key in row:
            parts.append(f"{key.replace('_', ' ')} {row[key]:.4f}")
    return "  ".join(parts)


def _write_metrics(path: Path, history) -> None:
    text = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(path, lambda f: f.write(text.encode()))


# --------------------------------------------------------------------------- command line


def _flag_type(name):
    """An argparse type that parses the flag and checks it against :data:`RANGES`."""
    kind = RANGES[name][0]

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        try:
            return check_value(name, value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1]) from None

    parse.__name__ = kind.__name__
    return parse


def _defaults_help(key) -> str:
    vals = {t: DEFAULTS[t].get(key) for t in TASKS if key in DEFAULTS[t]}
    if len(set(map(repr, vals.values()))) == 1:
        return f"default: {next(iter(vals.values()))}"
    shown = {t: ("from --epochs" if v is None and key == "steps" else v) for t, v in vals.items()}
    shown = {t: v for t, v in shown.items() if v is not None}
    return "defaults: " + ", ".join(f"{t} {v}" for t, v in shown.items())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m whitebox.train",
        description="Train a small Token Statistics Transformer (or its softmax baseline) with "
        "NumPy/CuPy and manual backprop. Defaults are the tuned small models per task.",
    )
    ap.add_argument("--task", choices=TASKS, help="what to train on (default: digits)")
    ap.add_argument(
        "--attention",
        choices=("tssa", "softmax"),
        help="TSSA (ToST) or softmax attention (ViT/GPT baseline) (default: tssa)",
    )
    ap.add_argument(
        "--model",
        choices=("tost", "tost-cab"),
        help="digits: the simplified ToST classifier or the public vision layout ToST-CAB "
        "(conv stem + BatchNorm, Fourier positions, class attention) (default: tost)",
    )

    def num(flag, text, key=None):
        key = key or flag[2:].replace("-", "_")
        ap.add_argument(flag, type=_flag_type(key), help=f"{text} ({_defaults_help(key)})")

    num("--depth", "number of blocks")
    num("--dim", "token dimension D")
    num("--heads", "number of heads H (D must be divisible by H)")
    num("--epochs", "epochs over the training set (digits)")
    num("--steps", "optimizer steps (overrides --epochs)")
    num("--batch-size", "examples per step")
    num("--lr", "peak learning rate of the warm-up + cosine schedule")
    num("--weight-decay", "AdamW decoupled weight decay")
    num("--warmup", "linear warm-up steps")
    num("--label-smoothing", "label smoothing of the cross-entropy, in [0, 1)")
    num("--clip", "clip the global gradient norm to this value (> 0)")
    ap.add_argument("--block-size", type=_flag_type("block_size"),
                    help="context length of the language model (text; default 64)")  # fmt: skip
    ap.add_argument("--eval-every", type=_flag_type("eval_every"),
                    help="steps between evaluations/checkpoints (defaults: digits one epoch, "
                    "text 250, subspaces 100)")  # fmt: skip
    ap.add_argument(
        "--text-file", help="train --task text on this UTF-8 file instead of pydoc_data"
    )
    ap.add_argument(
        "--holdout",
        action="store_true",
        default=None,
        help="tuning mode: train on part of the training data and evaluate on a validation "
        "split carved out of it (digits: a stratified 20%% of the training images; text: the "
        "80-90%% stretch); the test data is never used",
    )
    ap.add_argument(
        "--seed", type=_flag_type("seed"), help="seed of initialization and data order (default: 0)"
    )
    ap.add_argument("--device", choices=("cpu", "gpu"), help="NumPy or CuPy (default: cpu)")
    ap.add_argument("--threads", type=_flag_type("threads"),
                    help="BLAS threads (default 1: fastest for small models)")  # fmt: skip
    ap.add_argument("--out", help="output folder (default: runs/TASK-ATTENTION; with --resume "
                    "the checkpoint's folder)")  # fmt: skip
    ap.add_argument("--config", metavar="JSON", help="start from a run's config.json (repeats "
                    "that run; flags given as well override it; its out is not used)")  # fmt: skip
    ap.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint (model.npz); "
                    "--steps/--epochs beyond the stored run train longer")  # fmt: skip
    ap.add_argument("--overwrite", action="store_true",
                    help="let a new run replace the trained model.npz already in --out (without "
                    "it such a run is refused: continue it with --resume, or choose another "
                    "--out)")  # fmt: skip
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress bar on stderr")  # fmt: skip
    ap.add_argument(
        "--stop-after",
        type=_flag_type("stop_after"),
        metavar="N",
        help="stop after N evaluations (simulates an interruption; resume later)",
    )
    return ap


CLI_ONLY = ("resume", "no_progress", "stop_after", "config", "overwrite")


def _check_out(ap, out) -> None:
    if out is None:
        return
    if not out.strip():
        ap.error(f"argument --out: expected a folder name, got {out!r}")
    p = Path(out)
    if p.exists() and not p.is_dir():
        ap.error(f"argument --out: {out!r} exists and is not a folder")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        ap.error(f"argument --out: {str(parent)!r} is not writable")


#: the largest --config file read (a config.json is well under 1 kB)
MAX_CONFIG_BYTES = 1 << 20


def _read_config(ap, path) -> dict:
    """The settings in the ``--config`` file (checked: a flat JSON object of known keys whose
    values are numbers, strings, booleans or null; their types and ranges are checked with
    the rest of the configuration)."""
    p = Path(path)
    try:
        if not p.is_file():
            ap.error(f"argument --config: {path!r} does not exist or is not a file")
        if p.stat().st_size > MAX_CONFIG_BYTES:
            ap.error(f"argument --config: {path!r} is larger than {MAX_CONFIG_BYTES} bytes; "
                     "not a whitebox.train config.json")  # fmt: skip
        values = json.loads(p.read_bytes().decode("utf-8"))
    except RecursionError:
        ap.error(f"argument --config: {path!r} is nested too deeply; expected a flat JSON object")
    except (OSError, ValueError) as e:
        ap.error(f"argument --config: cannot read {path!r} ({e})")
    known = set(Config.__dataclass_fields__)
    if not isinstance(values, dict) or set(values) - known:
        extra = sorted(set(values) - known)[:5] if isinstance(values, dict) else []
        ap.error(f"argument --config: {path!r} is not a whitebox.train config.json"
                 + (f" (unknown keys {extra})" if extra else ""))  # fmt: skip
    for k, v in values.items():
        if not isinstance(v, str | int | float | bool | None):
            ap.error(f"argument --config: {path!r}: {k!r} is {type(v).__name__}; expected a "
                     "number, string, true/false or null")  # fmt: skip
    values.pop("out", None)
    return values


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    _check_out(ap, args.out)
    given = {k: v for k, v in vars(args).items() if k not in CLI_ONLY and v is not None}
    overrides = _read_config(ap, args.config) if args.config else {}
    if overrides.get("text_file") is not None and "text_file" not in given:
        print(f"note: --config names text_file {overrides['text_file']!r}: training on it as "
              "if given with --text-file", file=sys.stderr)  # fmt: skip
    overrides.update(given)
    if overrides.get("task", "digits") == "digits" and "steps" in given and "epochs" not in given:
        overrides["epochs"] = None
    try:
        cfg = make_config(**overrides)
        result = train(
            cfg, resume=args.resume, progress=not args.no_progress, stop_after=args.stop_after,
            explicit=set(given), echo_config=True, overwrite=args.overwrite,
        )  # fmt: skip
    except (ValueError, RuntimeError) as e:  # bad input, bad checkpoint, no GPU: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: not enough memory for this configuration; use a smaller --dim, --depth, "
              "--batch-size or --block-size", file=sys.stderr)  # fmt: skip
        return 2
    except BrokenPipeError:  # stdout's reader went away (| head): end quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as e:
        saved = getattr(e, "checkpoint", None)
        if saved:
            print(f"interrupted: the last checkpoint is {saved} (step {e.step}); continue with "
                  f"--resume {saved}", file=sys.stderr)  # fmt: skip
        else:
            print("interrupted before the first checkpoint: nothing was saved", file=sys.stderr)
        return 130
    try:
        if "sample" in result:
            print("sample:\n" + result["sample"])
        print(json.dumps(result))
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
