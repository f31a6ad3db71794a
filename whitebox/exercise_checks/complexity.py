"""Exercise 08: a timer and a fitted exponent, for the cost against the number of tokens."""

from __future__ import annotations

import math
import time

import numpy as np

from .core import (
    DELEGATES,
    WRITE_IT_YOURSELF,
    Case,
    CheckResult,
    Slip,
    Spec,
    _delegation,
    _where_raised,
    run_check,
    withhold,
)

#: How long the checker's test function sleeps, call after call (cycling): the best, the
#: median, the mean, the total and the slowest call all differ by a factor 1.6 or more.
TIME_CALL_SLEEPS = (0.030, 0.005, 0.012, 0.060, 0.008)

#: What a timer may return instead of the best time: (slip name, hint), by statistic.
TIME_CALL_SLIPS = {
    "median": ("the median instead of the best time", "return the smallest of the repeated "
               "measurements (min), the least disturbed one, not the median."),
    "mean": ("the mean instead of the best time", "return the smallest of the repeated "
             "measurements (min), not their mean: the mean includes every disturbance."),
    "total": ("the total instead of the best time", "return the best single call (the minimum "
              "over the repeats), the least disturbed measurement, not the sum."),
    "max": ("the slowest call instead of the best", "min, not max: the smallest time is the "
            "least disturbed one."),
    "last": ("the last call's time instead of the best", "keep the smallest time over the "
             "loop (best = min(best, t)) instead of overwriting it at every repeat."),
    "pair": ("two calls in one reading (a warm-up or setup call inside the timed region)",
             "start the clock after any warm-up or setup, just before the one call you time: "
             "here each reading spans two calls of f."),
    "first": ("the clock started once, before the loop", "read time.perf_counter() just "
              "before and just after each call: a clock started once before the loop measures "
              "the calls so far, so its smallest reading is the first call's time."),
}  # fmt: skip

#: Slips of the timer that are not a statistic of the calls: (name, hint).
ONE_CALL = (
    "one call instead of the best of repeats",
    "call f `repeats` times, timing each "
    "call, and return the smallest: one measurement carries every disturbance.",
)
CPU_TIME = ("CPU time (time.process_time) instead of wall time", "time.process_time() counts "
            "only the CPU time of this process (a sleeping or waiting call costs none): use "
            "time.perf_counter(), the wall clock.")  # fmt: skip


def check_time_call(time_call) -> CheckResult:
    """Check ``time_call(f, repeats)`` -> the best (smallest) wall time of one call of ``f``, in
    seconds (exercise 08). Uses a function whose calls sleep for different times
    (``TIME_CALL_SLEEPS``) and measures each call itself, so that the best time can be told
    apart from the median, the mean, the total, the slowest and the last call."""
    name = "time_call"
    ms = ", ".join(f"{1e3 * t:g}" for t in TIME_CALL_SLEEPS)
    lines = [f"Checking time_call(f, repeats) with repeats=5 on a function whose calls sleep "
             f"{ms} ms in turn."]  # fmt: skip
    durations: list[float] = []

    def f():
        start = time.perf_counter()
        time.sleep(TIME_CALL_SLEEPS[len(durations) % len(TIME_CALL_SLEEPS)])
        durations.append(time.perf_counter() - start)

    def finish(status, **kw):
        r = CheckResult(name, status, **kw)
        r.message = "\n".join(lines)
        print(r.message)
        return r

    try:
        with withhold(_bench_withheld(), [time_call]):
            t = time_call(f, 5)
    except NotImplementedError:
        lines[:] = [
            f"… {name}: not implemented yet (it raises NotImplementedError). "
            "Replace the TODO with your code, run that cell, then run this one again."
        ]
        return finish("not implemented")
    except Exception as exc:
        where = _where_raised(time_call, exc)
        if _delegation(exc):
            lines.append(f"✗ {name} calls the library's timer: {WRITE_IT_YOURSELF}.")
            return finish("wrong", quantity="time", slips=[DELEGATES])
        lines.append(
            f"✗ {name} raised {type(exc).__name__}: {exc}" + (f", {where}" if where else "")
        )
        return finish("error")
    try:
        t = float(t)
    except (TypeError, ValueError):
        lines.append(f"✗ {name} should return a number of seconds, got {type(t).__name__}.")
        return finish("wrong", quantity="time")
    n = len(durations)
    if n == 1:
        lines.append(f"✗ f was called once.\n  Likely slip: {ONE_CALL[0]}. "
                     f"{ONE_CALL[1][:1].upper() + ONE_CALL[1][1:]}")  # fmt: skip
        return finish("wrong", quantity="calls", slips=[ONE_CALL[0]])
    if n < 5:
        lines.append(f"✗ f was called {n} times: call it `repeats` = 5 times (or more).")
        return finish("wrong", quantity="calls")
    d = np.array(durations)
    candidates = {"best": d.min(), "median": float(np.median(d)), "mean": d.mean(),
                  "total": d.sum(), "max": d.max(), "last": d[-1], "first": d[0]}  # fmt: skip
    if n >= 10:  # two calls per reading: the best sum of a pair (calls 2i and 2i + 1)
        m = n // 2
        candidates["pair"] = float(np.min(d[0 : 2 * m : 2] + d[1 : 2 * m : 2]))
    if not (math.isfinite(t) and t > 0):
        lines.append(f"✗ the time should be a positive number of seconds, got {t!r}.")
        return finish("wrong", quantity="time")
    in_ns = any(abs(math.log(t / (1e9 * c))) < 0.25 for c in candidates.values())
    if in_ns or t > 1e5 * d.sum():
        lines.append(
            f"✗ the time ({t:.3g}) is far too long for {n} calls that took {d.sum():.3g} s in "
            "all.\n  Likely slip: nanoseconds instead of seconds. time.perf_counter_ns() "
            "counts nanoseconds; return seconds, as time.perf_counter() gives them."
        )
        return finish("wrong", quantity="time", slips=["nanoseconds instead of seconds"])
    in_ms = any(abs(math.log(t / (1e3 * c))) < 0.25 for c in candidates.values())
    if in_ms or t > 100 * d.sum():
        lines.append(
            f"✗ the time ({t:.3g}) is far too long for {n} calls that took {d.sum():.3g} s in "
            "all.\n  Likely slip: milliseconds instead of seconds. Return seconds, as "
            "time.perf_counter() gives them."
        )
        return finish("wrong", quantity="time", slips=["milliseconds instead of seconds"])
    if t < 0.2 * d.min():
        lines.append(
            f"✗ the time ({t:.3g} s) is far shorter than the shortest call of f "
            f"({1e3 * TIME_CALL_SLEEPS[1]:g} ms of sleep).\n  Likely slip: {CPU_TIME[0]}. "
            f"{CPU_TIME[1][:1].upper() + CPU_TIME[1][1:]}"
        )
        return finish("wrong", quantity="time", slips=[CPU_TIME[0]])
    if t < 0.99 * d.min():
        lines.append(
            f"✗ the time is shorter than the shortest call of f ({1e3 * TIME_CALL_SLEEPS[1]:g} "
            "ms of sleep): is the call to f between the two readings of time.perf_counter()?"
        )
        return finish("wrong", quantity="time")
    nearest = min(candidates, key=lambda k: abs(math.log(t / candidates[k])))
    if nearest == "best" and t <= 1.25 * d.min() + 1e-3:
        lines.append(f"✓ {name} is correct.")
        return finish("passed")
    if nearest in TIME_CALL_SLIPS:
        slip, hint = TIME_CALL_SLIPS[nearest]
        lines.append(f"✗ the time is not the best of the calls.\n  Likely slip: {slip}. "
                     f"{hint[:1].upper() + hint[1:]}")  # fmt: skip
        return finish("wrong", quantity="time", slips=[slip])
    lines.append(
        "✗ the time is not the best of the calls (nor their median, mean, total or last one)."
        "\n  No known slip matches. Time each call separately and return the smallest."
    )
    return finish("wrong", quantity="time")


