"""Every CUDA source in ``whitebox.kernels`` compiles for sm_90 with zero warnings.

CI machines have ``nvcc`` but no GPU: this compiles each RawKernel source, and each
ElementwiseKernel body inside a wrapper shaped like the one CuPy generates (a grid-stride loop
over i, raw inputs indexed by a ptrdiff_t, the output bound to a reference), in float and
double, with ``-Werror all-warnings``. Skipped where ``nvcc`` is not on PATH. What runs the
kernels is checked elsewhere (the NumPy twins in ``tests/fakecupy.py``; on a GPU,
``benchmarks/gpu_check.py``)."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from whitebox import kernels

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
ARCH = "sm_90"
FLAGS = ["-cubin", f"-arch={ARCH}", "-std=c++17", "-Werror", "all-warnings"]

_WRAPPER = """
typedef {ctype} T;
template <typename U> struct RawArray {{  // CuPy's CArray, as a raw (flat-indexed) input
    U* data;
    __device__ U& operator[](ptrdiff_t k) const {{ return data[k]; }}
}};
extern "C" __global__ void {name}({params}, T* _out_{out}, const ptrdiff_t _size) {{
    for (ptrdiff_t i = (ptrdiff_t)blockIdx.x * blockDim.x + threadIdx.x; i < _size;
         i += (ptrdiff_t)blockDim.x * gridDim.x) {{
        T& {out} = _out_{out}[i];
{body}
    }}
}}
"""

_CTYPES = {"int32": "int", "T": "T"}


def elementwise_source(name, dtype):
    """The ElementwiseKernel ``name`` as CuPy would lay it out (see the module doc)."""
    in_params, out_params, body = kernels.ELEMENTWISE_KERNELS[name]
    params = []
    for p in in_params.split(","):
        words = p.split()
        if words[0] == "raw":
            params.append(f"const RawArray<const {_CTYPES[words[1]]}> {words[2]}")
        else:
            params.append(f"const {_CTYPES[words[0]]} {words[1]}")
    (out,) = [p.split()[1] for p in out_params.split(",")]
    ctype = "float" if np.dtype(dtype).name == "float32" else "double"
    return _WRAPPER.format(
        ctype=ctype, name=name, params=", ".join(params), out=out, body=body.strip("\n")
    )


def compile_cuda(src, tmp_path, stem):
    cu = tmp_path / f"{stem}.cu"
    cu.write_text(src)
    cmd = [NVCC, *FLAGS, "-o", str(tmp_path / f"{stem}.cubin"), str(cu)]
    return subprocess.run(cmd, capture_output=True, text=True)


def _units():
    """One translation unit per (source, dtype): both kernels of a source compile together."""
    out = []
    for dtype in ("float32", "float64"):
        done = set()
        for name, src in kernels.RAW_KERNELS.items():
            if id(src) not in done:
                done.add(id(src))
                out.append(pytest.param(name, dtype, "raw", id=f"raw-{name}-{dtype}"))
        for name in kernels.ELEMENTWISE_KERNELS:
            out.append(pytest.param(name, dtype, "elementwise", id=f"elementwise-{name}-{dtype}"))
    return out


@pytest.mark.parametrize("name,dtype,kind", _units())
def test_kernel_compiles_without_warnings(name, dtype, kind, tmp_path):
    src = kernels.raw_source(name, dtype) if kind == "raw" else elementwise_source(name, dtype)
    r = compile_cuda(src, tmp_path, name)
    assert r.returncode == 0, f"nvcc {' '.join(FLAGS)} failed for {name} ({dtype}):\n{r.stderr}"
    assert (tmp_path / f"{name}.cubin").stat().st_size > 0
    if kind == "raw":  # every kernel the source promises is in it
        for k, s in kernels.RAW_KERNELS.items():
            if s is kernels.RAW_KERNELS[name]:
                assert re.search(rf'extern "C" __global__ void {k}\(', src), k


def test_warnings_are_errors(tmp_path):
    """The flags do turn a warning (an unused variable) into a failure."""
    src = kernels.raw_source("tssa_bias_colsq", "float32").replace(
        "T acc = 0;", "T acc = 0;\n    int unused_here = 1;", 1
    )
    r = compile_cuda(src, tmp_path, "broken")
    assert r.returncode != 0 and "unused_here" in r.stderr


def test_a_broken_body_fails(tmp_path):
    """The wrapper really compiles the body: a misspelt argument is an error."""
    src = elementwise_source("tssa_output", "float64").replace("c[k]", "cc[k]")
    assert compile_cuda(src, tmp_path, "broken").returncode != 0
