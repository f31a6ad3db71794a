"""Plotting and demo helpers for the chapters, kept out of the argument.

The chapters import this module (their kernel runs in ``notebooks/``). Each chapter's helpers
live in a section named after it. Nothing here is part of the library: the mathematics is in
``whitebox``; these functions only build example data, draw figures and sliders.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

import whitebox as wb

# ================================================================ chapters 5, 6, 7 and 12
# (kept in one block at the end of the file; other chapters' helpers sit above it)

# ---------------------------------------------------------------- chapter 5: linear cost


def ch5_measure(ns, D=64, H=4, seed=0):
    """Best-of-several forward time (s) and tracemalloc peak (MiB) of TSSA and softmax attention.

    B = 1, float32, one BLAS thread. Returns (seconds, peak_mb), each name -> list over ns.
    """
    import time
    import tracemalloc

    from threadpoolctl import threadpool_limits

    from whitebox import nn

    tssa = nn.TSSA(D, H, dtype=np.float32, rng=np.random.default_rng(seed))
    soft = nn.SoftmaxAttention(D, H, dtype=np.float32, rng=np.random.default_rng(seed + 1))
    forward = {
        "TSSA": lambda x: nn.tssa_forward(x, tssa.params),
        "softmax attention": lambda x: nn.softmax_attention_forward(x, soft.params, H),
    }
    seconds = {name: [] for name in forward}
    peak_mb = {name: [] for name in forward}
    rng = np.random.default_rng(seed)
    with threadpool_limits(limits=1):  # one BLAS thread: both layers on one core, less noise
        for n in ns:
            x = rng.standard_normal((1, n, D)).astype(np.float32)
            for name, f in forward.items():
                t0 = time.perf_counter()
                f(x)  # warm-up, and a first estimate of the cost
                repeats = int(np.clip(0.1 / (time.perf_counter() - t0), 3, 50))
                best = np.inf
                for _ in range(repeats):  # the best of several runs filters out other jobs
                    t0 = time.perf_counter()
                    f(x)
                    best = min(best, time.perf_counter() - t0)
                seconds[name].append(best)
                tracemalloc.start()
                f(x)
                peak_mb[name].append(tracemalloc.get_traced_memory()[1] / 2**20)
                tracemalloc.stop()
    return seconds, peak_mb


def ch5_plot_scaling(ns, seconds, peak_mb, fit, title):
    """Log-log time and memory against n; returns the slopes fitted on ns[fit]."""
    ns = np.asarray(ns)
    exponents = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, data, label in [(axes[0], seconds, "forward time [s]"),
                            (axes[1], peak_mb, "peak memory [MiB]")]:  # fmt: skip
        for (name, vals), marker in zip(data.items(), "os"):
            slope = np.polyfit(np.log(ns[fit]), np.log(np.array(vals)[fit]), 1)[0]
            exponents[label.split(" [")[0], name] = slope
            ax.loglog(ns, vals, marker + "-", label=f"{name} (slope {slope:.1f})")
        ax.set_xticks(ns, [str(v) for v in ns], rotation=45)
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set(xlabel="number of tokens n", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    plt.show()
    return exponents


# ---------------------------------------------------------------- chapter 6: unrolled subspaces


def ch6_recursion(y_start, steps, c):
    """The hard-membership recursion y+ = y (c y / (1 + c y))^2, iterated: (steps + 1, ...)."""
    out = [np.asarray(y_start, dtype=float)]
    for _ in range(steps):
        out.append(out[-1] * (c * out[-1] / (1 + c * out[-1])) ** 2)
    return np.array(out)


def ch6_unroll(Z, U, eps, eta, tau, steps, Pi_fixed=None, dtype=np.float64):
    """Unrolled TSSA steps with the bases U; Pi re-estimated each step unless Pi_fixed is given.

    Returns the tokens and the memberships of every step: lists of length steps + 1.
    """
    Z, U = Z.astype(dtype), U.astype(dtype)
    Zs, Pis = [], []
    for step in range(steps + 1):
        Pi = wb.estimate_membership(Z, U, eta) if Pi_fixed is None else Pi_fixed.astype(dtype)
        Zs.append(Z)
        Pis.append(Pi)
        if step < steps:
            Z = wb.tssa_step(Z, Pi, U, eps, tau)
    return Zs, Pis


def ch6_plot_unrolled(history, y_obs, y_pred, agree):
    """Left: the statistics, measured and by the recursion; right: the objective per step."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps_ax = np.arange(len(history))
    for k in range(y_obs.shape[1]):
        color = plt.cm.tab10(k)
        axes[0].semilogy(steps_ax, y_obs[:, k].mean(1), "o", color=color, ms=4,
                         label=f"group {k} measured")  # fmt: skip
        axes[0].semilogy(steps_ax, y_pred[:, k].mean(1), "-", color=color, lw=1)
    axes[0].set_ylim(1e-8, 1)
    axes[0].axvline(agree + 0.5, color="gray", ls=":", lw=1)
    axes[0].text(agree + 0.7, 2e-8, f"within 10 % up to step {agree}", fontsize=8, color="gray")
    axes[0].set(xlabel="step", ylabel="mean statistic y_k (log scale)")
    axes[0].set_title("statistics: measured (dots), recursion (lines)")
    axes[0].legend(fontsize=8)
    labels = {"Rc_var": "$R_c^{var}$", "Rc": "$R_c$", "R": "$R$", "DeltaR": r"$\Delta R = R - R_c$"}
    for (key, label), style in zip(labels.items(), ["o-", "s-", "^-", "D-"]):
        axes[1].plot(steps_ax, [h[key] for h in history], style, ms=4, label=label)
    axes[1].set(xlabel="step", ylabel="nats", title="the objective per step")
    axes[1].legend()
    fig.tight_layout()
    plt.show()