def _bench_withheld():
    """The library's own timer and fit (``whitebox.bench``)."""
    import importlib

    bench = importlib.import_module("whitebox.bench")
    return [("whitebox.bench.fit_exponent", bench.fit_exponent),
            ("whitebox.bench._median_time", getattr(bench, "_median_time", None)),
            ("whitebox.bench._interleaved", getattr(bench, "_interleaved", None))]  # fmt: skip


def _both_coefficients(case, got):
    """The learner returned np.polyfit's whole result: [slope, intercept]."""
    x, y = np.log(case.args["ns"]), np.log(case.args["times"])
    try:
        g = np.asarray(got["exponent"], dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return g.shape == (2,) and bool(np.allclose(g, np.polyfit(x, y, 1), rtol=1e-6, atol=0))


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
                 "line through all the points in log-log coordinates.",
                 slip(lambda n, t: (np.log(t[-1]) - np.log(t[0])) / (np.log(n[-1]) - np.log(n[0])))),
            Slip("log10 of t but the natural log of n", "take the same logarithm of both: "
                 "mixing log10 and ln divides the slope by ln 10 ≈ 2.3.",
                 slip(lambda n, t: lin(np.log(n), np.log10(t)))),
            Slip("the natural log of t but log10 of n", "take the same logarithm of both: "
                 "mixing ln and log10 multiplies the slope by ln 10 ≈ 2.3.",
                 slip(lambda n, t: lin(np.log10(n), np.log(t)))),
            Slip("log2 of t but the natural log of n", "take the same logarithm of both: "
                 "mixing log2 and ln divides the slope by ln 2.",
                 slip(lambda n, t: lin(np.log(n), np.log2(t)))),
            Slip("the natural log of t but log2 of n", "take the same logarithm of both: "
                 "mixing ln and log2 multiplies the slope by ln 2.",
                 slip(lambda n, t: lin(np.log2(n), np.log(t)))),
            Slip("the intercept instead of the slope", "np.polyfit(x, y, 1) returns "
                 "[slope, intercept], highest power first: the exponent is the slope.",
                 slip(lambda n, t: np.polyfit(np.log(n), np.log(t), 1)[1])),
            Slip("the mean of the slopes between neighbouring points", "the least-squares slope "
                 "weighs every point; the mean of the local slopes depends only on the first "
                 "and last points when the n are evenly spaced in log n (and on noise, more).",
                 slip(lambda n, t: np.mean(np.diff(np.log(t)) / np.diff(np.log(n))))),
            Slip("a fit of t against log n", "take the logarithm of t too: log t = a log n "
                 "+ log C.", slip(lambda n, t: lin(np.log(n), t))),
            Slip("both coefficients returned", "np.polyfit(x, y, 1) returns [slope, "
                 "intercept]: return the slope alone, as a float.", detect=_both_coefficients),
        ], shapes="ns and times are 1-d arrays of the same length; return a float",
        withheld=_bench_withheld,
    )  # fmt: skip


def check_fit_exponent(fit_exponent) -> CheckResult:
    """Check ``fit_exponent(ns, times)`` = the least-squares slope a of log t = a log n + b."""
    return run_check(_fit_exponent_spec(), fit_exponent)
