"""Plotting and demo helpers for the chapters, kept out of the argument.

The chapters import this module (their kernel runs in ``notebooks/``). Each chapter's helpers
live in a section named after it. Nothing here is part of the library: the mathematics is in
``whitebox``; these functions only build example data, draw figures and sliders.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

import whitebox as wb

# ---------------------------------------------------------------- chapter 1: coding rate


def cloud_2d(sig1, sig2, n_tokens=300, seed=0):
    """A 2-D cloud (2, n_tokens) whose empirical covariance is exactly diag(sig1^2, sig2^2)."""
    G = np.random.default_rng(seed).standard_normal((2, n_tokens))
    w, V = np.linalg.eigh(G @ G.T / n_tokens)
    G = V @ np.diag(w**-0.5) @ V.T @ G  # whitened: G G^T / n = I
    return np.diag([sig1, sig2]) @ G


def plot_clouds(eps, sigmas=((1.0, 1.0), (3.0, 1.0), (3.0, 0.05))):
    """Three 2-D clouds with their coding rates, and R against the stretch sigma_1.

    Curves: the eigenvalue form sum_i 1/2 log(1 + d sigma_i^2 / eps^2); dots: wb.coding_rate.
    """
    fig = plt.figure(figsize=(13, 3.8))
    for i, sig in enumerate(sigmas):
        ax = fig.add_subplot(1, 4, i + 1)
        Z2 = cloud_2d(*sig)
        ax.scatter(Z2[0], Z2[1], s=4, alpha=0.5)
        ax.add_patch(plt.Circle((0, 0), eps, fill=False, ls="--", color="k"))
        ax.set(xlim=(-8, 8), ylim=(-8, 8), aspect="equal", xlabel="$z_1$", ylabel="$z_2$")
        ax.set_title(rf"$\sigma=({sig[0]:g},\,{sig[1]:g})$: $R$ = {wb.coding_rate(Z2, eps):.2f}")
    ax = fig.add_subplot(1, 4, 4)
    grid = np.linspace(0.01, 4, 200)
    pts = np.linspace(0.5, 4, 8)
    for sig2 in [1.0, 0.3, 0.05]:
        curve = 0.5 * (np.log1p(2 * grid**2 / eps**2) + np.log1p(2 * sig2**2 / eps**2))
        line = ax.plot(grid, curve, label=rf"$\sigma_2$ = {sig2:g}")[0]
        dots = [wb.coding_rate(cloud_2d(p, sig2), eps) for p in pts]
        ax.plot(pts, dots, "o", color=line.get_color(), ms=4)
    ax.set(xlabel=r"stretch $\sigma_1$", ylabel=r"coding rate $R$ (nats)")
    ax.set_title("curves: eigenvalue form; dots: wb.coding_rate")
    ax.legend()
    fig.tight_layout()
    plt.show()


def two_lines(theta, sigma=1.0, n_per_group=100, seed=0):
    """Two groups on lines through 0 at angle theta in R^3: Z (3, 2 n_per_group) and Pi.

    Each group has variance exactly sigma^2 along its line.
    """
    g = np.random.default_rng(seed)
    dirs = np.array([[1.0, 0.0, 0.0], [np.cos(theta), np.sin(theta), 0.0]])
    cols = []
    for u in dirs:
        rho = g.standard_normal(n_per_group)
        rho *= sigma / np.sqrt(np.mean(rho**2))  # exact variance sigma^2 along the line
        cols.append(np.outer(u, rho))
    return np.hstack(cols), np.repeat(np.eye(2), n_per_group, axis=0)


def _draw_lines(ax, theta, sigma):
    Z, _ = two_lines(theta, sigma)
    half = Z.shape[1] // 2
    ax.scatter(Z[0, :half], Z[1, :half], s=5, label="group 1")
    ax.scatter(Z[0, half:], Z[1, half:], s=5, label="group 2")
    ax.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal", xlabel="$z_1$", ylabel="$z_2$")


def plot_two_lines(dR_formula, eps, degrees=(0, 45, 90)):
    """Two lines at three angles, and Delta R(theta): formula curves, wb.rate_reduction dots.

    dR_formula(theta, a) is the closed form with a = d sigma^2 / (2 eps^2), d = 3.
    """
    fig, axes = plt.subplots(1, len(degrees) + 1, figsize=(14, 3.6))
    for ax, deg in zip(axes, degrees):
        _draw_lines(ax, np.deg2rad(deg), 1.0)
        dR = wb.rate_reduction(*two_lines(np.deg2rad(deg)), eps)
        ax.set_title(rf"$\theta$ = {deg}°: $\Delta R$ = {dR + 0.0:.2f}")
    ax = axes[-1]
    grid = np.linspace(0, np.pi, 200)
    pts = np.deg2rad(np.arange(0, 181, 20))
    for sigma in [0.5, 1.0, 2.0]:
        a = 3 * sigma**2 / (2 * eps**2)
        line = ax.plot(np.rad2deg(grid), dR_formula(grid, a), label=rf"$\sigma$ = {sigma:g}")[0]
        dots = [wb.rate_reduction(*two_lines(t, sigma), eps) for t in pts]
        ax.plot(np.rad2deg(pts), dots, "o", color=line.get_color(), ms=4)
    ax.set(xlabel=r"angle $\theta$ (degrees)", ylabel=r"$\Delta R$ (nats)", xticks=[0, 90, 180])
    ax.set_title("curves: SymPy; dots: wb.rate_reduction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def two_lines_slider(dR_formula, eps):
    """A slider for the angle theta and the spread sigma of the two lines, with Delta R."""
    import ipywidgets

    def show(theta_deg=45, sigma=1.0):
        theta = np.deg2rad(theta_deg)
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.6))
        _draw_lines(ax0, theta, sigma)
        ax0.legend(loc="lower left", fontsize=8)
        a = 3 * sigma**2 / (2 * eps**2)
        grid = np.linspace(0, np.pi, 200)
        ax1.plot(np.rad2deg(grid), dR_formula(grid, a))
        dR = wb.rate_reduction(*two_lines(theta, sigma), eps)
        ax1.plot([theta_deg], [dR], "o", color="tab:red", ms=8)
        ax1.set(xlabel=r"$\theta$ (degrees)", ylabel=r"$\Delta R$ (nats)")
        ax1.set_title(rf"$\Delta R$ = {dR + 0.0:.3f} nats (wb.rate_reduction)")
        fig.tight_layout()
        plt.show()

    ipywidgets.interact(
        show,
        theta_deg=ipywidgets.IntSlider(value=45, min=0, max=180, step=5, description="θ (deg)"),
        sigma=ipywidgets.FloatSlider(value=1.0, min=0.25, max=3.0, step=0.25, description="σ"),
    )


# ---------------------------------------------------------------- chapter 2: variational form


def plot_rotation(M, cs=(1.0, 4.0)):
    """Left: sum_i log(1 + c (U^T M U)_ii) over a half-turn of the rotation U(theta), for 2x2 M.

    Right: the diagonal of U^T M U moving along a segment between the eigenvalues, over the
    level sets of log(1 + x) + log(1 + y).
    """
    M = np.asarray(M, dtype=float)
    lam, V = np.linalg.eigh(M)
    lam = lam[::-1]
    grid = np.linspace(0, np.pi, 400)
    N11 = M[0, 0] * np.cos(grid) ** 2 + 2 * M[0, 1] * np.sin(grid) * np.cos(grid)
    N11 += M[1, 1] * np.sin(grid) ** 2  # (U^T M U)_11 for U = [[cos, -sin], [sin, cos]]
    N22 = np.trace(M) - N11  # the trace is invariant
    eig_angle = np.arctan2(V[1, -1], V[0, -1]) % (np.pi / 2)  # where U's first column is v_max
    fig, (ax, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
    for c in cs:
        line = ax.plot(grid, np.log1p(c * N11) + np.log1p(c * N22), label=f"c = {c:g}")[0]
        ax.axhline(np.log(np.linalg.det(np.eye(2) + c * M)), ls="--", color=line.get_color(), lw=1)
    for t in [eig_angle, eig_angle + np.pi / 2]:
        ax.axvline(t, color="gray", lw=0.8)
    ax.set_xticks(np.arange(9) * np.pi / 8)
    ax.set_xticklabels(["0", "π/8", "π/4", "3π/8", "π/2", "5π/8", "3π/4", "7π/8", "π"])
    ax.set(xlabel=r"rotation angle $\theta$", ylabel=r"$\sum_i \log(1 + c\,(U^\top M U)_{ii})$")
    ax.set_title("minimum = log det(I + cM) (dashed) at the eigenbasis (gray)")
    ax.legend()
    x = np.linspace(0, 4, 200)
    X, Y = np.meshgrid(x, x)
    cs_ = ax1.contour(X, Y, np.log1p(X) + np.log1p(Y), levels=12, cmap="viridis", linewidths=0.8)
    ax1.clabel(cs_, fontsize=7)
    ax1.plot(
        [lam[0], lam[1]], [lam[1], lam[0]], color="tab:blue", lw=2, label="diagonal of $U^TMU$"
    )
    ax1.plot([lam[0], lam[1]], [lam[1], lam[0]], "o", color="tab:red", label="eigenvalues")
    mid = np.trace(M) / 2
    ax1.plot([mid], [mid], "s", color="tab:green", label="equal entries (most mixed)")
    ax1.set(xlabel="$(U^TMU)_{11}$", ylabel="$(U^TMU)_{22}$", aspect="equal")
    ax1.set_title("level sets of log(1+x) + log(1+y), c = 1")
    ax1.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    plt.show()


def plot_gaps(gaps, gap_eig):
    """Histogram of R_c^var - R_c over random orthogonal bases, and the eigenbases' gap."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.hist(gaps, bins=30, color="tab:blue", alpha=0.8, label="random orthogonal $U$")
    ax.axvline(gap_eig, color="tab:red", lw=2, label="eigenbases (gap 0)")
    ax.set_xlabel(r"$R_c^{\mathrm{var}}(Z,\Pi\mid U) - R_c(Z\mid\Pi)$ (nats)")
    ax.set_ylabel("number of bases")
    ax.legend()
    fig.tight_layout()
    plt.show()


