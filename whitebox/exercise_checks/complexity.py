"""Exercise 08: a timer and a fitted exponent, for the cost against the number of tokens."""

from __future__ import annotations

import time

import numpy as np

from .core import Case, CheckResult, Slip, Spec, _where_raised, run_check


def check_time_call(time_call) -> CheckResult:
    """Check ``time_call(f, repeats)`` -> the best (smallest) wall time of one call of ``f``, in
    seconds (exercise 08). Uses a function that sleeps 5 ms and counts its calls."""
    name = "time_call"
    lines = ["Checking time_call(f, repeats) on a function that sleeps 5 ms, with repeats=5."]
    calls = []
    sleep = 0.005

    def f():
        calls.append(1)
        time.sleep(sleep)

    def finish(status, **kw):
        r = CheckResult(name, status, **kw)
        r.message = "\n".join(lines)
        print(r.message)
        return r

    try:
        t = time_call(f, 5)
    except NotImplementedError:
        lines[:] = [
            f"… {name}: not implemented yet (it raises NotImplementedError). "
            "Replace the TODO with your code, run that cell, then run this one again."
        ]
        return finish("not implemented")
    except Exception as exc:
        where = _where_raised(time_call, exc)
        lines.append(
            f"✗ {name} raised {type(exc).__name__}: {exc}" + (f", {where}" if where else "")
        )
        return finish("error")
    try:
        t = float(t)
    except (TypeError, ValueError):
        lines.append(f"✗ {name} should return a number of seconds, got {type(t).__name__}.")
        return finish("wrong", quantity="time")
    n = len(calls)
    if n < 5:
        lines.append(f"✗ f was called {n} times: call it `repeats` = 5 times (or more).")
        return finish("wrong", quantity="calls")
    if t < sleep * 0.99:
        lines.append(
            f"✗ the time ({t:.3g} s) is shorter than the 5 ms that f sleeps: is the call to f "
            "between the two readings of time.perf_counter()?"
        )
        return finish("wrong", quantity="time")
    if t > 100 * n * sleep:
        lines.append(
            f"✗ the time ({t:.3g}) is far too long for 5 calls of 5 ms.\n  Likely slip: "
            "milliseconds instead of seconds. Return seconds, as time.perf_counter() gives them."
        )
        return finish("wrong", quantity="time", slips=["milliseconds instead of seconds"])
    if t >= 0.8 * n * sleep:
        lines.append(
            "✗ the time is about the total of all the calls.\n  Likely slip: the total instead "
            "of the best time. Return the best single call (the minimum over the repeats), the "
            "least disturbed measurement."
        )
        return finish("wrong", quantity="time", slips=["the total instead of the best time"])
    lines.append(f"✓ {name} is correct.")
    return finish("passed")


def _fit_exponent_spec() -> Spec:
    def cases():
        rng = np.random.default_rng(801)
        ns = np.array([64, 128, 256, 512, 1024], dtype=float)
        noisy = 3e-6 * ns**1.3 * np.exp(0.2 * rng.standard_normal(ns.size))
        return [
            Case("exact power law t = 2e-7 n^2", {"ns": ns, "times": 2e-7 * ns**2}),
            Case("noisy power law t ≈ 3e-6 n^1.3", {"ns": ns, "times": noisy}),
        ]

    def ref(c):
        x, y = np.log(c.args["ns"]), np.log(c.args["times"])
        return {"exponent": np.polyfit(x, y, 1)[0]}

    def lin(x, y):
        return np.polyfit(x, y, 1)[0]

    def slip(f):
        return lambda c: {"exponent": f(np.asarray(c.args["ns"]), np.asarray(c.args["times"]))}

    return Spec(
        "fit_exponent", "fit_exponent(ns, times)", "the least-squares slope of log t on log n",
        cases, ref, quantity="exponent",
        slips=[
            Slip("a fit of t against n (no logarithms)", "t = c n^a is a line in log-log "
                 "coordinates: fit log t against log n.", slip(lin)),
            Slip("a fit of log t against n", "take the logarithm of n too.",
                 slip(lambda n, t: lin(n, np.log(t)))),
            Slip("the axes swapped", "fit log t (the response) against log n, not log n "
                 "against log t.", slip(lambda n, t: lin(np.log(t), np.log(n)))),
            Slip("a line through the origin", "fit a slope and an intercept: log t = a log n + "
                 "log c.", slip(lambda n, t: np.sum(np.log(n) * np.log(t)) / np.sum(np.log(n) ** 2))),
            Slip("only the first and the last point", "use every measurement: a least-squares "
                 "fit (np.polyfit(log n, log t, 1)).",
                 slip(lambda n, t: (np.log(t[-1]) - np.log(t[0])) / (np.log(n[-1]) - np.log(n[0])))),
        ], shapes="ns and times are 1-d arrays of the same length; return a float",
    )  # fmt: skip


def check_fit_exponent(fit_exponent) -> CheckResult:
    """Check ``fit_exponent(ns, times)`` = the least-squares slope a of log t = a log n + b."""
    return run_check(_fit_exponent_spec(), fit_exponent)
