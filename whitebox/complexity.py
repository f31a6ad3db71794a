"""Operation counts of four attention operators, counted by running them (chapter 5).

The paper's complexity comparison sets ToST's TSSA operator against softmax attention (ViT),
CRATE's MSSA operator and XCiT's cross-covariance attention. Here each operator's core, the part
between the input and output projections, is written as plain Python loops over scalars that
count themselves: every scalar ``+``, ``-``, ``*``, ``/``, negation, ``exp``, ``sqrt`` and
two-argument ``max`` adds 1 to a counter (a multiply-add is 2). Run on small sizes, these loops
give exact counts against which chapter 5 checks the counts it derives symbolically in n, p, H.
The loops compute the real outputs too, so the tests can check that what was counted *is* the
operator (against ``whitebox.nn`` for TSSA and softmax attention).

Layout as in the layers, per head: ``w`` (H, n, p) for the operators with one projection (TSSA,
MSSA), ``(q, k, v)`` stacked as (3, H, n, p) for the ones with three (softmax attention, XCiT).

* softmax attention:  A = softmax_l(q_j . k_l / sqrt(p)),      v_j = sum_l A_jl v_l
* MSSA (CRATE):       the same with q = k = v = w (as the public CRATE ``Attention``)
* XCiT:               q_hat, k_hat = columns of q, k over the tokens scaled to norm 1,
                      A = softmax_b(temp * q_hat_a . k_hat_b) (p x p),  v_ja = sum_b A_ab v_jb
* TSSA:               as ``whitebox.nn.tssa_forward`` between its two projections

Sizes are tiny by design (the loops are pure Python); this module is for counting, not speed.
"""

from __future__ import annotations

import math

import numpy as np

from .nn import MEMBERSHIP_EPS, TSSA_NORM_FLOOR

#: The operators, by the name of the network that introduced them.
OPERATORS = ("softmax", "mssa", "xcit", "tssa")
#: XCiT's floor on a column norm (``F.normalize``'s default), as TSSA's ``TSSA_NORM_FLOOR``.
XCIT_NORM_FLOOR = 1e-12


class _Counter:
    """How many scalar operations have run."""

    def __init__(self):
        self.ops = 0


class _Num:
    """A float that adds 1 to its counter for every arithmetic operation it takes part in."""

    __slots__ = ("v", "ctr")

    def __init__(self, v, ctr):
        self.v, self.ctr = float(v), ctr

    def _op(self, value):
        self.ctr.ops += 1
        return _Num(value, self.ctr)

    def __add__(self, o):
        return self._op(self.v + _val(o))

    def __radd__(self, o):
        return self._op(_val(o) + self.v)

    def __sub__(self, o):
        return self._op(self.v - _val(o))

    def __rsub__(self, o):
        return self._op(_val(o) - self.v)

    def __mul__(self, o):
        return self._op(self.v * _val(o))

    def __rmul__(self, o):
        return self._op(_val(o) * self.v)

    def __truediv__(self, o):
        return self._op(self.v / _val(o))

    def __rtruediv__(self, o):
        return self._op(_val(o) / self.v)

    def __neg__(self):
        return self._op(-self.v)


def _val(x):
    return x.v if isinstance(x, _Num) else float(x)


def _exp(x):
    return x._op(math.exp(x.v))


def _sqrt(x):
    return x._op(math.sqrt(x.v))


def _max(a, b):
    """max of two numbers, one comparison (``a`` is counted)."""
    return a._op(max(a.v, _val(b)))


def _sum(xs):
    """x_1 + ... + x_m: m - 1 additions (no 0 + x_1)."""
    xs = list(xs)
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def _dot(a, b):
    """sum_i a_i b_i: m multiplications and m - 1 additions."""
    return _sum(x * y for x, y in zip(a, b))


def _softmax(xs):
    """Stable softmax of a list: m - 1 max, m subtractions, m exp, m - 1 additions, m divisions."""
    top = xs[0]
    for x in xs[1:]:
        top = _max(top, x)
    e = [_exp(x - top) for x in xs]
    total = _sum(e)
    return [x / total for x in e]


def _wrap(a, ctr):
    """Nested lists of counted numbers from an array."""
    if np.ndim(a) == 0:
        return _Num(a, ctr)
    return [_wrap(x, ctr) for x in a]


def _unwrap(a):
    return np.array([[[x.v for x in row] for row in head] for head in a])  # (H, n, p)


def _transpose(m):
    return [list(col) for col in zip(*m)]


# ---- the four cores, one head (or all heads, for TSSA) at a time -----------------------------


def _softmax_head(q, k, v):
    """One head of softmax attention; q, k, v: n lists of p numbers. Returns (out, coupling)."""
    scale = 1.0 / math.sqrt(len(q[0]))  # a constant, computed once, not per token
    scores = [[_dot(qj, kl) * scale for kl in k] for qj in q]  # (n, n)
    attn = [_softmax(row) for row in scores]
    vt = _transpose(v)  # (p, n)
    out = [[_dot(row, col) for col in vt] for row in attn]  # (n, p)
    return out, len(scores) * len(scores[0])


def _unit_columns(m, floor):
    """Each column of m (n x p) divided by max(its norm over the tokens, floor)."""
    cols = _transpose(m)  # (p, n)
    norms = [_max(_sqrt(_dot(col, col)), floor) for col in cols]
    return [[x / nu for x in col] for col, nu in zip(cols, norms)]  # (p, n)