def plot_value_against_p(Z0, U_true, eps, seed=0):
    """One group's R_c^var with p = 1..d columns: top-p, bottom-p and random orthonormal bases."""
    rng = np.random.default_rng(seed)
    d = Z0.shape[0]
    Pi0 = np.ones((Z0.shape[1], 1))
    Rc0 = wb.compression_rate(Z0, Pi0, eps)
    V0 = np.linalg.eigh(Z0 @ Z0.T)[1][:, ::-1]  # eigenvectors, largest eigenvalue first
    ps = np.arange(1, d + 1)
    top = [wb.variational_compression_rate(Z0, Pi0, V0[None, :, :q], eps) for q in ps]
    bottom = [wb.variational_compression_rate(Z0, Pi0, V0[None, :, d - q :], eps) for q in ps]
    fig, ax = plt.subplots(figsize=(7, 4))
    for q in ps:
        bases = [wb.data.random_orthonormal_bases(1, d, q, rng) for _ in range(20)]
        vals = [wb.variational_compression_rate(Z0, Pi0, B, eps) for B in bases]
        label = "random orthonormal $U_0$" if q == 1 else None
        ax.plot(np.full(20, q), vals, ".", color="tab:gray", alpha=0.5, label=label)
    ax.plot(ps, top, "o-", color="tab:blue", label="top-$p$ eigenvectors")
    ax.plot(ps, bottom, "o-", color="tab:orange", label="bottom-$p$ eigenvectors")
    true_val = wb.variational_compression_rate(Z0, Pi0, U_true[None], eps)
    ax.plot([U_true.shape[1]], [true_val], "*", ms=14, color="tab:red", label="true basis")
    ax.axhline(Rc0, ls="--", color="k", label="exact $R_c$")
    ax.set(
        xlabel="number of columns $p$ of $U_0$", ylabel=r"$R_c^{\mathrm{var}}$ of group 0 (nats)"
    )
    ax.set_title("For p < d the variational value sees only the projection")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


# ---------------------------------------------------------------- chapter 3: gradient


def plot_one_step(Z, Z_next, factors, mix, eps, n_steps=8):
    """Left: a 2-D group before and after one step. Right: R_c^var over repeated steps."""
    traj = [mix.Z]
    tau = mix.Z.shape[1] * eps**2 / mix.Z.shape[0]  # n / c
    for _ in range(n_steps):
        traj.append(wb.tssa_step(traj[-1], mix.Pi, mix.U, eps, tau))
    values = [wb.variational_compression_rate(Zt, mix.Pi, mix.U, eps) for Zt in traj]
    fig, (ax, ax1) = plt.subplots(1, 2, figsize=(13, 4.5), width_ratios=[1.4, 1])
    ax.scatter(Z[0], Z[1], s=6, alpha=0.5, label="tokens $Z$")
    ax.scatter(Z_next[0], Z_next[1], s=6, alpha=0.7, label=r"after one step")
    sel = slice(0, Z.shape[1], 8)
    dZ = Z_next - Z
    ax.quiver(Z[0, sel], Z[1, sel], dZ[0, sel], dZ[1, sel], angles="xy", scale_units="xy",
              scale=1, width=0.003, color="k")  # fmt: skip
    ax.set(xlim=(-6, 6), ylim=(-1.2, 1.2))  # the two axes have different scales
    ax.set_xlabel(f"$z_1$ (spread 2: factor {factors[0]:.2f})")
    ax.set_ylabel(f"$z_2$ (spread 0.3: factor {factors[1]:.2f})")
    ax.set_title(r"One step with $\tau = n\epsilon^2/d$: the thin direction shrinks")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    ax1.plot(range(len(values)), values, "o-")
    ax1.set(xlabel="number of steps", ylabel=r"$R_c^{\mathrm{var}}(Z, \Pi \mid U)$ (nats)")
    ax1.set_title("Repeated steps on a 4-subspace mixture (true U, Π)")
    fig.tight_layout()
    plt.show()


def descent_curves(Z, Pi, U, eps, m_max=3.0):
    """R_c^var after one step of size tau = m 2n/c, and the majorizer's guarantee, both relative.

    Returns (ms, actual, bound) with actual = (R(Z - tau grad) - R(Z)) / R(Z) and
    bound = -tau (1 - tau c / 2n) ||grad||_F^2 / R(Z), which chapter 3 proves is >= actual.
    """
    ms = np.linspace(0, m_max, 61)
    d, n = Z.shape
    c = d / eps**2
    R = wb.variational_compression_rate(Z, Pi, U, eps)
    G2 = np.sum(wb.variational_compression_grad(Z, Pi, U, eps) ** 2)
    taus = ms * 2 * n / c
    actual = [
        wb.variational_compression_rate(wb.tssa_step(Z, Pi, U, eps, t), Pi, U, eps) for t in taus
    ]
    bound = -taus * (1 - taus * c / (2 * n)) * G2 / R
    return ms, (np.array(actual) - R) / R, bound


def _descent_axes(ax, ms, actual, bound, title):
    ax.axvspan(0, 1, color="tab:green", alpha=0.1, label=r"$0 \leq \tau \leq 2n/c$")
    ax.axhline(0, color="k", lw=0.8)
    ax.plot(ms, bound, "--", color="tab:gray", label="guarantee (majorizer)")
    ax.plot(ms, actual, color="tab:blue", label=r"actual change of $R_c^{\mathrm{var}}$")
    low = 1.2 * min(np.min(actual), np.min(bound))
    ax.set(
        xlabel=r"step size $\tau$ in units of $2n/c$", ylabel="relative change", ylim=(low, -low)
    )
    ax.set_title(title)


def plot_descent(cases, eps):
    """One panel per case {title: (Z, Pi, U)}: actual change against the guarantee."""
    fig, axes = plt.subplots(1, len(cases), figsize=(6 * len(cases), 3.8))
    for ax, (title, (Z, Pi, U)) in zip(np.atleast_1d(axes), cases.items()):
        _descent_axes(ax, *descent_curves(Z, Pi, U, eps), title)
    np.atleast_1d(axes)[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    plt.show()


def tau_slider(Z, Pi, U, eps):
    """A slider for tau: a 2-D group before and after the step, and where tau sits on the curve."""
    import ipywidgets

    ms, actual, bound = descent_curves(Z, Pi, U, eps)
    d, n = Z.shape

    def show(m=0.5):
        Z_next = wb.tssa_step(Z, Pi, U, eps, m * 2 * n * eps**2 / d)
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
        ax0.scatter(Z[0], Z[1], s=5, alpha=0.4, label="tokens")
        ax0.scatter(Z_next[0], Z_next[1], s=5, alpha=0.7, label="after the step")
        ax0.set(xlim=(-6, 6), ylim=(-3, 3), xlabel="$z_1$", ylabel="$z_2$")
        ax0.legend(fontsize=8, loc="lower right")
        _descent_axes(ax1, ms, actual, bound, rf"$\tau$ = {m:.2f} $\times\, 2n/c$")
        R0 = wb.variational_compression_rate(Z, Pi, U, eps)
        R1 = wb.variational_compression_rate(Z_next, Pi, U, eps)
        ax1.plot([m], [(R1 - R0) / R0], "o", color="tab:red", ms=8)
        fig.tight_layout()
        plt.show()

    ipywidgets.interact(
        show, m=ipywidgets.FloatSlider(value=0.5, min=0, max=3, step=0.05, description="τ / (2n/c)")
    )


# ---------------------------------------------------------------- chapter 4: step to attention


def _gain_axes(ax):
    y = np.logspace(-4, 2, 200)
    ax.loglog(y, 1 / y, "k--", lw=1, label="1 / y (fine-code limit)")
    ax.set(xlabel="statistic y", ylabel="gain c / (1 + c y)", ylim=(1e-2, 200))
    ax.grid(True, which="both", alpha=0.3)
    return y


def plot_gain(cs=(0.1, 1.0, 16.0, 64.0)):
    """The gain c / (1 + c y) against the statistic y, for several c (log-log)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    y = _gain_axes(ax)
    for c in cs:
        ax.loglog(y, c / (1 + c * y), label=f"c = {c:g}")
    ax.set_title("the gain: flat at c for c y << 1, along 1/y for c y >> 1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def gain_slider():
    """A slider for c = d / eps^2: the gain curve, its bend at y = 1/c, and the layer's c = 1."""
    import ipywidgets

    def show(log10_c=1.0):
        c = 10.0**log10_c
        fig, ax = plt.subplots(figsize=(6, 4))
        y = _gain_axes(ax)
        ax.loglog(y, 1 / (1 + y), color="tab:gray", lw=1, label="the layer (c dropped: c = 1)")
        ax.loglog(y, c / (1 + c * y), color="tab:red", lw=2, label=f"c = {c:.3g}")
        ax.axvline(1 / c, color="tab:red", ls=":", lw=1)
        ax.set_title(f"bend at y = 1/c = eps^2/d = {1 / c:.3g}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        plt.show()

    ipywidgets.interact(
        show,
        log10_c=ipywidgets.FloatSlider(value=1.0, min=-2, max=3, step=0.25, description="log10 c"),
    )


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


# ================================================================ chapters 8 to 13
# (one section per chapter; a chapter's helpers go right under its own heading)

# ---------------------------------------------------------------- chapter 8: causal TSSA


def ch8_random_params(D, H, block_size, rng, temp_range=(0.5, 2.0)):
    """Causal TSSA parameters: chapter 7's (weights of order 1/sqrt(D), so that the statistics
    are of order 1) plus a nonzero position bias denom_bias of shape (H, block_size, 1)."""
    return {
        "qkv.weight": rng.standard_normal((D, D)) / np.sqrt(D),
        "qkv.bias": 0.1 * rng.standard_normal(D),
        "temp": rng.uniform(*temp_range, size=(H, 1)),
        "denom_bias": 0.1 * rng.standard_normal((H, block_size, 1)),
        "proj.weight": rng.standard_normal((D, D)) / np.sqrt(D),
        "proj.bias": 0.1 * rng.standard_normal(D),
    }


def _ch8_cache_bytes(obj):
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_ch8_cache_bytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(_ch8_cache_bytes(v) for v in obj)
    return 0


def ch8_cache_mib(Ts, D=32, H=2, seed=1):
    """MiB of every array each causal layer's forward pass keeps in its cache (float32, B = 1),
    for each length in Ts; also causal softmax attention's stored A (B, H, T, T) at the last length."""
    rng = np.random.default_rng(seed)
    f32 = lambda d: {k: v.astype(np.float32) for k, v in d.items()}  # noqa: E731
    p_tssa = f32(ch8_random_params(D, H, max(Ts), rng))
    p_soft = f32({"qkv.weight": rng.standard_normal((D, 3 * D)) / np.sqrt(D),
                  "qkv.bias": np.zeros(3 * D), "proj.weight": p_tssa["proj.weight"],
                  "proj.bias": p_tssa["proj.bias"]})  # fmt: skip
    mib = {"causal TSSA": [], "causal softmax": []}
    for T in Ts:
        x = rng.standard_normal((1, T, D)).astype(np.float32)
        _, c_tssa = wb.nn.causal_tssa_forward(x, p_tssa)
        _, c_soft = wb.nn.softmax_attention_forward(x, p_soft, H, causal=True)
        mib["causal TSSA"].append(_ch8_cache_bytes(c_tssa) / 2**20)
        mib["causal softmax"].append(_ch8_cache_bytes(c_soft) / 2**20)
    return {k: np.array(v) for k, v in mib.items()}, c_soft["attn"]


def ch8_token_jacobians(T=24, D=8, H=2, seed=4):
    """(T, T) norms of the blocks d out_t / d x_u of causal TSSA, causal softmax attention and
    the non-causal TSSA layer, each from one batched backward pass (copy (t, d) of the sequence
    gets the unit upstream gradient on out[t, d], so its dx is row (t, d) of the Jacobian)."""
    nn = wb.nn
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, T, D))
    pj = ch8_random_params(D, H, T, rng)
    pj_soft = {"qkv.weight": rng.standard_normal((D, 3 * D)) / np.sqrt(D),
               "qkv.bias": np.zeros(3 * D), "proj.weight": pj["proj.weight"],
               "proj.bias": pj["proj.bias"]}  # fmt: skip
    pj_nc = {k: v for k, v in pj.items() if k != "denom_bias"}
    seeds = np.eye(T * D).reshape(T * D, T, D)
    xb = np.repeat(x, T * D, axis=0)
    norms = lambda dx: np.sqrt((dx.reshape(T, D, T, D) ** 2).sum(axis=(1, 3)))  # noqa: E731
    jac = {}
    _, c = nn.causal_tssa_forward(xb, pj)
    jac["causal TSSA"] = norms(nn.causal_tssa_backward(seeds, c)[0])
    _, c = nn.softmax_attention_forward(xb, pj_soft, H, causal=True)
    jac["causal softmax attention"] = norms(nn.softmax_attention_backward(seeds, c)[0])
    _, c = nn.tssa_forward(xb, pj_nc)
    jac["non-causal TSSA"] = norms(nn.tssa_backward(seeds, c)[0])
    return jac


