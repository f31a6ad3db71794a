"""Sample text from a language model trained by ``python -m whitebox.train --task text``.

    python -m whitebox.sample runs/text-tssa/model.npz --prompt "def " --tokens 300
    python -m whitebox.sample runs/text-tssa/model.npz --temperature 0     # greedy decoding

The checkpoint carries the vocabulary, so nothing else is needed. ``--temperature 0`` is greedy
decoding: the argmax of the last logits at every step (the first of equal maxima), as the
public ToST code's greedy path; otherwise the logits are divided by the temperature, cut to the
``--top-k`` largest (if given) and sampled with ``--seed``. The prompt and its continuation go
to stdout, character by character as they are generated, the progress bar to stderr (not when
stdout is a terminal). Ctrl-C stops the generation: what was generated stays printed, and the
command ends with status 130; a reader that stops early (``| head``) ends it quietly (141).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .backend import to_numpy
from .checkpoint import CheckpointError
from .models import MIN_TEMPERATURE, load


def generate(model, idx, tokens, temperature=1.0, top_k=None, seed=0, progress=False,
             on_token=None):  # fmt: skip
    """``tokens`` new ids after ``idx`` (B, T0): greedy when ``temperature`` is 0 (or below
    ``models.MIN_TEMPERATURE``), sampled otherwise (``model.generate`` one token at a time:
    the same ids as one call). ``on_token(ids)`` gets each step's new ids (B,) as they come."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    idx = np.array(to_numpy(idx))
    for _ in tqdm(range(tokens), disable=not progress, file=sys.stderr, leave=False):
        if temperature < MIN_TEMPERATURE:
            logits = to_numpy(model.forward(idx[:, -model.block_size :])[:, -1, :])
            nxt = logits.argmax(axis=-1)  # (B,)
            idx = np.concatenate([idx, nxt[:, None].astype(idx.dtype)], axis=1)
        else:
            idx = model.generate(idx, 1, temperature=temperature, top_k=top_k, rng=rng)
        if on_token is not None:
            on_token(idx[:, -1])
    return idx


def _nonneg(kind, flag, strict=False):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not np.isfinite(v) or v < 0 or (strict and v == 0):
            raise argparse.ArgumentTypeError(f"expected {'> 0' if strict else '>= 0'}, got {text}")
        return v

    return parse


def build_parser():
    ap = argparse.ArgumentParser(
        prog="python -m whitebox.sample", description=__doc__.split("\n")[0]
    )
    ap.add_argument("checkpoint", help="model.npz written by python -m whitebox.train --task text")
    ap.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    ap.add_argument("--tokens", type=_nonneg(int, "--tokens"), default=200,
                    help="characters to generate (default: 200)")  # fmt: skip
    ap.add_argument("--temperature", type=_nonneg(float, "--temperature"), default=0.8,
                    help="softmax temperature; 0 = greedy (argmax), and so is any temperature "
                    f"below {MIN_TEMPERATURE:g} (too small to divide by) (default: 0.8)")  # fmt: skip
    ap.add_argument("--top-k", type=_nonneg(int, "--top-k", strict=True), default=None,
                    help="sample among the k most likely characters only (default: all)")  # fmt: skip
    ap.add_argument(
        "--seed", type=_nonneg(int, "--seed"), default=0, help="sampling seed (default: 0)"
    )
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="NumPy or CuPy")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = load(args.checkpoint, device=args.device)
        kind = model.config["model"]
        if kind != "language_model":
            raise CheckpointError(
                f"{args.checkpoint!r} holds a {kind}, not a language model: use "
                "python -m whitebox.predict for a digits model"
            )
        if model.codec is None:
            raise CheckpointError(
                f"{args.checkpoint!r} stores no vocabulary (written by an older whitebox); "
                "train it again with python -m whitebox.train --task text"
            )
        prompt = args.prompt
        if not prompt:
            prompt = "\n" if "\n" in model.codec.index else model.codec.chars[0]
        try:
            idx = model.encode(prompt)[None, :]
        except ValueError as e:
            raise ValueError(f"--prompt: {str(e).split(': ', 1)[1]}") from None
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = sys.stdout
    count = 0

    def show(ids):  # each character as it comes: nothing generated is lost on Ctrl-C
        nonlocal count
        out.write(model.decode(ids[:1]))
        out.flush()
        count += 1

    # on a terminal the text itself shows the progress; a bar would be drawn through it
    progress = not args.no_progress and not out.isatty()
    try:
        out.write(prompt)
        out.flush()
        generate(model, idx, args.tokens, args.temperature, args.top_k, args.seed,
                 progress=progress, on_token=show)  # fmt: skip
        out.write("\n")
        out.flush()
    except KeyboardInterrupt:
        try:
            out.write("\n")
            out.flush()
        except BrokenPipeError:
            pass
        print(f"interrupted after {count} of {args.tokens} characters", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 141
    except (ValueError, RuntimeError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
