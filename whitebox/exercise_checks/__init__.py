r"""Checkers for the exercises in ``exercises/``: the learner's function against the library.

Every checker has the form ``check_xxx(fn) -> CheckResult``. It calls ``fn`` on a few fresh,
seeded inputs (a random case and, where the mathematics has one, a numerically hard case),
compares every quantity with the library, prints a small table (expected vs got, relative
error) and a verdict, and returns a :class:`CheckResult` that is truthy when everything matches.

Checkers report; they never raise into the notebook. ``NotImplementedError`` is reported as
"not implemented yet"; any other exception as one line naming the exception and the line of the
learner's code that raised it; a changed input array as such.

Answers must compute. While the learner's function runs, the library's own answers to the
exercise (``whitebox.coding_rate`` for exercise 01, ``whitebox.nn.tssa_backward`` for 06, the
checkers' own references, ...) are withheld: every name bound to them, in every ``whitebox``
module and in the learner's globals, closures and default arguments, raises "this exercise
asks you to write it yourself" (:func:`.core.withhold`; restored afterwards, also on an
exception). An answer that calls one fails with the named slip ``delegates to the library``.
What an exercise may use (``token_statistics`` in exercise 04, the forward pass in 06) stays.

When a quantity is wrong, the checker evaluates known wrong variants on the same inputs (the
*slips*: a missing 1/2, epsilon instead of epsilon^2, a transposed U, the softmax over the wrong
axis, a forgotten 1e-8, n instead of n_k, a dropped path of the backward, an off-by-one window,
...) and names every slip the learner's output matches. Without a match it says which quantity
is wrong first, at which entry, and whether the result is a constant multiple or the transpose
of the expected one. Intermediates are compared before the result: the caches of exercises 05
and 07 (w, Π, y, v), the gradients of 06 in backprop order, and for 03 and 04 the gain D/n,
read off the answer on a probe input (one group, Π = 1, U = I, where the gradient is (1/n) D Z).

Two errors are printed per quantity: the largest entry-wise relative error with a floor,
|a - b| / max(floor, |a| + |b|), as in :mod:`whitebox.gradcheck` (it decides; it is at most 1),
and the norm-based ‖got − expected‖ / ‖expected‖, which does not saturate and says how far off
a nearly right answer is. Everything is compared in float64.

The checkers, by exercise, and the module that holds each one's cases and slips:

    01  rates        check_coding_rate(fn), check_compression_rate(fn)
    02  variational  check_token_statistics(fn), check_variational_compression_rate(fn),
                     check_eigenbases(fn)
    03  gradient     check_variational_compression_grad(fn), check_numerical_gradient(fn)
    04  step         check_tssa_step(fn), check_estimate_membership(fn)
    05  tssa_layer   check_tssa_forward(fn)
    06  tssa_layer   check_tssa_backward(fn, forward)
    07  causal       check_causal_tssa_forward(fn)
    08  complexity   check_time_call(fn), check_fit_exponent(fn)

:mod:`.core` holds the engine they share (:class:`Spec`, :class:`Case`, :class:`Slip`,
:func:`run_check`, the comparisons and the hints); it knows nothing about any exercise. To add
a checker, write a module with a ``_xxx_spec() -> Spec`` and a ``check_xxx(fn)`` that passes
it to ``run_check``, then export ``check_xxx`` here and add its spec to ``SPECS``.

``SPECS`` maps each checker's name to a function building its specification (cases,
reference, slips), so that the tests can evaluate every slip.
"""

from __future__ import annotations

from . import causal, complexity, gradient, rates, step, tssa_layer, variational
from .causal import CAUSAL_SLIPS, causal_tssa_reference, check_causal_tssa_forward
from .complexity import check_fit_exponent, check_time_call
from .core import FLOOR, TOL, Case, CheckResult, Slip, Spec, run_check
from .gradient import check_numerical_gradient, check_variational_compression_grad
from .rates import check_coding_rate, check_compression_rate
from .step import check_estimate_membership, check_tssa_step
from .tssa_layer import (
    GRAD_KEYS,
    TSSA_BACKWARD_SLIPS,
    TSSA_CACHE_KEYS,
    TSSA_FORWARD_SLIPS,
    check_tssa_backward,
    check_tssa_forward,
    tssa_backward_reference,
    tssa_reference,
)
from .variational import (
    check_eigenbases,
    check_token_statistics,
    check_variational_compression_rate,
)

#: Each checker's name -> the function building its specification (for the tests).
SPECS = {
    "check_coding_rate": rates._coding_rate_spec,
    "check_compression_rate": rates._compression_rate_spec,
    "check_token_statistics": variational._token_statistics_spec,
    "check_variational_compression_rate": variational._variational_rate_spec,
    "check_eigenbases": variational._eigenbases_spec,
    "check_variational_compression_grad": gradient._grad_spec,
    "check_numerical_gradient": gradient._numerical_gradient_spec,
    "check_tssa_step": step._tssa_step_spec,
    "check_estimate_membership": step._membership_spec,
    "check_tssa_forward": tssa_layer._tssa_forward_spec,
    "check_tssa_backward": tssa_layer._tssa_backward_spec,
    "check_causal_tssa_forward": causal._causal_spec,
    "check_fit_exponent": complexity._fit_exponent_spec,
}

__all__ = [
    "CAUSAL_SLIPS",
    "Case",
    "CheckResult",
    "FLOOR",
    "GRAD_KEYS",
    "SPECS",
    "Slip",
    "Spec",
    "TOL",
    "TSSA_BACKWARD_SLIPS",
    "TSSA_CACHE_KEYS",
    "TSSA_FORWARD_SLIPS",
    "causal_tssa_reference",
    "check_causal_tssa_forward",
    "check_coding_rate",
    "check_compression_rate",
    "check_eigenbases",
    "check_estimate_membership",
    "check_fit_exponent",
    "check_numerical_gradient",
    "check_time_call",
    "check_token_statistics",
    "check_tssa_backward",
    "check_tssa_forward",
    "check_tssa_step",
    "check_variational_compression_grad",
    "check_variational_compression_rate",
    "run_check",
    "tssa_backward_reference",
    "tssa_reference",
]
