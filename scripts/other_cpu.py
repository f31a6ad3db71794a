"""Print an OpenBLAS kernel (``OPENBLAS_CORETYPE``) that differs from the one this CPU runs.

Float32 matrix products round differently in each OpenBLAS kernel, so a notebook whose
compared outputs depend on them passes on one CPU and fails on another. ``make nbval-other-cpu``
(run by ``.ci/run`` after ``make test``) re-runs nbval under the kernel printed here:
``Sandybridge`` (AVX, which every x86-64 CPU of the last ten years has), or ``Haswell`` (AVX2)
where this CPU already runs Sandybridge. With ``--check KERNEL`` it exits 1 unless NumPy's BLAS
really runs KERNEL (the variable is ignored by a BLAS that is not OpenBLAS). Exits 3 (skip) on
a CPU that is not x86-64, where these kernels do not exist, and where ``OPENBLAS_CORETYPE`` is
already set: some machines set it because other kernels crash on their processor, so it is
never overridden there.
"""

from __future__ import annotations

import os
import platform
import sys

from threadpoolctl import threadpool_info


def blas_kernel() -> str:
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl inspects)

    for info in threadpool_info():
        if info.get("user_api") == "blas":
            return str(info.get("architecture") or info.get("internal_api"))
    return "none"


def main(argv) -> int:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print(
            f"not an x86-64 CPU ({platform.machine()}): no OpenBLAS kernel to force",
            file=sys.stderr,
        )
        return 3
    if argv[:1] == ["--check"]:
        own = blas_kernel()
        want = argv[1]
        if own.lower() != want.lower():
            print(f"expected the OpenBLAS kernel {want}, NumPy's BLAS runs {own}", file=sys.stderr)
            return 1
        print(f"NumPy's BLAS runs the {own} kernel")
        return 0
    if os.environ.get("OPENBLAS_CORETYPE"):
        print(f"OPENBLAS_CORETYPE is already set ({os.environ['OPENBLAS_CORETYPE']}): this "
              "machine chose its kernel; not overriding it", file=sys.stderr)  # fmt: skip
        return 3
    own = blas_kernel()
    print("Haswell" if own.lower() == "sandybridge" else "Sandybridge")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
