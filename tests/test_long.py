"""The long-sequence tasks of chapter 13 (``whitebox.data``): ListOps by the Long Range Arena's
rules, a count comparison and an associative recall, each label recomputed here by code
independent of the generators'; the sequence classifier's gradients; the results files."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from whitebox.data import LISTOPS_VOCAB, encode_listops, make_listops, make_majority, make_recall

ROOT = Path(__file__).resolve().parents[1]
OPS = {"[MIN", "[MAX", "[MED", "[SM"}


# ---- an independent ListOps parser and evaluator ---------------------------------------------


def parse(source):
    """Source -> nested lists ["[OP", child, ...] / int, by a stack (not by recursion)."""
    stack, root = [[]], None
    for tok in source.split():
        if tok in OPS:
            stack.append([tok])
        elif tok == "]":
            node = stack.pop()
            stack[-1].append(node)
        else:
            assert tok.isdigit() and len(tok) == 1, tok
            stack[-1].append(int(tok))
    assert len(stack) == 1 and len(stack[0]) == 1, "unbalanced source"
    root = stack[0][0]
    return root


def evaluate(t):
    if isinstance(t, int):
        return t
    op, args = t[0], [evaluate(a) for a in t[1:]]
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(statistics.median(args))
    return sum(args) % 10


def depth(t):
    return 1 if isinstance(t, int) else 1 + max(depth(a) for a in t[1:])


def nodes_by_depth(t, d=1, out=None):
    """(depth, is_value, number of arguments) of every node."""
    out = [] if out is None else out
    out.append((d, isinstance(t, int), 0 if isinstance(t, int) else len(t) - 1))
    if not isinstance(t, int):
        for a in t[1:]:
            nodes_by_depth(a, d + 1, out)
    return out


@pytest.mark.parametrize(
    "source, value",
    [
        ("[MIN 4 7 ]", 4),
        ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
        ("[MED 3 1 8 ]", 3),  # sorted 1 3 8
        ("[MED 3 1 8 6 ]", 4),  # median (3 + 6) / 2 = 4.5, integer part 4
        ("[MED 9 8 ]", 8),  # 8.5 -> 8
        ("[SM 7 8 9 ]", 4),  # 24 mod 10
        ("[SM [MAX 5 6 ] [MIN 9 3 ] ]", 9),  # 6 + 3
        ("[MIN [SM 9 9 ] [MED 1 2 3 4 ] 5 ]", 2),  # 8, 2, 5
    ],
)
def test_worked_examples(source, value):
    assert evaluate(parse(source)) == value


@pytest.fixture(scope="module")
def listops():
    return make_listops(300, min_length=60, max_length=400, seed=3)


def test_every_label_recomputed_and_every_tree_legal(listops):
    sources, labels = listops
    assert len(sources) == len(labels) == 300
    assert all(type(y) is int and 0 <= y <= 9 for y in labels)
    for s, y in zip(sources, labels):
        assert evaluate(parse(s)) == y, s
        n = len(s.split())
        assert 60 < n < 400
        assert depth(parse(s)) <= 10
        assert all(2 <= k <= 10 for d, v, k in nodes_by_depth(parse(s)) if not v)
    assert len(set(sources)) == len(sources)
    assert len(set(labels)) == 10  # every value occurs


def test_depth_limit_is_respected_when_it_binds():
    sources, _ = make_listops(100, min_length=10, max_length=200, max_depth=3, seed=1)
    depths = [depth(parse(s)) for s in sources]
    assert max(depths) == 3  # reached, never passed (the root is at depth 1)
    for s in sources:
        assert all(v for d, v, _ in nodes_by_depth(parse(s)) if d == 3)  # values at max_depth


def test_value_share_and_argument_counts(listops):
    """Below max_depth a node is a value with probability 0.75; an operator's argument count is
    uniform on 2..max_args. Counted over every node above max_depth of trees drawn without a
    length bound (a bound would favour operators: long trees are kept, short ones dropped)."""
    sources, _ = make_listops(400, min_length=0, max_length=100_000, max_depth=10, seed=5)
    nodes = [n for s in sources for n in nodes_by_depth(parse(s))]
    below = [v for d, v, _ in nodes if d < 10]
    share = np.mean(below)
    assert len(below) > 2000 and abs(share - 0.75) < 0.03, (len(below), share)
    args = Counter(k for _, v, k in nodes if not v)
    assert set(args) == set(range(2, 11))
    freq = np.array([args[k] for k in range(2, 11)]) / sum(args.values())
    assert np.abs(freq - 1 / 9).max() < 0.04


def test_seeded(listops):
    again = make_listops(300, min_length=60, max_length=400, seed=3)
    other = make_listops(300, min_length=60, max_length=400, seed=4)
    assert again == listops and other[0] != listops[0]


def test_encoding():
    ids = encode_listops(["[MAX 2 9 [MIN 4 7 ] 0 ]", "5"], length=12)
    assert ids.shape == (2, 12) and ids.dtype == np.int64
    back = [" ".join(LISTOPS_VOCAB[i] for i in row if i) for row in ids]
    assert back == ["[MAX 2 9 [MIN 4 7 ] 0 ]", "5"]
    assert len(LISTOPS_VOCAB) == 16 and LISTOPS_VOCAB[0] == "<pad>"
    with pytest.raises(ValueError, match="sources"):
        encode_listops(["[MAX 1 2 ]"], length=3)
    with pytest.raises(ValueError, match="sources"):
        encode_listops(["[FIRST 1 2 ]"], length=8)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num=0), "num"),
        (dict(num=2.5), "num"),
        (dict(num=3, min_length=-1), "min_length"),
        (dict(num=3, min_length=10, max_length=11), "max_length"),
        (dict(num=3, max_depth=0), "max_depth"),
        (dict(num=3, max_args=1), "max_args"),
        (dict(num=3, min_length=500, max_length=2000, max_depth=3, max_args=4), "min_length"),
    ],
)
def test_listops_refuses_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_listops(**kwargs)


# ---- the count comparison and the recall --------------------------------------------------------


@pytest.mark.parametrize("length", [1000, 16384])
def test_majority_labels_from_the_counts(length):
    x, y = make_majority(40, length, num_symbols=8, seed=2)
    assert x.shape == (40, length) and x.min() >= 0 and x.max() < 8
    for row, label in zip(x, y):
        c = np.bincount(row, minlength=8)
        assert c[1] != c[0] and label == int(c[1] > c[0])
    assert 0 < y.mean() < 1
    assert np.array_equal(make_majority(40, length, seed=2)[0], x)
    assert not np.array_equal(make_majority(40, length, seed=3)[0], x)


@pytest.mark.parametrize("length", [1000, 16384])
def test_recall_labels_from_the_pairs(length):
    K, V = 64, 8
    x, y = make_recall(30, length, num_keys=K, num_values=V, seed=1)
    assert x.shape == (30, length) and x.max() < K * (V + 1)
    for row, label in zip(x, y):
        q = row[-1] - K * V
        assert 0 <= q < K and (row[:-1] < K * V).all()
        pairs = [(t // V, t % V) for t in row[:-1]]
        hits = [v for k, v in pairs if k == q]
        assert hits == [label]  # the query's key occurs exactly once, with the label
    assert len(set(y.tolist())) > 3
    assert np.array_equal(make_recall(30, length, seed=1)[1], make_recall(30, length, seed=1)[1])
    assert not np.array_equal(make_recall(30, length, seed=2)[0], x)


def test_majority_and_recall_refuse_bad_arguments():
    for call, name in [
        (lambda: make_majority(0, 1000), "num"),
        (lambda: make_majority(4, 10), "length"),
        (lambda: make_majority(4, 1000, num_symbols=2), "num_symbols"),
        (lambda: make_recall(4, 2), "length"),
        (lambda: make_recall(4, 100, num_keys=1), "num_keys"),
        (lambda: make_recall(4, 100, num_values=True), "num_values"),
    ]:
        with pytest.raises(ValueError, match=name):
            call()


# ---- the sequence classifier: gradients against finite differences ------------------------------


@pytest.mark.parametrize("attention", ["tssa", "softmax"])
@pytest.mark.parametrize("pool", ["mean", "last"])
def test_sequence_classifier_gradients(attention, pool):
    """Every parameter's gradient, float64, random upstream gradient, against central
    differences along random directions (and element-wise on the head's bias)."""
    from whitebox.gradcheck import check_directional, numerical_grad, rel_error
    from whitebox.sequence import SequenceClassifier

    model = SequenceClassifier(
        vocab_size=11, num_classes=3, max_len=16, dim=8, depth=2, num_heads=2,
        attention=attention, pool=pool, dtype="float64", seed=1,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for p in model.parameters().values():  # move off the initial point (gains 1, biases 0)
        p += 0.3 * rng.standard_normal(p.shape)
    idx = rng.integers(11, size=(3, 9))
    up = rng.standard_normal((3, 3))

    def f():
        return float((model.forward(idx) * up).sum())

    f()
    model.backward(up)
    grads = {k: v.copy() for k, v in model.gradients().items()}
    params = model.parameters()
    assert any(np.abs(g).max() > 0 for k, g in grads.items() if k.startswith("embed"))
    for k, p in params.items():
        err = check_directional(f, p, grads[k], seed=len(k))
        assert err < 1e-6, (k, err)
    num = numerical_grad(f, params["head.bias"])
    assert rel_error(num, grads["head.bias"]) < 1e-6


def test_sequence_classifier_refuses_bad_arguments():
    from whitebox.sequence import SequenceClassifier

    with pytest.raises(ValueError, match="pool"):
        SequenceClassifier(10, 2, 8, pool="max")
    with pytest.raises(ValueError, match="max_len"):
        SequenceClassifier(10, 2, 0)
    model = SequenceClassifier(10, 2, 8)
    with pytest.raises(ValueError, match="idx"):
        model.forward(np.zeros((2, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="idx"):
        model.forward(np.full((2, 4), 10))


# ---- the results files (scripts/long_results.py) ------------------------------------------------


def _long_results():
    return {
        p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "results").glob("long-*.json"))
    }


def test_results_files_follow_the_schema():
    """The schema of the other results files plus seq_len; summaries recomputed from values."""
    files = _long_results()
    runs = {k: v for k, v in files.items() if k not in ("long-tuning", "long-scaling")}
    assert {(r["task"], r["attention"]) for r in runs.values()} >= {
        (t, a) for t in ("listops", "majority", "recall") for a in ("tssa", "softmax")
    }
    keys = {"schema", "name", "task", "attention", "model", "metric", "better", "setting",
            "seeds", "values", "mean", "std", "min", "max", "std_note", "params", "steps",
            "per_seed", "machine", "seq_len"}  # fmt: skip
    for name, r in runs.items():
        assert keys <= set(r), (name, keys - set(r))
        assert r["name"] == name == f"long-{r['task']}-{r['attention']}-{r['seq_len']}"
        assert len(r["values"]) == len(r["seeds"]) == len(r["per_seed"]) >= 2
        assert [s["value"] for s in r["per_seed"]] == r["values"]
        assert r["mean"] == pytest.approx(statistics.mean(r["values"]), abs=1e-4)
        assert r["std"] == pytest.approx(statistics.stdev(r["values"]), abs=1e-4)
        assert all(0 <= v <= 1 for v in r["values"]) and {"lr", "weight_decay"} <= set(r["setting"])
        if r["seq_len"] <= 2048:
            assert len(r["seeds"]) >= 5
    scaling = files["long-scaling"]["attention"]
    for a in ("tssa", "softmax"):
        rows = scaling[a]["rows"]
        assert [r["seq_len"] for r in rows] == sorted(r["seq_len"] for r in rows)
        assert all(r["seconds_per_step"] > 0 and r["peak_bytes"] > 0 for r in rows)
    budget = files["long-scaling"]["score_budget_bytes"]
    assert all(r["score_matrix_bytes"] <= budget for r in scaling["softmax"]["rows"])
    assert max(r["seq_len"] for r in scaling["tssa"]["rows"]) >= 16384
    tuning = files["long-tuning"]
    assert set(tuning["tasks"]) == {r["task"] for r in runs.values()}
    for task, rec in tuning["tasks"].items():
        assert set(rec["chosen"]) == {"tssa", "softmax"}
        for a, c in rec["chosen"].items():
            assert c["lr"] in rec["grid"]
            assert c["inside"] == (min(rec["grid"]) < c["lr"] < max(rec["grid"]))
            # every run of that task and attention used the rate chosen for it
            assert {r["setting"]["lr"] for r in runs.values()
                    if (r["task"], r["attention"]) == (task, a)} == {c["lr"]}  # fmt: skip
