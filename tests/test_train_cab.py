"""``python -m whitebox.train --model tost-cab``: the public vision layout on the digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from whitebox import checkpoint, models
from whitebox import train as T


def test_tost_cab_trains_and_its_loss_falls(tmp_path):
    cfg = T.make_config(task="digits", model="tost-cab", steps=60, eval_every=30, depth=1, warmup=10, lr=4e-3,
                        dim=32, heads=4, out=str(tmp_path / "cab"))  # fmt: skip
    result = T.train(cfg, progress=False)
    rows = [
        json.loads(line) for line in (tmp_path / "cab" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] < np.log(10) + 0.05
    assert result["test_accuracy"] > 0.2  # chance is 0.1
    model = models.load(tmp_path / "cab" / "model.npz")
    assert isinstance(model, models.ToSTCAB)
    assert int(model.buffers()["patch_embed.proj.0.1.num_batches_tracked"]) == 60  # training only
    ckpt = checkpoint.load_checkpoint(tmp_path / "cab" / "model.npz")
    assert "model/patch_embed.proj.0.1.running_var" in {f"model/{k}" for k in ckpt["model"]}


def test_tost_cab_resumes_exactly(tmp_path):
    kw = dict(task="digits", model="tost-cab", steps=8, eval_every=4, depth=1, dim=16, heads=2)
    full = T.train(T.make_config(out=str(tmp_path / "full"), **kw), progress=False)
    part = T.train(T.make_config(out=str(tmp_path / "part"), **kw), progress=False, stop_after=1)
    res = T.train(T.make_config(out=str(tmp_path / "part"), **kw), resume=part["checkpoint"],
                  progress=False)  # fmt: skip
    assert res["test_accuracy"] == full["test_accuracy"]


def test_tost_cab_rejects_other_tasks_and_softmax():
    with pytest.raises(ValueError, match="tost-cab"):
        T.train(T.make_config(task="text", model="tost-cab", steps=1), progress=False)
    with pytest.raises(ValueError, match="tost-cab"):
        T.train(T.make_config(task="digits", model="tost-cab", attention="softmax", steps=1),
                progress=False)  # fmt: skip