def _xcit_head(q, k, v, temp):
    """One head of XCiT's cross-covariance attention. Returns (out, coupling)."""
    q_hat, k_hat = _unit_columns(q, XCIT_NORM_FLOOR), _unit_columns(k, XCIT_NORM_FLOOR)  # (p, n)
    attn = [_softmax([_dot(qa, kb) * temp for kb in k_hat]) for qa in q_hat]  # (p, p)
    out = [[_dot(row, vj) for row in attn] for vj in v]  # (n, p): sum_b A_ab v_jb
    return out, len(attn) * len(attn[0])


def _tssa_heads(w, temp):
    """TSSA on all heads at once (its softmax runs over the heads); w: H x n x p lists.

    The steps and their order are those of ``whitebox.nn.tssa_forward``. Returns (out, coupling
    per head)."""
    H, n, p = len(w), len(w[0]), len(w[0][0])
    w_sq = [[[x * x for x in wj] for wj in wh] for wh in w]  # (H, n, p)
    nu = [[_sqrt(_sum(w_sq[h][j][i] for j in range(n))) for i in range(p)] for h in range(H)]
    floor = [[_max(x, TSSA_NORM_FLOOR) for x in nh] for nh in nu]  # (H, p)
    inv_sq = [[1.0 / (x * x) for x in fh] for fh in floor]
    a = [[_dot(w_sq[h][j], inv_sq[h]) for h in range(H)] for j in range(n)]  # (n, H)
    pi = [_softmax([a[j][h] * temp[h] for h in range(H)]) for j in range(n)]  # (n, H)
    pi_sum = [_sum(pi[j][h] for j in range(n)) + MEMBERSHIP_EPS for h in range(H)]
    pi_bar = [[pi[j][h] / pi_sum[h] for h in range(H)] for j in range(n)]
    y = [
        [_sum(pi_bar[j][h] * w_sq[h][j][i] for j in range(n)) for i in range(p)] for h in range(H)
    ]  # (H, p): the token statistics
    g = [[1.0 / (1.0 + x) for x in yh] for yh in y]  # (H, p): the gains
    neg_g = [[-x for x in gh] for gh in g]
    out = [
        [[pi[j][h] * neg_g[h][i] * w[h][j][i] for i in range(p)] for j in range(n)]
        for h in range(H)
    ]  # (H, n, p): v_hji = -Pi_hj g_hi w_hji
    return out, len(y[0])


def counted_attention(operator, w, temp=None):
    """Run one operator's core on small float inputs, counting its scalar operations.

    operator: one of OPERATORS. w: (H, n, p) for 'tssa' and 'mssa', (3, H, n, p) = (q, k, v)
    for 'softmax' and 'xcit'. temp: (H,) temperatures for 'tssa' and 'xcit' (default ones).

    Returns (out, ops, coupling): out (H, n, p) float64, the heads' outputs before they are
    merged; ops, the number of scalar operations of all heads; coupling, the number of entries
    of the one array through which a head's tokens see each other (per head: the n x n scores,
    XCiT's p x p cross-covariance, TSSA's p statistics)."""
    if operator not in OPERATORS:
        raise ValueError(f"operator: expected one of {OPERATORS}, got {operator!r}")
    w = np.asarray(w, dtype=np.float64)
    stacked = operator in ("softmax", "xcit")
    want = "(3, H, n, p)" if stacked else "(H, n, p)"
    if w.ndim != (4 if stacked else 3) or (stacked and w.shape[0] != 3) or 0 in w.shape:
        raise ValueError(f"w: expected a non-empty array {want} for {operator!r}, got {w.shape}")
    H = w.shape[-3]
    temp = np.ones(H) if temp is None else np.asarray(temp, dtype=np.float64).reshape(-1)
    if temp.shape != (H,):
        raise ValueError(f"temp: expected {H} temperatures (one per head), got {temp.shape}")
    ctr = _Counter()
    x = _wrap(w, ctr)
    if operator == "tssa":
        out, coupling = _tssa_heads(x, list(temp))
    else:
        heads = []
        for h in range(H):
            if operator == "mssa":
                heads.append(_softmax_head(x[h], x[h], x[h]))
            elif operator == "softmax":
                heads.append(_softmax_head(x[0][h], x[1][h], x[2][h]))
            else:
                heads.append(_xcit_head(x[0][h], x[1][h], x[2][h], temp[h]))
        out, coupling = [o for o, _ in heads], heads[0][1]
    return _unwrap(out), ctr.ops, coupling


def counted_linear(x, W, b):
    """x W + b on small inputs, counting scalar operations. x: (n, D_in), W: (D_in, D_out),
    b: (D_out,). Returns (out (n, D_out), ops)."""
    x, W, b = (np.asarray(a, dtype=np.float64) for a in (x, W, b))
    if x.ndim != 2 or W.ndim != 2 or W.shape[0] != x.shape[1] or b.shape != (W.shape[1],):
        raise ValueError(
            f"x, W, b: expected shapes (n, D_in), (D_in, D_out), (D_out,), "
            f"got {x.shape}, {W.shape}, {b.shape}"
        )
    ctr = _Counter()
    xs, cols, bs = _wrap(x, ctr), _transpose(_wrap(W, ctr)), _wrap(b, ctr)
    out = [[_dot(row, col) + bj for col, bj in zip(cols, bs)] for row in xs]
    return np.array([[v.v for v in row] for row in out]), ctr.ops