def ch8_plot_jacobians(jac):
    """The (T, T) block norms of each layer side by side, log scale, exact zeros white."""
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, len(jac), figsize=(15, 4.6))
    vmin = min(Jb[Jb > 0].min() for Jb in jac.values())
    vmax = max(Jb.max() for Jb in jac.values())
    for ax, (name, Jb) in zip(axes, jac.items()):
        im = ax.imshow(np.where(Jb > 0, Jb, np.nan), cmap="viridis", norm=LogNorm(vmin, vmax))
        ax.set(title=name, xlabel="input token $u$", ylabel="output token $t$")
    label = r"$\|\partial\,\mathrm{out}_t/\partial x_u\|_F$ (white = 0)"
    fig.colorbar(im, ax=axes, fraction=0.02, label=label)
    plt.show()


def ch8_last_token_layers(T=64, D=12, H=3, seed=7):
    """Causal and non-causal TSSA on one sequence, same weights, beta_T = 0, W_out = I and
    b_out = 0 (so out = merge(v)). Returns w, Pi and the statistics y read off the outputs,
    y = -Pi w / v - 1, all per head: w (H, T, p), pi_c, pi_nc (H, T), y_c (H, T, p), y_nc (H, p)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, T, D))
    params = ch8_random_params(D, H, T, rng, temp_range=(2.0, 8.0))
    params["denom_bias"][:, T - 1] = 0.0  # beta at the last position
    params["proj.weight"], params["proj.bias"] = np.eye(D), np.zeros(D)  # out = merge(v)
    params_nc = {k: v for k, v in params.items() if k != "denom_bias"}
    out_c, cc = wb.nn.causal_tssa_forward(x, params)
    out_nc, cn = wb.nn.tssa_forward(x, params_nc)
    heads = lambda a: a.reshape(T, H, D // H).transpose(1, 0, 2)  # noqa: E731
    w = heads(x[0] @ params["qkv.weight"] + params["qkv.bias"])
    pi_c, pi_nc = cc["pi"][0], cn["pi"][0]
    y_c = -pi_c[..., None] * w / heads(out_c[0]) - 1  # one set of statistics per prefix
    y_nc = (-pi_nc[..., None] * w / heads(out_nc[0]) - 1)[:, 0]  # the same for every token
    return dict(w=w, pi_c=pi_c, pi_nc=pi_nc, y_c=y_c, y_nc=y_nc, out_c=out_c, out_nc=out_nc)


def ch8_plot_last_token(r):
    """Left: the membership of head 0, causal (solid) and non-causal (dashed); right: the running
    statistics y_ht1 of each head against the non-causal y_h1 (dashed)."""
    H, T = r["pi_c"].shape
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    t_axis = np.arange(1, T + 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    axes[0].plot(t_axis, r["pi_c"][0], color=colors[0], label="causal")
    axes[0].plot(t_axis, r["pi_nc"][0], "--", color=colors[1], label="non-causal")
    axes[0].plot(T, r["pi_c"][0, -1], "ko", ms=5, label="$t = T$: equal")
    axes[0].axhline(1 / H, color="gray", lw=0.8, ls=":", label="$1/H$")
    for h in range(H):
        axes[1].plot(t_axis, r["y_c"][h, :, 0], color=colors[h], label=f"head {h}: running $y_t$")
        axes[1].axhline(r["y_nc"][h, 0], ls="--", color=colors[h], alpha=0.7)
    axes[0].set(
        xlabel="token $t$", ylabel=r"$\Pi_{0t}$", title=r"membership of head 0 ($\beta_T = 0$)"
    )
    axes[1].set(
        xlabel="token $t$", ylabel=r"$y_{ht1}$", title="running statistics (dashed: non-causal)"
    )
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


# ---------------------------------------------------------------- chapter 9: training on digits
def ch9_tuning(tuning: dict, name: str) -> dict:
    """One model's tuning from ``results/tuning.json``, in either of its two formats.

    Old: one grid for all models (``grid = {"lr": [...], "weight_decay": [...]}``), one seed
    (``seed``), the runs are the settings. New: a grid per model (``grid[name]["lr"]``), the seeds
    in ``seeds``, the mean over them per setting in ``settings[name]``. Returns ``grid``,
    ``seeds``, ``settings`` (each with ``lr``, ``weight_decay``, ``val_accuracy``), ``chosen``
    and ``edge`` (per parameter: "inside", "smallest" or "largest" value run)."""
    grid = tuning["grid"]
    grid = grid[name] if name in grid else grid
    seeds = list(tuning.get("seeds", [tuning.get("seed", 0)]))
    if name in tuning.get("settings", {}):
        settings = tuning["settings"][name]
    else:
        settings = [dict(r, seeds=seeds) for r in tuning["runs"] if r["config"] == name]
    chosen = tuning["chosen"][name]
    edge = {}
    for param in ("lr", "weight_decay"):
        values = sorted(grid[param])
        v = chosen[param]
        edge[param] = "smallest" if v == values[0] else "largest" if v == values[-1] else "inside"
    return {"grid": grid, "seeds": seeds, "settings": settings, "chosen": chosen, "edge": edge}


def ch9_print_tuning(tuning: dict, names: dict) -> dict:
    """Print each model's validation accuracy over the settings it was run with (lr rows, weight
    decay columns; * the chosen one, . not run) and where its choice lies. Returns the
    :func:`ch9_tuning` view of each model."""
    budget = tuning.get("budget")
    print("budget:", budget.get("digits", budget) if isinstance(budget, dict) else budget)
    views = {}
    for name, label in names.items():
        v = views[name] = ch9_tuning(tuning, name)
        acc = {(s["lr"], s["weight_decay"]): s["val_accuracy"] for s in v["settings"]}
        run = set(acc)
        star = (v["chosen"]["lr"], v["chosen"]["weight_decay"])
        print(f"\n{label}: validation accuracy, mean over seeds {v['seeds']}")
        print("         " + "".join(f"  wd {wd:<6g}" for wd in v["grid"]["weight_decay"]))
        for lr in v["grid"]["lr"]:
            row = []
            for wd in v["grid"]["weight_decay"]:
                a = acc.get((lr, wd))
                mark = "*" if (lr, wd) == star else " "
                row.append("    .    " if (lr, wd) not in run else " diverged" if a is None
                           else f"  {a:.4f}{mark}")  # fmt: skip
            print(f"lr {lr:<6g}" + "".join(f"  {c:<9s}" for c in row))
        for param, word in (("lr", "learning rate"), ("weight_decay", "weight decay")):
            edge = v["edge"][param]
            where = "strictly inside" if edge == "inside" else f"ON THE EDGE (the {edge} value)"
            print(f"  chosen {word} {v['chosen'][param]:g}: {where}; values run {v['grid'][param]}")
    return views


def ch9_print_comparison(res: dict, labels: dict, n_test: int) -> np.ndarray:
    """The per-seed test accuracies of both models and their paired differences (ToST minus
    softmax, same seed; also in test images, of ``n_test``); prints who is ahead, computed.
    Returns the differences."""
    print(f"{'model':14s} {'lr':>6s} {'wd':>5s} {'parameters':>10s}   test accuracy per seed"
          "             mean ± std")  # fmt: skip
    for name, d in res.items():
        per_seed = "  ".join(f"{v:.4f}" for v in d["values"])
        print(f"{labels[name]:14s} {d['setting']['lr']:6g} {d['setting']['weight_decay']:5g} "
              f"{d['params']:10,d}   {per_seed}   {d['mean']:.4f} ± {d['std']:.4f}")  # fmt: skip
    # the values are fractions of the test set stored to 4 decimals: a difference below 1e-6 is 0
    diff = np.round(np.array(res["tssa"]["values"]) - np.array(res["softmax"]["values"]), 6)
    n = len(diff)
    print(f"\nToST minus softmax, paired by seed: {' '.join(f'{d:+.4f}' for d in diff)}")
    print(f"  in test images (of {n_test}): {' '.join(f'{round(d * n_test):+d}' for d in diff)}")
    print(f"mean difference {diff.mean():+.4f} ± {diff.std(ddof=1):.4f} (std over the seeds)")
    print(f"ToST ahead of the softmax baseline in {int((diff > 0).sum())} of {n} seeds, "
          f"behind in {int((diff < 0).sum())}, level in {int((diff == 0).sum())}")  # fmt: skip
    m = round(float(diff.mean()), 6)
    higher = "ToST's" if m > 0 else "the softmax baseline's" if m < 0 else "neither (equal means)"
    print(f"higher mean test accuracy: {higher}")
    return diff


def ch9_plot_patches(X, y):
    """The first test digit of each class with the 4 x 4 grid of 2 x 2 patches."""
    first = [int(np.flatnonzero(y == c)[0]) for c in range(10)]
    fig, axes = plt.subplots(1, 10, figsize=(10, 1.4))
    for c, ax in enumerate(axes):
        ax.imshow(X[first[c], 0], cmap="gray_r")
        ax.set_xticks(np.arange(-0.5, 8, 2), minor=True)
        ax.set_yticks(np.arange(-0.5, 8, 2), minor=True)
        ax.grid(which="minor", color="C1", lw=0.6)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.set_title(f"label {y[first[c]]}", fontsize=8)
    fig.suptitle(
        "test digits with the 4 x 4 grid of 2 x 2 patches (one token per patch)", fontsize=9
    )
    fig.tight_layout()
    plt.show()


def ch9_plot_seeds(res: dict, labels: dict):
    """Left: test accuracy over the epochs, one line per seed. Right: the final accuracies per
    seed, joined by seed, and the mean ± std of each model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 1]})
    for k, (name, color) in enumerate([("tssa", "C0"), ("softmax", "C3")]):
        for i, p in enumerate(res[name]["per_seed"]):
            ep = [h["epoch"] for h in p["history"]]
            axes[0].plot(ep, [h["test_accuracy"] for h in p["history"]], color=color, lw=0.8,
                         alpha=0.6, label=labels[name] if i == 0 else None)  # fmt: skip
        x = k + np.linspace(-0.12, 0.12, len(res[name]["values"]))
        axes[1].plot(x, res[name]["values"], "o", color=color, ms=5)
        axes[1].errorbar(k + 0.3, res[name]["mean"], res[name]["std"], fmt="s", color=color,
                         capsize=3)  # fmt: skip
    x = np.linspace(-0.12, 0.12, len(res["tssa"]["values"]))
    for s, (a, b) in enumerate(zip(res["tssa"]["values"], res["softmax"]["values"])):
        axes[1].plot([x[s], 1 + x[s]], [a, b], color="k", lw=0.4, alpha=0.4)
    axes[0].set(xlabel="epoch", ylabel="test accuracy", ylim=(0.5, 1.0),
                title="test accuracy during training, one line per seed")  # fmt: skip
    axes[0].legend(fontsize=8)
    axes[1].set_xticks([0, 1], ["ToST", "softmax"])
    axes[1].set_title("final, per seed (o) and mean ± std (■)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.show()


def ch9_train_quietly(epochs: int, seed: int = 0, **setting):
    """One ToST run on the digits in a temporary folder, without its progress output.
    Returns (model, history, config)."""
    import contextlib
    import io
    import tempfile
    from pathlib import Path

    from whitebox.checkpoint import load_checkpoint
    from whitebox.train import make_config, train

    cfg = make_config(task="digits", attention="tssa", epochs=epochs, seed=seed,
                      out=tempfile.mkdtemp(), **setting)  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        path = Path(train(cfg, progress=False)["checkpoint"])
    return wb.models.load(path), load_checkpoint(path)["meta"]["history"], cfg


def ch9_print_history(history: list, every: int = 5):
    print("epoch  train loss  test loss  test acc")
    for row in history:
        if row["epoch"] % every == 0 or row["epoch"] == 1:
            print(f"{row['epoch']:5d}  {row['train_loss']:10.4f}  {row['test_loss']:9.4f}  "
                  f"{row['test_accuracy']:8.4f}")  # fmt: skip


def ch9_plot_pi(X, y, pi, classes=(0, 2, 4, 7)):
    """For the first test digit of each of ``classes``: the digit, then every block's and head's
    membership Pi_hj reshaped to the 4 x 4 patch grid (colour scale fixed to [0, 1])."""
    L, H = len(pi), pi[0].shape[1]
    show = [int(np.flatnonzero(y == c)[0]) for c in classes]
    fig, axes = plt.subplots(len(show), 1 + L * H, figsize=(1.25 * (1 + L * H), 1.35 * len(show)))
    for r, i in enumerate(show):
        axes[r, 0].imshow(X[i, 0], cmap="gray_r")
        axes[r, 0].set_ylabel(f"label {y[i]}", fontsize=8)
        for l in range(L):
            for h in range(H):
                ax = axes[r, 1 + l * H + h]
                im = ax.imshow(pi[l][i, h].reshape(4, 4), vmin=0, vmax=1, cmap="viridis")
                if r == 0:
                    ax.set_title(f"block {l + 1}, head {h + 1}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("digit", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label=r"$\Pi_{hj}$")
    plt.show()


CH9_SHARES = ("confidence", "entropy", "position_share_mean", "class_share_mean",
              "individual_share_mean")  # fmt: skip


def ch9_print_membership(summary: dict, heads: int):
    """Mean ± std over the seeds of each block's confidence, entropy and variance shares, for the
    trained networks and at initialization; then the counts of the stored claims."""
    spread = summary["spread"]
    print(f"mean ± std over the seeds (shares averaged over the {heads} heads of a block)")
    print("network          block  confidence       entropy          position         class"
          "            individual")  # fmt: skip
    for state, title in (("trained", "trained ToST"), ("init", "at initialization")):
        for l in range(summary["blocks"]):
            cols = [spread[f"{state}_{k}"][l] for k in CH9_SHARES]
            print(f"{title:17s} {l + 1:5d}  "
                  + "  ".join(f"{c['mean']:.3f} ± {c['std']:.3f}" for c in cols))  # fmt: skip
    print()
    for key in ("training_sharpens_pi_block1", "training_sharpens_pi_block2",
                "block1_more_positional_than_block2", "block1_more_positional_than_at_init"):  # fmt: skip
        c = summary["claims"][key]
        print(f"{key:40s} held in {c['held']} of {c['of']} seeds {c['seeds']}")


def ch9_plot_membership(per_seed: list, blocks: int):
    """Position share, class share and confidence per block, one point per seed, trained and at
    initialization."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    keys = [("position_share_mean", "position share"), ("class_share_mean", "class share"),
            ("confidence", "confidence")]  # fmt: skip
    for ax, (key, title) in zip(axes, keys):
        for state, color, dx in (("trained", "C0", -0.1), ("init", "C7", 0.1)):
            for l in range(blocks):
                vals = [r[state]["membership"][l][key] for r in per_seed]
                label = (
                    ("trained" if state == "trained" else "at initialization") if l == 0 else None
                )
                ax.plot(np.full(len(vals), l + 1 + dx), vals, "o", color=color, ms=4, label=label)
        ax.set_xticks(range(1, blocks + 1), [f"block {l + 1}" for l in range(blocks)])
        ax.set_title(f"{title}, one point per seed")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    plt.show()


# ---------------------------------------------------------------- chapter 10: inside the white box


def ch10_ms(c):
    """'mean ± std' of a spread entry of results/*.json."""
    return f"{c['mean']:6.3f} ± {c['std']:.3f}"


def ch10_rates_table(spread, softmax_summary, L):
    """R, R_c and Delta R at each block's input and output, mean ± std over the seeds, for the
    trained ToST, the same network at initialization, and (R only) the softmax baseline."""
    print("network          block |  R in            R out          |  R_c in          R_c out"
          "        |  dR in           dR out")  # fmt: skip
    for state, title in (("trained", "ToST trained"), ("init", "ToST at init")):
        for l in range(L):
            cols = [spread[f"{state}_{k}_{io}"][l] for k in ("R", "R_c", "delta_R")
                    for io in ("in", "out")]  # fmt: skip
            print(f"{title:16s} {l + 1:5d} | "
                  + " | ".join(f"{ch10_ms(cols[2 * i])} {ch10_ms(cols[2 * i + 1])}" for i in range(3)))  # fmt: skip
    for l in range(L):
        print(f"{'softmax trained':16s} {l + 1:5d} | {ch10_ms(softmax_summary['R_in'][l])} "
              f"{ch10_ms(softmax_summary['R_out'][l])} |")  # fmt: skip


def ch10_delta_r(per_seed):
    """(seeds, blocks, 2): Delta R at each block's input and output, each under the block's Pi."""
    return np.array([[(b["in"]["delta_R"], b["out"]["delta_R"]) for b in r["trained"]["rates"]]
                     for r in per_seed])  # fmt: skip


def ch10_print_delta_r(dr):
    """Within each block, at each boundary (the same tokens under the next block's Pi), and end
    to end: Delta R's change and in how many seeds it is positive."""
    for title, d in dr.items():
        within = (d[:, :, 1] > d[:, :, 0]).sum(axis=0)
        jumps = d[:, 1:, 0] - d[:, :-1, 1]  # (seeds, boundaries)
        print(f"\ntrained ToST, {title} ({len(d)} seeds):")
        print(f"  within block l = 1..{d.shape[1]} (under Pi_l): Delta R rises in "
              f"{within.tolist()} seeds")  # fmt: skip
        for l in range(jumps.shape[1]):
            print(f"  boundary {l + 1}|{l + 2}: the same tokens Z_{l + 1} under Pi_{l + 2} instead of "
                  f"Pi_{l + 1}: Delta R changes by {jumps[:, l].mean():+.3f} ± "
                  f"{jumps[:, l].std(ddof=1):.3f}, up in {(jumps[:, l] > 0).sum()} seeds")  # fmt: skip
        ends = d[:, -1, 1] - d[:, 0, 0]
        print(f"  end to end: Delta R(Z_{d.shape[1]} | Pi_{d.shape[1]}) - Delta R(Z_0 | Pi_1) = "
              f"{ends.mean():+.3f} ± {ends.std(ddof=1):.3f}, positive in {(ends > 0).sum()} seeds")  # fmt: skip


def _ch10_segments(ax, rates, key, color, label=None, jump_label=None):
    """One line per block (input -> output under its own Pi), dotted where Pi changes."""
    for l in range(len(rates)):
        ax.plot([l, l + 1], [rates[l]["in"][key], rates[l]["out"][key]], "o-", color=color,
                lw=0.8, ms=3, alpha=0.7, label=label if l == 0 else None)  # fmt: skip
        if l + 1 < len(rates) and key != "R":  # the same tokens Z_{l+1}, the next block's Pi
            ax.plot([l + 1, l + 1], [rates[l]["out"][key], rates[l + 1]["in"][key]], ":",
                    color=color, lw=1.2, alpha=0.9, label=jump_label if l == 0 else None)  # fmt: skip


def ch10_plot_rates(per_seed, softmax_per_seed, deep_per_seed, L):
    """R, R_c, Delta R of the two-block ToST (trained, at init) and the softmax baseline's R,
    one line per seed; right: Delta R of the six-block ToST, with the jumps where Pi changes."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for state, color in (("trained", "C0"), ("init", "C7")):
        for i, r in enumerate(per_seed):
            for k, key in enumerate(("R", "R_c", "delta_R")):
                label = (
                    ("ToST trained" if state == "trained" else "ToST at init") if i == 0 else None
                )
                jump = "Pi changes (same tokens)" if state == "trained" and i == 0 else None
                _ch10_segments(axes[k], r[state]["rates"], key, color, label, jump)
    for i, r in enumerate(softmax_per_seed):
        _ch10_segments(axes[0], r["trained"]["rates"], "R", "C3",
                       "softmax trained" if i == 0 else None)  # fmt: skip
    for r in deep_per_seed:
        _ch10_segments(axes[3], r["trained"]["rates"], "delta_R", "C0")
    titles = [r"$R$ (no grouping)", r"$R_c(\,\cdot \mid \Pi_l)$", r"$\Delta R = R - R_c$"]
    for ax, title in zip(axes, titles):
        ax.set_xticks(range(L + 1), [f"$Z_{l}$" for l in range(L + 1)])
        ax.set_title(title + ", one line per seed")
        ax.set_xlabel("tokens (each segment: one block, under its own $\\Pi_l$)", fontsize=8)
    axes[3].set_xticks(range(len(deep_per_seed[0]["trained"]["rates"]) + 1))
    axes[3].set_title(r"$\Delta R$, six-block ToST (section 5)")
    axes[3].set_xlabel("tokens $Z_l$; dotted: the same tokens under the next block's $\\Pi$",
                       fontsize=8)  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("nats per image (eps = 0.5, unit tokens)")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def ch10_plot_substep_hist(live, L):
    """The live run: per test image, the change of R_c^var across block l's attention sub-step."""
    fig, axes = plt.subplots(1, L, figsize=(5 * L, 3.4))
    for l, ax in enumerate(axes):
        for name, color in [("ToST trained", "C0"), ("ToST at init", "C7")]:
            ax.hist(live[name][l]["change"], bins=40, color=color, alpha=0.7, label=name)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"live run, block {l + 1}: change of $R_c^{{var}}$ across attention")
        ax.set_xlabel(r"$R_c^{var}(X_1) - R_c^{var}(X_0)$ per test image (nats)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("images")
    fig.tight_layout()
    plt.show()


def ch10_substep_table(spread, claims, L, eps_list):
    """Per precision, block and state: share of images whose R_c^var the attention sub-step
    lowers, mean change, mean cosine with -grad R_c^var, and the seed counts."""
    print("  eps  network       block | lowered in (share of images)  | mean change       "
          "| mean cos          | every image | on average")  # fmt: skip
    for eps in (f"{e:g}" for e in eps_list):
        for state, title in (("trained", "ToST trained"), ("init", "ToST at init")):
            for l in range(L):
                share = spread[f"{state}_attention_lowers_share_eps{eps}"][l]
                change = spread[f"{state}_attention_change_eps{eps}"][l]
                cos = spread[f"{state}_cos_mean_eps{eps}"][l]
                every = claims[f"{state}_block{l + 1}_lowers_rc_var_in_every_image_eps{eps}"]
                avg = claims[f"{state}_block{l + 1}_lowers_rc_var_on_average_eps{eps}"]
                print(f"{eps:>5s}  {title:13s} {l + 1:5d} | {share['mean']:6.1%} ± {share['std']:5.1%} "
                      f"(min {share['min']:6.1%}) | {change['mean']:+.3f} ± {change['std']:.3f} "
                      f"| {cos['mean']:+.3f} ± {cos['std']:.3f} |   {every['held']} of {every['of']}"
                      f"   |  {avg['held']} of {avg['of']}")  # fmt: skip


CH10_ARMS = (
    ("trained", "ToST's update", "C0"),
    ("random", "random, same norms", "C7"),
    ("softmax", "softmax net's update", "C1"),
)


def ch10_controls(per_seed, eps, block, key):
    """{arm: per-seed values of ``key``} for one block's attention update and its two controls
    (``analysis.update_controls``, stored by ``make results`` under trained/controls)."""
    return {arm: np.array([r["trained"]["controls"][eps][block][arm][key] for r in per_seed])
            for arm, _, _ in CH10_ARMS}  # fmt: skip


def ch10_controls_table(per_seed, L, eps_list):
    """Per precision and block: each arm's mean change of R_c^var, share of images lowered and
    share of the update's energy along -grad R_c^var (mean +- std over the seeds)."""
    print(
        "  eps block  update                | change of R_c^var | images lowered | energy along -grad"
    )
    for eps in (f"{e:g}" for e in eps_list):
        for l in range(L):
            cols = [
                ch10_controls(per_seed, eps, l, k)
                for k in ("change_mean", "lowers_share", "cos2_mean")
            ]
            for arm, title, _ in CH10_ARMS:
                ch, lo, e2 = (c[arm] for c in cols)
                print(
                    f"{eps:>5s} {l + 1:5d}  {title:21s} | {ch.mean():+.3f} ± {ch.std():.3f}    "
                    f"| {lo.mean():6.1%} ± {lo.std():4.1%} | {e2.mean():6.1%} ± {e2.std():4.1%}"
                )
    print()


def ch10_control_counts(per_seed, eps_list):
    """What section 4's controls cell checks, per precision: block 1's energy share of ToST's
    update over the random one's (per seed), the random update's share, the seeds in which ToST's
    update lowers R_c^var further than the random one (blocks 1 and 2), and whether the softmax
    network's update lowers R_c^var less and has a smaller share than ToST's in every seed."""
    arms = lambda e, l, k: ch10_controls(per_seed, f"{e:g}", l, k)  # noqa: E731
    further = lambda l: [int(np.sum(arms(e, l, "change_mean")["trained"] < arms(e, l, "change_mean")["random"]))
                         for e in eps_list]  # fmt: skip
    return {
        "ratio": np.array([arms(e, 0, "cos2_mean")["trained"] / arms(e, 0, "cos2_mean")["random"] for e in eps_list]),
        "random_share": np.array([arms(e, 0, "cos2_mean")["random"] for e in eps_list]),
        "further_block1": further(0),
        "further_block2": further(1),
        "softmax_less": all(np.all(arms(e, 0, k)["softmax"] * s < arms(e, 0, k)["trained"] * s)
                            for e in eps_list for k, s in (("change_mean", -1), ("cos2_mean", 1))),
    }  # fmt: skip


def ch10_plot_controls(per_seed, eps_list):
    """Block 1: the change of R_c^var and the energy share along -grad R_c^var of ToST's attention
    update and of the two controls, at each precision, one point per seed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, key, title in (
        (axes[0], "change_mean", "block 1: mean change of $R_c^{var}$"),
        (axes[1], "cos2_mean", r"block 1: share of the update's energy along $-\nabla R_c^{var}$"),
    ):
        for k, eps in enumerate(f"{e:g}" for e in eps_list):
            vals = ch10_controls(per_seed, eps, 0, key)
            for j, (arm, label, color) in enumerate(CH10_ARMS):
                ax.plot(
                    np.full(len(vals[arm]), k + 0.2 * (j - 1)),
                    vals[arm],
                    "o",
                    color=color,
                    ms=4,
                    label=label if k == 0 else None,
                )
        ax.set_xticks(range(len(eps_list)), [f"eps = {e:g}" for e in eps_list])
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def ch10_plot_substep_seeds(per_seed, L, eps_list):
    """Per block and precision: the share of test images whose R_c^var falls, one point per seed."""
    fig, axes = plt.subplots(1, L, figsize=(5.5 * L, 3.4))
    for l, ax in enumerate(axes):
        for k, eps in enumerate(f"{e:g}" for e in eps_list):
            for state, color, dx in (("trained", "C0", -0.12), ("init", "C7", 0.12)):
                vals = [r[state]["substep"][eps][l]["attention_lowers_share"] for r in per_seed]
                ax.plot(np.full(len(vals), k + dx), vals, "o", color=color, ms=4,
                        label=("trained" if state == "trained" else "at initialization") if k == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(eps_list)), [f"eps = {e:g}" for e in eps_list])
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(
            f"block {l + 1}: share of test images whose $R_c^{{var}}$ falls, one point per seed"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def ch10_seeds_curves(prof_seeds, state, split, rep, key):
    """(seeds, blocks): one quantity of layer_profile per block, for every seed."""
    return np.array([[blk[rep][key] for blk in r[state][split]] for r in prof_seeds])


def _ch10_band(ax, prof_seeds, state, split, rep, key, color, label, ls="-"):
    ys = ch10_seeds_curves(prof_seeds, state, split, rep, key)  # (seeds, blocks)
    x = np.arange(1, ys.shape[1] + 1)
    for y in ys:
        ax.plot(x, y, ls, color=color, lw=0.6, alpha=0.45)
    m, s = ys.mean(0), ys.std(0, ddof=1)
    ax.fill_between(x, m - s, m + s, color=color, alpha=0.2, lw=0)
    ax.plot(x, m, ls, color=color, lw=2, marker="o", ms=3, label=label)
    ax.set_xlabel("block $l$")
    ax.set_xticks(x)
    ax.grid(alpha=0.3)


CH10_REPS = {"in": "TSSA input LN$_1(Z_{l-1})$", "in_scaled": "TSSA input, rescaled per image",
             "tssa_out": "TSSA output $A$ (its own size)",
             "tssa_out_scaled": "TSSA output, rescaled to the LN scale",
             "out": "block output LN$_1(Z_l)$"}  # fmt: skip


def ch10_plot_profile(prof_seeds, eps):
    """R_c^var (polar bases) per block of the six-block ToST: one panel per kind of token;
    trained on training (blue) and test images (orange), at initialization (grey)."""
    fig, axes = plt.subplots(1, len(CH10_REPS), figsize=(4 * len(CH10_REPS), 3.6))
    for ax, (rep, title) in zip(axes, CH10_REPS.items()):
        key = "rc_var_polar"
        _ch10_band(ax, prof_seeds, "trained", "train", rep, key, "C0", "trained, training images")
        _ch10_band(ax, prof_seeds, "trained", "test", rep, key, "C1", "trained, test images", "--")
        _ch10_band(
            ax, prof_seeds, "init", "test", rep, key, "C7", "at initialization, test images", ":"
        )
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel(r"$R_c^{var}(\,\cdot\,,\Pi_l \mid U_l)$, nats per image")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"digits-tost-deep, {len(prof_seeds)} seeds: R_c^var per block "
                 f"(eps = {eps:g}, polar bases)")  # fmt: skip
    fig.tight_layout()
    plt.show()


def ch10_plot_offdiag(prof_seeds, covariances):
    """Off-diagonal share per block (TSSA input, rescaled TSSA output; polar, QR, raw bases;
    polar at initialization), and one head's covariance per basis in ``covariances``."""
    colors = {"polar": "C0", "qr": "C2", "raw": "C3"}
    fig, axes = plt.subplots(
        1, 4, figsize=(16, 3.6), gridspec_kw={"width_ratios": [1.3, 1.3, 1, 1]}
    )
    for ax, rep in zip(axes[:2], ("in", "tssa_out_scaled")):
        for kind, color in colors.items():
            _ch10_band(ax, prof_seeds, "trained", "test", rep, f"offdiag_{kind}", color,
                       f"trained, {kind}")  # fmt: skip
        _ch10_band(ax, prof_seeds, "init", "test", rep, "offdiag_polar", "C7",
                   "at initialization, polar", ":")  # fmt: skip
        ax.set_title(f"off-diagonal share: {CH10_REPS[rep]}", fontsize=10)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel(r"$\|offdiag(C)\|_F^2 / \|C\|_F^2$")
    axes[0].legend(fontsize=7)
    for ax, (kind, Ch) in zip(axes[2:], covariances.items()):
        lim = np.abs(Ch).max()
        ax.imshow(Ch, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"live run, block 1, head 1, {kind}\noff-diagonal share "
                     f"{wb.analysis.offdiag_share(Ch):.2f}", fontsize=9)  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    plt.show()


def ch10_profile_table(prof, prof_seeds):
    """Per block of the six-block ToST, mean ± std over the seeds; then, per curve, in how many
    seeds it is lower in the last block than in the first and in how many it falls at every block."""
    sp6, cl6, L6 = prof["spread"], prof["claims"], prof["blocks"]

    def ms6(name, l):
        return f"{sp6[name][l]['mean']:6.3f} ± {sp6[name][l]['std']:.3f}"

    print("block | R_c^var polar: input train | input test     | A rescaled test | |A| test       "
          "| off-diag input: polar  | qr             | raw            | R_c^var - R_c^proj, input")  # fmt: skip
    gap = (ch10_seeds_curves(prof_seeds, "trained", "test", "in", "rc_var_polar")
           - ch10_seeds_curves(prof_seeds, "trained", "test", "in", "rc_proj_polar"))  # fmt: skip
    names = ["train_in_rc_var_polar", "test_in_rc_var_polar", "test_tssa_out_scaled_rc_var_polar",
             "test_tssa_out_length", "test_in_offdiag_polar", "test_in_offdiag_qr",
             "test_in_offdiag_raw"]  # fmt: skip
    for l in range(L6):
        print(f"{l + 1:5d} | " + " | ".join(ms6(f"trained_{n}", l) for n in names)
              + f" | {gap[:, l].mean():6.3f} ± {gap[:, l].std(ddof=1):.3f}")  # fmt: skip
    rows = [("in", k) for k in ("rc_var_polar", "rc_var_qr", "rc_var_raw", "rc_proj_polar",
                                "offdiag_polar", "offdiag_raw")]  # fmt: skip
    rows += [("tssa_out", "rc_var_polar"), ("tssa_out", "length"), ("tssa_out_scaled", "rc_var_polar"),
             ("tssa_out_scaled", "offdiag_polar"), ("out", "rc_var_polar"), ("out", "offdiag_polar")]  # fmt: skip
    n6 = len(prof_seeds)
    print(f"\nin how many of the {n6} seeds the trained network's curve ...")
    print("curve                               | falls: train test | falls every block: train test")
    for rep, key in rows:
        cnt = [cl6[f"trained_{split}_{rep}_{key}_falls{tail}"] for tail in ("", "_every_block")
               for split in ("train", "test")]  # fmt: skip
        assert all(c["of"] == n6 for c in cnt)
        print(f"{rep + ' ' + key:35s} |          {cnt[0]['held']}    {cnt[1]['held']} |"
              f"                    {cnt[2]['held']}    {cnt[3]['held']}")  # fmt: skip


# ---------------------------------------------------------------- chapter 11: a language model

CH11_LABELS = {"tssa": "ToST (causal TSSA)", "softmax": "GPT (softmax)"}


def ch11_grid(tuning, name):
    """The learning rates and weight decays run for ``name`` (e.g. 'text-tssa'), sorted.

    ``results/tuning.json`` holds either one grid per model (grid[name]['lr']) or, in its first
    form, one grid shared by every model (grid['lr']); both are read here.
    """
    grid = tuning["grid"]
    grid = grid[name] if name in grid else grid
    return sorted(grid["lr"]), sorted(grid["weight_decay"])


def ch11_tuning_seeds(tuning):
    """The seeds every tuning setting was run with (the first form ran one: 'seed')."""
    return list(tuning["seeds"]) if "seeds" in tuning else [tuning["seed"]]


def ch11_tuning_table(tuning, name, key="val_loss"):
    """{(lr, weight_decay): mean of ``key`` over the runs of that setting} for every setting
    ``name`` was run with; None where a run diverged (no value)."""
    groups = {}
    for r in tuning["runs"]:
        if r["config"] == name:
            groups.setdefault((r["lr"], r["weight_decay"]), []).append(r.get(key))
    return {s: None if None in v else float(np.mean(v)) for s, v in sorted(groups.items())}


def ch11_edge(value, values):
    """'strictly inside' or 'ON THE EDGE of', for a chosen value among the values run."""
    return "strictly inside" if min(values) < value < max(values) else "ON THE EDGE of"


def ch11_print_references(V, reference, ngram):
    """The reference losses of section 1: uniform, add-one n-grams, and the add-k table."""
    print(f"uniform guess:  ln V = {np.log(V):.3f} nats/char")
    for name, loss in reference.items():
        print(f"{name + ' model:':15s}        {loss:.3f} nats/char (add-one)")
    print("\norder   add-one   add-k   k (chosen on 80-90%)   grid of k")
    for n, r in ngram.items():
        print(f"{n:7s} {r['add_one']:7.3f}   {r['add_k']:5.3f}   {r['k']:<22g} {r['grid']}")


def ch11_print_tuning(tuning, tables, labels=CH11_LABELS):
    """Each text model's mean validation loss per (lr, weight decay) run; * = the chosen one;
    '-' = not run (a coarse-then-fine search runs only part of the grid)."""
    print(f"tuning: mean validation loss (nats/char) over the seeds {ch11_tuning_seeds(tuning)}")
    for name, table in tables.items():
        lrs, wds = ch11_grid(tuning, f"text-{name}")
        chosen = tuning["chosen"][f"text-{name}"]
        best = (chosen["lr"], chosen["weight_decay"])
        print(f"{labels[name]}\n  {'lr':>8s} | " + "".join(f"wd {wd:<9g}" for wd in wds))
        for lr in lrs:
            cells = []
            for wd in wds:
                v = table.get((lr, wd), "-")
                text = "-" if v == "-" else ("diverged" if v is None else f"{v:.4f}")
                cells.append(f"{text + ('*' if (lr, wd) == best else ''):12s}")
            print(f"  {lr:8g} | " + "".join(cells))
        print(f"  chosen lr {best[0]:g}: {ch11_edge(best[0], lrs)} the learning rates run; "
              f"weight decay {best[1]:g}: {ch11_edge(best[1], wds)} the weight decays run")  # fmt: skip


def ch11_print_seeds(res, labels=CH11_LABELS):
    """Setting, parameter count and held-out loss per seed of each model of ``make results``."""
    print(f"{'model':19s} {'lr':>6s} {'wd':>5s} {'parameters':>10s}   held-out loss per seed "
          "(nats/char)   mean ± std")  # fmt: skip
    for name, d in res.items():
        per_seed = "  ".join(f"{v:.3f}" for v in d["values"])
        print(f"{labels[name]:19s} {d['setting']['lr']:6g} {d['setting']['weight_decay']:5g} "
              f"{d['params']:10,d}   {per_seed}   {d['mean']:.3f} ± {d['std']:.3f}")  # fmt: skip


def _ch11_references(ax, reference, styles=(":", "-.", "--")):
    for (name, loss), ls in zip(reference.items(), styles):
        ax.axhline(loss, color="k", lw=0.8, ls=ls, label=f"{name} model")


def _ch11_finish(ax, xlabel, ylabel, title):
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def ch11_plot_seed_curves(res, reference, labels=CH11_LABELS):
    """Held-out loss against step, every seed of ``make results``, with the n-gram references."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, color in [("tssa", "C0"), ("softmax", "C3")]:
        for i, p in enumerate(res[name]["per_seed"]):
            steps = [h["step"] for h in p["history"]]
            ax.plot(steps, [h["val_loss"] for h in p["history"]], "o-", color=color, ms=2,
                    lw=0.8, alpha=0.6, label=labels[name] if i == 0 else None)  # fmt: skip
    _ch11_references(ax, reference)
    _ch11_finish(
        ax, "step", "held-out cross-entropy (nats/char)", "five seeds per model (make results)"
    )
    fig.tight_layout()
    plt.show()


def ch11_per_seed(mech, model, get):
    """One number per seed: get(p) of each seed's entry of text-mechanism.json[model]."""
    return np.array([get(p) for p in mech[model]["per_seed"]])


def ch11_span(values, fmt=".3f"):
    """'mean (min-max)' over the seeds."""
    v = np.asarray(values)
    return f"{v.mean():{fmt}} ({v.min():{fmt}}–{v.max():{fmt}})"


def ch11_print_weights(mech, labels=CH11_LABELS):
    """(a): the weight of token t-1 at t, per block, mean (min-max) over the seeds."""
    positions = mech["positions"]
    print("(a) weight of token t-1 in the statistics of token t, mean over heads and windows;")
    print(f"    mean (min–max) over {len(mech['seeds'])} seeds")
    print(f"{'':18s}" + "".join(f"{'t = ' + str(t):>22s}" for t in positions))
    for name in ("tssa", "softmax"):
        for b in sorted(mech[f"text-{name}"]["per_seed"][0]["weight_prev"]):
            row = [ch11_span(ch11_per_seed(mech, f"text-{name}",
                                           lambda p, b=b, t=t: p["weight_prev"][b][f"t{t}"]))
                   for t in positions]  # fmt: skip
            print(f"{labels[name].split()[0] + ', ' + b:18s}" + "".join(f"{c:>22s}" for c in row))
    print(f"{'1/(t+1)':18s}" + "".join(f"{1 / (t + 1):>22.3f}" for t in positions))


def ch11_plot_weights(mech, labels=CH11_LABELS):
    """(a): the weight of token t-1 at every position t, every block and seed, against 1/(t+1)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    first = mech["seeds"][0]
    for ax, name in zip(axes, ("tssa", "softmax")):
        for p in mech[f"text-{name}"]["per_seed"]:
            for l, curve in enumerate(p["weight_prev_curve"]):
                t_axis = np.arange(1, len(curve) + 1)
                ax.plot(t_axis, curve, color=f"C{l}", lw=0.8, alpha=0.6,
                        label=f"block {l + 1}" if p["seed"] == first else None)  # fmt: skip
        ax.plot(t_axis, 1 / (t_axis + 1), "k--", lw=1, label="1/(t+1)")
        ax.set_yscale("log")
        _ch11_finish(ax, "position t", "weight" if name == "tssa" else "",
                     f"{labels[name]}: weight of token t-1 at t (every seed)")  # fmt: skip
    fig.tight_layout()
    plt.show()


def ch11_bucket_table(mech, labels=CH11_LABELS):
    """(b): held-out loss per bucket of positions; prints mean (min-max) over the seeds and
    returns {name: (seeds, buckets) array} and the bucket names."""
    buckets = [f"{lo}-{hi}" for lo, hi in mech["buckets"]]
    print("(b) held-out loss by position (nats/char), mean (min–max) over the seeds")
    print(f"{'positions':20s}" + "".join(f"{b:>22s}" for b in buckets))
    out = {}
    for name in ("tssa", "softmax"):
        out[name] = ch11_per_seed(mech, f"text-{name}",
                                  lambda p: [p["loss_by_bucket"][b] for b in buckets])  # fmt: skip
        print(f"{labels[name]:20s}" + "".join(f"{ch11_span(c):>22s}" for c in out[name].T))
    return out, buckets


def ch11_plot_loss_by_position(runs, lines, title, ylabel, labels=CH11_LABELS):
    """Loss at every position of the window, every seed; ``runs`` = {name: per-seed entries},
    ``lines`` = [(value, linestyle, label)] of horizontal references."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, color in [("tssa", "C0"), ("softmax", "C3")]:
        for i, p in enumerate(runs[name]):
            ax.plot(p["loss_by_position"], color=color, lw=0.8, alpha=0.6,
                    label=labels[name] if i == 0 else None)  # fmt: skip
    for value, ls, label in lines:
        ax.axhline(value, color="k", lw=0.8, ls=ls, label=label)
    _ch11_finish(ax, "position t in the window", ylabel, title)
    fig.tight_layout()
    plt.show()


def ch11_kl_table(mech, labels=CH11_LABELS):
    """(c): KL of the prediction at t when the character at t-k is replaced; prints mean
    (min-max) over the seeds, returns {(name, t): {k: per-seed array}}."""
    print("(c) KL(before || after) of the next-character distribution at t (nats) when the")
    print("    character at t-k is replaced; mean (min–max) over the seeds")
    print(f"{'':22s}" + "".join(f"{'k = ' + str(k):>22s}" for k in mech["kl_lags"]))
    kl = {}
    for name in ("tssa", "softmax"):
        for t in mech["kl_positions"]:
            kl[name, t] = {k: ch11_per_seed(mech, f"text-{name}",
                                            lambda p, t=t, k=k: p["kl"][f"t{t}_k{k}"])
                           for k in mech["kl_lags"]}  # fmt: skip
            print(f"{labels[name].split()[0] + f', t = {t}':22s}"
                  + "".join(f"{ch11_span(kl[name, t][k]):>22s}" for k in mech["kl_lags"]))  # fmt: skip
    return kl


def ch11_signed(per_model, labels=CH11_LABELS):
    """'ToST +0.1 +0.2 ... | GPT ...': one signed number per seed for each model."""
    return " | ".join(
        labels[n].split()[0] + " " + " ".join(f"{v:+.3f}" for v in values)
        for n, values in per_model.items()
    )


def ch11_print_synthetic(mech, syn_loss, labels=CH11_LABELS):
    """(d): each model's loss per seed on the synthetic task, and the n-gram references."""
    lag = mech["synthetic"]["lag"]
    for name, v in syn_loss.items():
        print(f"    {labels[name]:19s} loss at positions {lag - 1}-63, per seed: "
              + "  ".join(f"{x:.3f}" for x in v))  # fmt: skip
    refs = ", ".join(f"{n}: {r['add_k']:.3f}" for n, r in mech["ngram_synthetic"].items())
    print(f"    n-gram references (add-k, k chosen on 80-90%): {refs}")


def ch11_train_quietly(tuning, attention, steps, eval_every):
    """A live run of the text model with the setting ``attention`` was tuned to (seed 0):
    (its history of losses, the trained model)."""
    import contextlib
    import io
    import tempfile

    from whitebox.checkpoint import load_checkpoint
    from whitebox.train import make_config, train

    setting = tuning["chosen"][f"text-{attention}"]
    cfg = make_config(task="text", attention=attention, steps=steps, eval_every=eval_every,
                      lr=setting["lr"], weight_decay=setting["weight_decay"],
                      out=tempfile.mkdtemp())  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg, progress=False)
    history = load_checkpoint(result["checkpoint"])["meta"]["history"]
    return history, wb.models.load(result["checkpoint"])


def ch11_plot_live(history, reference, labels=CH11_LABELS):
    """Train and held-out loss of the live runs, with the n-gram references."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, color in [("tssa", "C0"), ("softmax", "C3")]:
        steps = [h["step"] for h in history[name]]
        ax.plot(steps, [h["train_loss"] for h in history[name]], "--", color=color, alpha=0.7,
                label=f"{labels[name]} train")  # fmt: skip
        ax.plot(steps, [h["val_loss"] for h in history[name]], "o-", color=color, ms=3,
                label=f"{labels[name]} held-out")  # fmt: skip
    _ch11_references(ax, reference)
    _ch11_finish(ax, "step", "cross-entropy (nats/char)", "one live run per model (this machine)")
    fig.tight_layout()
    plt.show()


# ---------------------------------------------------------------- chapter 13: long sequences


def ch13_table(runs):
    """One line per results file: task, attention, length, mean +- std, majority share, seeds."""
    key = lambda r: (r["task"], r["seq_len"], r["attention"])  # noqa: E731
    for r in sorted(runs.values(), key=key):
        vals = " ".join(f"{v:.3f}" for v in r["values"])
        head = f"{r['task']:9s} {r['attention']:8s} n={r['seq_len']:6d}  mean {r['mean']:.3f}"
        print(head + f" +- {r['std']:.3f}  majority {r['majority_class_share']:.3f}  seeds: {vals}")


def ch13_limits(runs, tuning, margin=0.05):
    """What the runs in ``results/long-*.json`` cover, read from the files (nothing typed in).

    Returns a dict: ``shared_lengths`` (the lengths at which both attentions ran the same task),
    ``lengths`` (attention -> the lengths it ran), ``longest`` (ToST's longest length) and
    ``longest_seeds`` (task -> number of seeds there), ``shared_seeds`` (the fewest seeds of any
    file at a shared length),
    ``recall_at_chance`` ((attention, n) -> (seeds that do not beat the most frequent answer by
    ``margin``, seeds)), ``steps`` (the step budgets used), ``lrs`` (attention -> task -> the
    learning rates used on that task, over all lengths), ``tuned_on`` (task -> the length its
    rates were chosen at) and ``inside`` (task -> attention -> whether the chosen rate lies
    strictly inside that task's final grid)."""
    rs = list(runs.values())
    by = {}
    for r in rs:
        by.setdefault((r["task"], r["attention"]), set()).add(r["seq_len"])
    tasks = sorted({t for t, _ in by})
    shared = set()
    for t in tasks:
        shared |= by.get((t, "tssa"), set()) & by.get((t, "softmax"), set())
    tost = [r for r in rs if r["attention"] == "tssa"]
    longest = max(r["seq_len"] for r in tost)
    recall = [r for r in rs if r["task"] == "recall"]
    return {
        "shared_lengths": sorted(shared),
        "lengths": {
            a: sorted({r["seq_len"] for r in rs if r["attention"] == a})
            for a in ("tssa", "softmax")
        },
        "longest": longest,
        "longest_seeds": {r["task"]: len(r["values"]) for r in tost if r["seq_len"] == longest},
        "shared_seeds": min(len(r["values"]) for r in rs if r["seq_len"] in shared),
        "recall_at_chance": {
            (r["attention"], r["seq_len"]): (
                sum(v < r["majority_class_share"] + margin for v in r["values"]),
                len(r["values"]),
            )
            for r in recall
        },
        "steps": sorted({r["steps"] for r in rs}),
        "lrs": {
            a: {
                t: sorted({r["setting"]["lr"] for r in rs if (r["attention"], r["task"]) == (a, t)})
                for t in tasks
            }
            for a in ("tssa", "softmax")
        },
        "tuned_on": {t: rec["tune_len"] for t, rec in tuning["tasks"].items()},
        "inside": {
            t: {a: min(rec["grid"]) < c["lr"] < max(rec["grid"]) for a, c in rec["chosen"].items()}
            for t, rec in tuning["tasks"].items()
        },
    }


def ch13_say_limits(lim):
    """The limits of ``ch13_limits`` as four plain sentences (printed)."""

    def say(ns):
        ns = [f"{n:,}" for n in ns]
        return ns[0] if len(ns) == 1 else ", ".join(ns[:-1]) + " and " + ns[-1]

    print(f"1. ToST and softmax attention were compared at n = {say(lim['shared_lengths'])} "
          f"(ToST ran at n = {say(lim['lengths']['tssa'])}, "
          f"softmax attention at n = {say(lim['lengths']['softmax'])}).")  # fmt: skip
    seeds = ", ".join(f"{k} seeds on {t}" for t, k in sorted(lim["longest_seeds"].items()))
    print(f"2. ToST alone at n = {lim['longest']:,}: {seeds} "
          f"(at least {lim['shared_seeds']} per run at n = {say(lim['shared_lengths'])}).")  # fmt: skip
    chance = [f"{a} at n = {n:,} in {k} of {m} seeds"
              for (a, n), (k, m) in sorted(lim["recall_at_chance"].items())]  # fmt: skip
    print(f"3. the recall after {' or '.join(str(s) for s in lim['steps'])} steps is at chance "
          "(not above the most frequent answer + 0.05): " + "; ".join(chance) + ".")  # fmt: skip
    lrs = "; ".join(
        f"{a}: " + ", ".join(f"{t} {' and '.join(str(v) for v in vs)}" for t, vs in by.items())
        for a, by in lim["lrs"].items()
    )
    where = ", ".join(f"{t} at n = {n:,}" for t, n in lim["tuned_on"].items())
    print(f"4. learning rates by task ({lrs}), each chosen on that task's validation set "
          f"({where}).")  # fmt: skip


def ch13_recall_by_hand(num_keys=64, num_values=8, max_len=4096, seed=0):
    """The chapter's softmax classifier (width 32, 2 heads of 16, pool="last") with weights set
    by hand to answer ``make_recall``: the layer *can* represent the lookup. Returns the model.

    Residual coordinates: 0-15 a key code (random unit vectors of mean 0, one per key), 16-23
    a value code (one-hot minus 1/8), 24-31 a filler that gives the query a pair's length.
    Every mean is 0, so LayerNorm only rescales. Embeddings are 100 times the codes, so the
    sinusoidal positions (size 1) are small beside them. Head 1: query and key both read the
    key code (scores 60 q.k / 4: a needle outscores a pair of another key by 0.2 x 350 at the
    worst pair of codes); its value reads the value code, which the output projection writes
    back (times 100) to coordinates 16-23, where the head reads it. The query's key code is
    0.9 long, so that it prefers the needle to itself. Head 2, the MLP: zero."""
    from whitebox.sequence import SequenceClassifier

    K, V, D, p, big, sharp = num_keys, num_values, 32, 16, 100.0, 60.0
    model = SequenceClassifier(K * (V + 1), V, max_len, attention="softmax", pool="last",
                               seed=seed)  # fmt: skip
    codes = np.random.default_rng(seed).standard_normal((K, p))
    codes -= codes.mean(1, keepdims=True)
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)
    value = np.eye(V) - 1.0 / V  # squared length 0.875
    E = np.zeros((K * (V + 1), D))
    for k in range(K):
        E[k * V : (k + 1) * V, :p], E[k * V : (k + 1) * V, p : p + V] = codes[k], value
        E[K * V + k, :p] = 0.9 * codes[k]  # the query of key k
        E[K * V + k, p + V : p + 2 * V] = value[0] * np.sqrt((1 + 0.875 - 0.81) / 0.875)
    qkv, proj, head = np.zeros((D, 3 * D)), np.zeros((D, D)), np.zeros((D, V))
    qkv[:p, :p] = qkv[:p, D : D + p] = np.sqrt(sharp) * np.eye(p)  # head 1: query, key
    qkv[p : p + V, 2 * D : 2 * D + V] = np.eye(V)  # head 1: value
    proj[:V, p : p + V] = big * np.eye(V)
    head[p : p + V] = np.eye(V)
    blk = model.blocks[0]
    set_to = {model.embed: {"weight": big * E}, blk.attn: {"qkv.weight": qkv, "proj.weight": proj},
              model.head: {"weight": head}}  # fmt: skip
    for module in (model.embed, blk.attn, blk.mlp.c_fc, blk.mlp.c_proj, model.head):
        for name, w in module.params.items():  # biases and the MLP: zero
            w[...] = set_to.get(module, {}).get(name, 0.0)
    return model


def ch13_accuracy(model, x, y, chunk=4):
    """Test accuracy of ``model`` on ``x, y``, ``chunk`` sequences at a time."""
    pred = np.concatenate([model.forward(x[i : i + chunk]).argmax(1) for i in range(0, len(x), chunk)])  # fmt: skip
    return float(np.mean(pred == y))


def ch13_needle_variants(n, num=20, seed=3, num_keys=64, num_values=8):
    """Recall sequences (``make_recall``) and three changed copies of each: ``needle`` (the
    needle's value changed), ``one`` (one other pair changed, to a pair of another key) and
    ``rest`` (every pair but the needle resampled). The query stays; only ``needle`` changes
    the label. Returns a dict of (num, n) arrays, with ``x`` the originals and ``y`` labels."""
    from whitebox.data import make_recall

    K, V = num_keys, num_values
    x, y = make_recall(num, n, num_keys=K, num_values=V, seed=seed)
    rng, rows = np.random.default_rng(seed + 1), np.arange(num)
    q = x[:, -1] - K * V  # the query's key
    where = np.argmax(x[:, :-1] // V == q[:, None], axis=1)  # the needle's position
    needle = x.copy()
    needle[rows, where] = q * V + (y + rng.integers(1, V, size=num)) % V
    one = x.copy()
    other = (where + rng.integers(1, n - 1, size=num)) % (n - 1)
    one[rows, other] = ((q + rng.integers(1, K, size=num)) % K) * V + rng.integers(V, size=num)
    keys = rng.integers(K - 1, size=(num, n - 1))
    keys += keys >= q[:, None]  # any key but the query's
    rest = x.copy()
    rest[:, :-1] = keys * V + rng.integers(V, size=(num, n - 1))
    rest[rows, where] = x[rows, where]
    return {"x": x, "y": y, "needle": needle, "one": one, "rest": rest}


def _ch13_attention_input(model, x):
    """What the first block's attention reads: LN_1(embedding + positions), (B, n, D)."""
    return model.blocks[0].ln_1.forward(model.embed.forward(x) + model._pos[: x.shape[1]])


def ch13_tssa_statistics(model, x):
    """The statistics y (B, H p) of the first TSSA layer of a ToST ``SequenceClassifier``:
    y_hi = sum_j Pi_hj / sum_j' Pi_hj' w_hji^2, from the layer's own Pi and projection."""
    blk = model.blocks[0]
    h = _ch13_attention_input(model, x)
    blk.attn.forward(h)
    pi, P = blk.attn.last_pi, blk.attn.params  # pi: (B, H, n)
    B, n, D = h.shape
    w = (h @ P["qkv.weight"] + P["qkv.bias"]).reshape(B, n, pi.shape[1], -1)  # (B, n, H, p)
    pibar = pi / (pi.sum(-1, keepdims=True) + 1e-8)
    return np.einsum("bhn,bnhp->bhp", pibar, w**2).reshape(B, -1)


def ch13_softmax_readout(model, x, chunk=4):
    """The attention output at the readout (last) token of a softmax ``SequenceClassifier``."""
    blk = model.blocks[0]
    out = [blk.attn.forward(_ch13_attention_input(model, x[i : i + chunk]))[:, -1]
           for i in range(0, len(x), chunk)]  # fmt: skip
    return np.concatenate(out)


def ch13_needle_loudness(tost_lengths, softmax_lengths, num=20, seed=3):
    """How far the needle, one other pair and the rest of the sequence move what the readout
    hears: ToST's statistics y (a float64 ToST at its initial weights) and the hand-set softmax
    layer's attention output at the readout. Returns {(model, n): {change: median norm}}."""
    from whitebox.sequence import SequenceClassifier

    tost = SequenceClassifier(64 * 9, 8, max(tost_lengths), attention="tssa", pool="last",
                              dtype="float64", seed=0)  # fmt: skip
    soft = ch13_recall_by_hand(max_len=max(softmax_lengths))
    out = {}
    for model, name, lengths, hear in ((tost, "tost", tost_lengths, ch13_tssa_statistics),
                                       (soft, "softmax", softmax_lengths, ch13_softmax_readout)):  # fmt: skip
        for n in lengths:
            v = ch13_needle_variants(n, num, seed)
            base = hear(model, v["x"])
            out[name, n] = {k: float(np.median(np.linalg.norm(hear(model, v[k]) - base, axis=1)))
                            for k in ("needle", "one", "rest")}  # fmt: skip
    return out


def ch13_plot(runs, scaling):
    """Accuracy (every seed as a dot, a line through the means), seconds and peak memory per
    step against n."""
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    color, label = {"tssa": "C0", "softmax": "C3"}, {"tssa": "ToST", "softmax": "softmax"}
    for task, marker in (("majority", "o"), ("recall", "s"), ("listops", "^")):
        for a in ("tssa", "softmax"):
            rs = sorted((r for r in runs.values() if (r["task"], r["attention"]) == (task, a)),
                        key=lambda r: r["seq_len"])  # fmt: skip
            n = np.array([r["seq_len"] for r in rs])
            shift = 0.93 if a == "tssa" else 1.07  # side by side, so that no dot hides another
            ax[0].plot(n * shift, [r["mean"] for r in rs], "-", color=color[a], lw=0.8, alpha=0.6)
            for k, r in enumerate(rs):
                ax[0].plot([n[k] * shift] * len(r["values"]), r["values"], marker, color=color[a],
                           alpha=0.6, ms=5, mfc="none", label=f"{label[a]}, {task}" if k == 0 else None)  # fmt: skip
    ax[0].set(xscale="log", xlabel="tokens n", ylabel="test accuracy (every seed)", ylim=(0, 1.05))
    ax[0].legend(fontsize=7, loc="center", bbox_to_anchor=(0.45, 0.34), ncol=2)  # an empty band
    for a in ("tssa", "softmax"):
        s = scaling["attention"][a]
        n = [r["seq_len"] for r in s["rows"]]
        ax[1].loglog(n, [r["seconds_per_step"] for r in s["rows"]], "o-", color=color[a],
                     label=f"{label[a]}: slope {s['time_exponent']:.2f}")  # fmt: skip
        ax[2].loglog(n, [r["peak_bytes"] / 2**20 for r in s["rows"]], "o-", color=color[a],
                     label=f"{label[a]}: slope {s['memory_exponent']:.2f}")  # fmt: skip
    ax[1].set(xlabel="tokens n", ylabel="seconds per training step")
    ax[2].set(xlabel="tokens n", ylabel="peak memory of a step (MiB)")
    for a_ in ax[1:]:
        a_.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