def ch6_plot_memberships(Pis, labels, accuracy, shown):
    """Pi^T at the steps `shown`, tokens sorted by their true group (one row per group)."""
    order = np.argsort(labels, kind="stable")
    K = Pis[0].shape[1]
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 4.4), sharex=True, layout="constrained")
    for ax, step in zip(axes, shown):
        im = ax.imshow(Pis[step][order].T, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       interpolation="nearest")  # fmt: skip
        ax.set_yticks(range(K))
        ax.set_ylabel("group k")
        ax.set_title(f"$\\Pi^T$ at step {step} (membership accuracy {accuracy[step]:.3f})")
        for b in np.cumsum(np.bincount(labels))[:-1]:
            ax.axvline(b - 0.5, color="w", lw=0.8)
    axes[-1].set_xlabel("tokens, sorted by true group")
    fig.colorbar(im, ax=axes, shrink=0.8, label="$\\Pi_{jk}$")
    plt.show()


def ch6_plot_lines(lines, Zs, shown):
    """Three lines in R^3 (dashed) and their tokens at the steps `shown`."""
    fig = plt.figure(figsize=(13, 4.4))
    for i, step in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1, projection="3d")
        for k in range(lines.U.shape[0]):
            u = lines.U[k, :, 0] * 1.6
            ax.plot(*np.stack([-u, u]).T, "--", color=plt.cm.tab10(k), lw=1)
            ax.scatter(*Zs[step][:, lines.labels == k], color=plt.cm.tab10(k), s=8,
                       depthshade=False, label=f"line {k}")  # fmt: skip
        ax.set(xlim=(-1.2, 1.2), ylim=(-1.2, 1.2), zlim=(-1.2, 1.2), title=f"step {step}")
        ax.view_init(elev=20, azim=35)
        ax.set_box_aspect((1, 1, 1))
    fig.axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    plt.show()


# ---------------------------------------------------------------- chapter 7: manual backprop


def ch7_random_params(D, H, rng, temp_range=(0.5, 2.0)):
    """TSSA parameters with weights of order 1/sqrt(D), so that w and the statistics y are of
    order 1 and every path of the backward pass carries weight (the module's 0.02-initialization
    makes y tiny)."""
    return {
        "qkv.weight": rng.standard_normal((D, D)) / np.sqrt(D),
        "qkv.bias": 0.1 * rng.standard_normal(D),
        "temp": rng.uniform(*temp_range, size=(H, 1)),
        "proj.weight": rng.standard_normal((D, D)) / np.sqrt(D),
        "proj.bias": 0.1 * rng.standard_normal(D),
    }


def ch7_plot_jacobians(J_num, block_sizes, n_s, D_s, J_tokens):
    """Left: |SymPy's Jacobian| per parameter block (log scale, zeros white); right: the norms
    of the library's token blocks d out_j / d x_l."""
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.6), width_ratios=[1.6, 1])
    ax = axes[0]
    absJ = np.abs(J_num)
    im = ax.imshow(np.where(absJ > 0, absJ, np.nan), cmap="viridis", aspect="auto",
                   norm=LogNorm(vmin=1e-4, vmax=absJ.max()))  # fmt: skip
    sizes = np.array(block_sizes)
    for e in np.cumsum(sizes)[:-1]:
        ax.axvline(e - 0.5, color="k", lw=1)
    ax.set_xticks(np.cumsum(sizes) - sizes / 2 - 0.5,
                  [r"$x$", r"$W_{qkv}$", r"$b_{qkv}$", "temp", r"$W_{out}$", r"$b_{out}$"])  # fmt: skip
    ax.set_yticks(range(n_s * D_s), [f"out[{j},{d}]" for j in range(n_s) for d in range(D_s)])
    ax.set_title(rf"SymPy: $|\partial\,\mathrm{{out}}/\partial\theta|$ ($n={n_s}$; white = 0)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax = axes[1]
    im = ax.imshow(J_tokens, cmap="viridis", norm=LogNorm())
    ax.set(xlabel="input token $l$", ylabel="output token $j$")
    n = J_tokens.shape[0]
    ax.set_title(rf"library: $\|\partial\,\mathrm{{out}}_j/\partial x_l\|_F$ ($n={n}$)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    plt.show()
