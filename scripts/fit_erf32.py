"""Fit the coefficients of ``whitebox.backend.erf32``: erf(x) = tanh(x g(x^2)) on |x| <= X_MAX.

g(t) = artanh(erf(sqrt t)) / sqrt t is smooth and even in x (g(0) = 2 / sqrt(pi)); a degree-6
polynomial in t = x^2 is fitted by weighted least squares, reweighted (Lawson's algorithm)
towards the smallest largest *relative error of erf*: an error dg moves erf by
(1 - erf^2) x dg, which is why the fit may be loose where erf is close to 1.

    python scripts/fit_erf32.py     # prints the coefficients, highest power first
"""

import numpy as np
from scipy.special import erf

X_MAX = 3.95  # the fit range: erf(3.92) already rounds to 1.0 in float32
DEGREE = 6


def fit(degree=DEGREE, iterations=60):
    x = np.linspace(1e-4, X_MAX, 20000)
    e = erf(x)
    g = np.arctanh(np.minimum(e, 1 - 1e-16)) / x
    w = (1 - e * e) * x / e  # d erf / erf per unit dg
    t = x * x
    lw = np.ones_like(x)
    for _ in range(iterations):
        s = w * np.sqrt(lw)
        c = np.linalg.lstsq(np.vander(t, degree + 1) * s[:, None], g * s, rcond=None)[0]
        r = np.abs((np.polyval(c, t) - g) * w)
        lw = lw * r
        lw /= lw.sum()
    return c, float(r.max())


if __name__ == "__main__":
    c, err = fit()
    print(f"max relative error of the fit (float64): {err:.2e}")
    print("coefficients:", ", ".join(repr(float(np.float32(v))) for v in c))
