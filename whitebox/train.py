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

stdout holds short per-evaluation lines and, last, one JSON line with the result; the progress
bar goes to stderr. ``--out`` receives ``model.npz`` (checkpoint, written atomically after every
evaluation), ``metrics.jsonl`` and ``curves.png``. Same seed, same machine: same metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import nn
from .backend import device_module, to_numpy
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import random_orthonormal_bases
from .models import build

TASKS = ("digits", "text", "subspaces")

#: Tuned defaults per task: the small models ``make train`` trains.
DEFAULTS = {
    "digits": dict(
        depth=2, dim=64, heads=4, epochs=100, steps=None, batch_size=64, lr=4e-3,
        weight_decay=0.05, warmup=100, label_smoothing=0.1, clip=1.0, patch_size=2,
        eval_every=None,
    ),
    "text": dict(
        depth=2, dim=64, heads=4, epochs=None, steps=1500, batch_size=32, lr=1e-2,
        weight_decay=0.1, warmup=100, label_smoothing=0.0, clip=1.0, block_size=64,
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


# --------------------------------------------------------------------------- data


def load_digits_split(test_size: float = 0.25, split_seed: int = 0):
    """The scikit-learn digits as images (N, 1, 8, 8) in [0, 1], split stratified and seeded.

    The split does not depend on the training seed: every run is tested on the same 450 images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)  # (1797, 64) in 0..16, (1797,)
    X = (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=split_seed
    )
    mean, std = float(Xtr.mean()), float(Xtr.std())
    return (Xtr - mean) / std, ytr.astype(np.int64), (Xte - mean) / std, yte.astype(np.int64)


def random_shift(x, rng, max_shift: int = 1):
    """Shift each image by up to ``max_shift`` pixels in each direction (zero padding in raw
    pixel space, i.e. the background value): cheap augmentation for 8 x 8 digits."""
    B, C, H, W = x.shape
    bg = x.min()
    padded = np.full((B, C, H + 2 * max_shift, W + 2 * max_shift), bg, dtype=x.dtype)
    padded[:, :, max_shift : max_shift + H, max_shift : max_shift + W] = x
    dy = rng.integers(0, 2 * max_shift + 1, size=B)
    dx = rng.integers(0, 2 * max_shift + 1, size=B)
    rows = dy[:, None] + np.arange(H)[None, :]  # (B, H)
    cols = dx[:, None] + np.arange(W)[None, :]  # (B, W)
    b = np.arange(B)[:, None, None]
    return padded[b, :, rows[:, :, None], cols[:, None, :]].transpose(0, 3, 1, 2)


def load_text(path: str | None = None) -> str:
    """The training text: ``path`` read as UTF-8, or CPython's ``pydoc_data.topics``."""
    if path is None:
        from pydoc_data.topics import topics

        return "".join(topics[k] for k in sorted(topics))
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--text-file: {path!r} does not exist or is not a file")
    raw = p.read_bytes()
    if not raw.strip():
        raise ValueError(f"--text-file: {path!r} is empty")
    if b"\x00" in raw:
        raise ValueError(f"--text-file: {path!r} looks binary (it contains NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--text-file: {path!r} is not UTF-8 text ({e})") from None
    return text


class CharCodec:
    """Characters <-> integer ids over the sorted set of characters of a text."""

    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, s: str) -> np.ndarray:
        return np.fromiter((self.index[c] for c in s), dtype=np.int64, count=len(s))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


# --------------------------------------------------------------------------- tasks


class DigitsTask:
    """Image classification on the digits; one evaluation per epoch."""

    metric = "test_accuracy"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.Xtr, self.ytr, self.Xte, self.yte = load_digits_split()
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
                dtype=c.dtype, seed=c.seed,
            )  # fmt: skip
        return dict(
            model="classifier", image_size=8, patch_size=c.patch_size, in_chans=1,
            num_classes=10, dim=c.dim, depth=c.depth, num_heads=c.heads,
            attention=c.attention, dtype=c.dtype, seed=c.seed,
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
        return {"test_loss": loss / n, "test_accuracy": correct / n}

    def finish(self, model, xp):
        return {}


class TextTask:
    """Character-level causal language modelling; evaluation every ``eval_every`` steps."""

    metric = "val_loss"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        text = load_text(cfg.text_file)
        if len(text) < 4 * (cfg.block_size + 1):
            raise ValueError(
                f"--text-file: the text has {len(text)} characters; need at least "
                f"{4 * (cfg.block_size + 1)} for block size {cfg.block_size}"
            )
        self.codec = CharCodec(sorted(set(text)))
        self.prompt = "\n" if "\n" in self.codec.index else text[0]  # start samples at a line
        data = self.codec.encode(text)
        split = int(0.9 * len(data))
        self.train, self.val = data[:split], data[split:]
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
            dtype=c.dtype, seed=c.seed,
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


# --------------------------------------------------------------------------- the loop


def _rng_state(rng) -> dict:
    return rng.bit_generator.state


def _set_rng_state(rng, state) -> None:
    rng.bit_generator.state = state


def plot_curves(history, path, title=""):
    """Loss (train and evaluation) and the task's metric against the step, to a PNG."""
    # a bare Figure (no pyplot): works headless and leaves a notebook's backend alone
    from matplotlib.figure import Figure

    steps = [h["step"] for h in history]
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    axes[0].plot(steps, [h["train_loss"] for h in history], label="train")
    for key in ("test_loss", "val_loss"):
        if key in history[0]:
            axes[0].plot(steps, [h[key] for h in history], label=key.split("_")[0])
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("cross-entropy (nats)")
    axes[0].legend()
    axes[0].set_title("loss")
    if "test_accuracy" in history[0]:
        axes[1].plot(steps, [h["test_accuracy"] for h in history], color="C2")
        axes[1].set_ylabel("test accuracy")
        axes[1].set_title("accuracy")
    else:
        axes[1].plot(steps, [h["lr"] for h in history], color="C3")
        axes[1].set_ylabel("learning rate")
        axes[1].set_title("schedule")
    axes[1].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def make_config(**overrides) -> Config:
    """A :class:`Config` with the task's tuned defaults, then ``overrides``."""
    task = overrides.get("task", "digits")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    values = dict(DEFAULTS[task])
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = set(Config.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
    return Config(**values)


def train(cfg: Config, resume: str | None = None, progress: bool = True, stop_after=None):
    """Train according to ``cfg`` with ``cfg.threads`` BLAS threads (see :func:`_train`)."""
    from threadpoolctl import threadpool_limits

    # These models are small: their matrix products are too thin to gain from several BLAS
    # threads, and a multi-threaded BLAS stalls badly when another process holds a core
    # (measured: 13 ms per digits step on one thread, 105 ms on two beside one busy process).
    with threadpool_limits(limits=cfg.threads, user_api="blas"):
        return _train(cfg, resume, progress, stop_after)


def _train(cfg: Config, resume: str | None = None, progress: bool = True, stop_after=None):
    """Train according to ``cfg``; returns the result dict (also printed by ``main``).

    ``resume``: a checkpoint to continue from (its stored configuration wins, apart from
    ``device`` and ``out``). ``stop_after``: stop after that many evaluations in this call
    (simulates an interruption; the checkpoint written then resumes exactly)."""
    start_time = time.perf_counter()
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        stored = ckpt["meta"].get("train_config")
        if not isinstance(stored, dict):
            raise CheckpointError(f"{resume!r} holds no training state (not from whitebox.train)")
        stored.update(device=cfg.device, out=cfg.out or stored.get("out"), threads=cfg.threads)
        cfg = Config(**stored)
    xp = device_module(cfg.device)
    if cfg.heads < 1 or cfg.dim % cfg.heads:
        raise ValueError(f"--dim ({cfg.dim}) must be divisible by --heads ({cfg.heads})")
    if cfg.model not in ("tost", "tost-cab") or (cfg.model == "tost-cab" and cfg.task != "digits"):
        raise ValueError(f"--model {cfg.model}: expected tost, or tost-cab with --task digits")
    task = TASK_CLASSES[cfg.task](cfg)
    model = build(task.model_config())
    if cfg.device != "cpu":
        model.to(cfg.device)
    opt = nn.AdamW(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 1)  # data order and augmentation
    history, step = [], 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optim"])
        _set_rng_state(rng, ckpt["meta"]["rng_state"])
        history, step = ckpt["meta"]["history"], ckpt["meta"]["step"]
        if hasattr(task, "perm"):
            task.perm = None if ckpt["meta"].get("perm") is None else np.array(ckpt["meta"]["perm"])
    tag = "-cab" if cfg.model == "tost-cab" else ""
    out = Path(cfg.out or f"runs/{cfg.task}-{cfg.attention}{tag}")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "model.npz"
    total = task.total_steps

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, disable=not progress, file=sys.stderr, leave=False)
    running, n_running, evals = 0.0, 0, 0
    while step < total:
        x, y = task.batch(step, rng)
        lr = nn.cosine_lr(step, total, cfg.warmup, cfg.lr, cfg.lr * 0.01)
        logits = model.forward(xp.asarray(x))
        loss, dlogits = nn.cross_entropy(logits, xp.asarray(y), cfg.label_smoothing)
        model.backward(dlogits)
        nn.clip_grad_norm(model, cfg.clip)
        opt.step(lr)
        step += 1
        running += float(loss)
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
                "history": history,
                "rng_state": _rng_state(rng),
                "perm": None if getattr(task, "perm", None) is None else task.perm.tolist(),
            }
            save_checkpoint(ckpt_path, model, opt, meta)
            _write_metrics(out / "metrics.jsonl", history)
            evals += 1
            if stop_after is not None and evals >= stop_after and step < total:
                bar.close()
                return {"interrupted_at_step": step, "checkpoint": str(ckpt_path)}
    bar.close()
    plot_curves(history, out / "curves.png", f"{cfg.task}: {cfg.attention} attention")
    result = {"task": cfg.task, "attention": cfg.attention}
    last = history[-1]
    if task.metric == "test_accuracy":
        result["test_accuracy"] = round(last["test_accuracy"], 4)
    else:
        result["val_loss_nats_per_char"] = round(last["val_loss"], 4)
    result["params"] = model.num_parameters()
    result["steps"] = step
    result.update(task.finish(model, xp))
    result["seconds"] = round(time.perf_counter() - start_time, 1)
    result["checkpoint"] = str(ckpt_path)
    return result


