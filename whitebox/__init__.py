"""whitebox: the Token Statistics Transformer (ToST), derived from rate reduction.

``import whitebox as wb`` gives the mathematics at the top level (``wb.coding_rate``,
``wb.variational_compression_grad``, ``wb.tssa_step``, ...); the layers live in
``whitebox.nn``, their base class and its validation policy in ``whitebox.module``, the
optimizer in ``whitebox.optim``, the networks in ``whitebox.models``.
"""

from . import backend, data, interop, models, module, nn, optim
from .mcr2 import (
    SIMPLEX_ATOL,
    coding_rate,
    compression_rate,
    estimate_membership,
    rate_reduction,
    token_statistics,
    tssa_step,
    variational_compression_grad,
    variational_compression_rate,
)

__version__ = "0.1.0"

__all__ = [
    "SIMPLEX_ATOL",
    "backend",
    "coding_rate",
    "compression_rate",
    "data",
    "interop",
    "models",
    "module",
    "nn",
    "optim",
    "estimate_membership",
    "rate_reduction",
    "token_statistics",
    "tssa_step",
    "variational_compression_grad",
    "variational_compression_rate",
]