def _format_row(row) -> str:
    parts = [f"step {row['step']:5d}"]
    if "epoch" in row:
        parts.insert(0, f"epoch {row['epoch']:3d}")
    parts.append(f"train loss {row['train_loss']:.4f}")
    for key in ("test_loss", "val_loss", "test_accuracy"):
        if key in row:
            parts.append(f"{key.replace('_', ' ')} {row[key]:.4f}")
    return "  ".join(parts)


def _write_metrics(path: Path, history) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    tmp.replace(path)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m whitebox.train",
        description="Train a small Token Statistics Transformer (or its softmax baseline) with "
        "NumPy/CuPy and manual backprop. Defaults are the tuned small models per task.",
    )
    ap.add_argument(
        "--task", choices=TASKS, default="digits", help="what to train on (default: digits)"
    )
    ap.add_argument(
        "--attention",
        choices=("tssa", "softmax"),
        default="tssa",
        help="TSSA (ToST) or softmax attention (ViT/GPT baseline) (default: tssa)",
    )
    ap.add_argument(
        "--model",
        choices=("tost", "tost-cab"),
        default="tost",
        help="digits: the simplified ToST classifier or the public vision layout ToST-CAB "
        "(conv stem + BatchNorm, Fourier positions, class attention) (default: tost)",
    )
    ap.add_argument("--depth", type=int, help="number of blocks")
    ap.add_argument("--dim", type=int, help="token dimension D")
    ap.add_argument("--heads", type=int, help="number of heads H (D must be divisible by H)")
    ap.add_argument("--epochs", type=int, help="epochs over the training set (digits)")
    ap.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    ap.add_argument("--batch-size", type=int, help="examples per step")
    ap.add_argument("--lr", type=float, help="peak learning rate of the warm-up + cosine schedule")
    ap.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay")
    ap.add_argument("--warmup", type=int, help="linear warm-up steps")
    ap.add_argument("--label-smoothing", type=float, help="label smoothing of the cross-entropy")
    ap.add_argument("--clip", type=float, help="clip the global gradient norm to this value")
    ap.add_argument("--block-size", type=int, help="context length of the language model (text)")
    ap.add_argument("--eval-every", type=int, help="steps between evaluations/checkpoints")
    ap.add_argument(
        "--text-file", help="train --task text on this UTF-8 file instead of pydoc_data"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of initialization and data order")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="NumPy or CuPy")
    ap.add_argument(
        "--threads", type=int, default=1, help="BLAS threads (default 1: fastest for small models)"
    )
    ap.add_argument("--out", help="output folder (default: runs/TASK-ATTENTION)")
    ap.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint (model.npz)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ap.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N evaluations (simulates an interruption; resume later)",
    )
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    overrides = {
        k: v for k, v in vars(args).items() if k not in ("resume", "no_progress", "stop_after")
    }
    if args.task == "digits" and args.steps is not None:
        overrides["epochs"] = None
    try:
        cfg = make_config(**overrides)
        result = train(
            cfg, resume=args.resume, progress=not args.no_progress, stop_after=args.stop_after
        )
    except (ValueError, RuntimeError) as e:  # bad input, bad checkpoint, no GPU: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "sample" in result:
        print("sample:\n" + result["sample"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
