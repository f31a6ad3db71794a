r"""The base of every layer: :class:`Module`, :class:`ModuleList` and the one validation policy.

A :class:`Module` keeps its parameters and gradients in plain dicts (``params``, ``grads``) and
registers the modules assigned to its attributes as children, so ``parameters()`` and
``gradients()`` walk the whole tree under dotted names (``blocks.0.attn.qkv.weight``).

Every subclass gets the same checks: ``Module.__init_subclass__`` wraps its ``forward`` and
``backward``. The checks run at the outermost call only (a counter of the calls in progress,
``_DEPTH``), where a user's array comes in, so a model checks its input once, not once per
layer. The layers themselves (``whitebox.nn``) check only shapes and what only they can see:
token ids and targets in range, and statistics that overflowed (:func:`_refuse_overflow`).

:data:`CHECK_INPUTS` switches the checks on values (finite floats, ids in range) on and off; it
is the one flag, also readable and settable as ``whitebox.nn.CHECK_INPUTS``.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from .backend import _is_cupy_array, get_array_module, to_device, to_numpy, to_numpy_many

CHECK_INPUTS = True
"""Layers check the values of their inputs (finite floats, token ids and targets in range).
On a GPU each check reads a value back to the host and waits for the device, so the training
loop turns this off for its steps and checks its batches on the host instead."""


class BackwardBeforeForwardError(RuntimeError):
    """``backward`` was called on a module that has not run ``forward`` yet."""


_DEPTH = [0]
"""How many Module.forward / backward calls are running: the checks run at depth 0 only,
where a user's array comes in, so a model checks its input once, not once per layer."""


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or _is_cupy_array(x)


def _where(xp) -> str:
    return "CPU (NumPy)" if xp is np else "GPU (CuPy)"


def _float_array(x, name, dtype, module_xp, host_ok=False):
    """``x`` as a finite array of ``dtype`` on the module's device, or a ValueError that names
    ``name`` (the policy of :class:`Module`): real floating input only, cast to ``dtype`` with
    overflow refused. ``dtype`` None keeps the input's; ``module_xp`` None accepts any device."""
    if not _is_array(x):
        raise ValueError(f"{name}: expected a NumPy or CuPy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise ValueError(f"{name}: expected real floating-point values, got dtype {x.dtype}")
    xp = get_array_module(x)
    if module_xp is not None and xp is not module_xp:
        if not (host_ok and xp is np):
            raise ValueError(
                f"{name}: the array is on the {_where(xp)} but the module is on the "
                f"{_where(module_xp)}; move one of them (whitebox.backend.to_device, module.to)"
            )
        x, xp = module_xp.asarray(x), module_xp
    original = x
    if dtype is not None and x.dtype != dtype:
        with np.errstate(over="ignore"):
            x = x.astype(dtype)
    if CHECK_INPUTS and not bool(xp.isfinite(x).all()):
        if x is not original and bool(xp.isfinite(original).all()):
            big = float(xp.abs(original).max())
            raise ValueError(
                f"{name}: values up to {big:.3g} overflow {np.dtype(dtype).name} (largest "
                f"finite {float(np.finfo(dtype).max):.3g}); rescale them or use float64"
            )
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def _index_array(idx, name, module_xp):
    """Integer token ids (a list is accepted) on the module's device, else a ValueError."""
    xp = module_xp or np
    if _is_array(idx) and get_array_module(idx) is not xp and xp is np:
        raise ValueError(f"{name}: the ids are on the GPU but the module is on the CPU")
    idx = xp.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer token ids, got dtype {idx.dtype}")
    return idx


def _first_array(result):
    return result[0] if isinstance(result, tuple) else result


def _overflow_error(module, dtype, what="x"):
    return ValueError(
        f"{what}: {type(module).__name__} overflowed {np.dtype(dtype).name} on this input (its "
        "values are finite, but too large for the layer in this precision); rescale the input "
        "or use float64"
    )


def _check_result(module, arrays, what):
    """Refuse a non-finite result of a finite input: the layer overflowed in its dtype."""
    for a in arrays:
        if _is_array(a) and a.dtype.kind == "f" and not bool(get_array_module(a).isfinite(a).all()):
            raise _overflow_error(module, a.dtype, what)


def _refuse_overflow(module, ok):
    """A layer whose overflow would give a finite but wrong output (a normalization by an
    infinite norm returns 0) checks its small statistics ``ok`` (True where they are usable)."""
    if CHECK_INPUTS and not bool(ok.all()):
        raise _overflow_error(module, module.dtype)


def _guard_forward(forward):
    @functools.wraps(forward)
    def checked_forward(self, x, *args, **kwargs):
        if _DEPTH[0]:  # inside another module, whose input was checked already
            out = forward(self, x, *args, **kwargs)
        else:
            first = self._first_parameter()
            xp = None if first is None else get_array_module(first)
            if self.input_kind == "float":
                dtype = None if first is None else first.dtype
                x = _float_array(x, "x", dtype, xp, self.host_input)
            elif self.input_kind == "index":
                x = _index_array(x, "idx", xp)
            _DEPTH[0] += 1
            try:
                out = forward(self, x, *args, **kwargs)
            finally:
                _DEPTH[0] -= 1
            if CHECK_INPUTS:
                _check_result(self, [_first_array(out)], "x")
        first = _first_array(out)
        self._out_shape = getattr(first, "shape", None)
        self._out_dtype = getattr(first, "dtype", None)
        return out

    return checked_forward


def _guard_backward(backward):
    @functools.wraps(backward)
    def checked_backward(self, dy, *args, **kwargs):
        if _DEPTH[0]:
            return backward(self, dy, *args, **kwargs)
        shape = getattr(self, "_out_shape", None)
        if shape is None:
            raise BackwardBeforeForwardError(
                f"{type(self).__name__}.backward: call forward first (there is no output to "
                "take the gradient of)"
            )
        first = self._first_parameter()
        xp = None if first is None else get_array_module(first)
        dy = _float_array(dy, "dy", self._out_dtype, xp)
        if dy.shape != shape:
            raise ValueError(f"dy: expected the shape of the last output {shape}, got {dy.shape}")
        _DEPTH[0] += 1
        try:
            dx = backward(self, dy, *args, **kwargs)
        finally:
            _DEPTH[0] -= 1
        if CHECK_INPUTS:
            grads = [g for _, m in self.named_modules() for g in m.grads.values()]
            _check_result(self, [_first_array(dx), *grads], "dy")
        return dx

    return checked_backward


class Module:
    """Base class: ``params``/``grads`` dicts plus child modules registered as attributes.

    ``parameters()`` maps dotted names (``blocks.0.attn.qkv.weight``) to the live arrays;
    ``gradients()`` maps the same names to the gradients filled by ``backward``.
    Subclasses set ``decay``: the local parameter names that get weight decay.

    **The validation policy**, one for every module (``__init_subclass__`` wraps each
    ``forward`` / ``backward``; the checks run at the outermost call only, once per model):
    ``x`` must be a real floating-point array on the module's device (else a ValueError naming
    ``x``; ``input_kind = 'index'`` modules take integer ids), it is cast to the module's dtype
    with overflow refused, NaN / Inf are refused, and the output is in the module's dtype; a
    finite input that overflows inside the layer is refused too. ``dy`` must have exactly the
    last output's shape and be finite; backward before forward raises
    :class:`BackwardBeforeForwardError`. The value checks (one pass over the input, one over
    the output) follow :data:`CHECK_INPUTS`; type, dtype, device and shape checks always run."""

    decay: tuple[str, ...] = ()
    input_kind = "float"
    """What ``forward`` takes: 'float' arrays, 'index' (integer ids) or None (no array)."""
    host_input = False
    """True for models that take a NumPy input on the GPU and move it there (the image models)."""

    def __init_subclass__(cls, **kwargs):
        """Every subclass's forward / backward get the checks of the policy above."""
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = _guard_forward(cls.__dict__["forward"])
        if "backward" in cls.__dict__:
            cls.backward = _guard_backward(cls.__dict__["backward"])

    def __init__(self):
        object.__setattr__(self, "_children", {})
        self.params = {}
        self.grads = {}
        self._out_shape = None

    def _first_parameter(self):
        """The first parameter array (its device and dtype are the module's), or None."""
        return next((v for _, m in self.named_modules() for v in m.params.values()), None)

    def __setattr__(self, name, value):
        if isinstance(value, Module):
            self._children[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def named_modules(self, prefix=""):
        """Yield (dotted prefix, module) for this module and all descendants, in order."""
        yield prefix, self
        for name, child in self._children.items():
            yield from child.named_modules(f"{prefix}{name}.")

    def parameters(self):
        """Ordered dict: dotted name -> the live parameter array."""
        return {p + k: v for p, m in self.named_modules() for k, v in m.params.items()}

    def gradients(self):
        """Ordered dict with the keys of ``parameters()`` -> gradient (zeros before backward)."""
        out = {}
        for p, m in self.named_modules():
            for k, v in m.params.items():
                if k not in m.grads:
                    m.grads[k] = get_array_module(v).zeros_like(v)
                out[p + k] = m.grads[k]
        return out

    def no_weight_decay(self, name):
        """True when the parameter ``name`` (dotted, as in ``parameters()``) is not decayed."""
        for p, m in self.named_modules():
            if name.startswith(p) and name[len(p) :] in m.params:
                return name[len(p) :] not in m.decay
        raise KeyError(f"no parameter named {name!r}")

    def train(self, mode: bool = True):
        """Training mode (dropout, BatchNorm batch statistics) on every descendant with a
        ``training`` flag; ``mode=False`` is :meth:`eval`. Returns the module."""
        for _, m in self.named_modules():
            if hasattr(m, "training"):
                m.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: dropout off (see :meth:`train`)."""
        return self.train(False)

    def zero_grad(self):
        for _, m in self.named_modules():
            m.grads = {k: get_array_module(v).zeros_like(v) for k, v in m.params.items()}

    def state_dict(self):
        """Dotted name -> NumPy copy of the parameter."""
        params = self.parameters()
        return dict(zip(params, to_numpy_many(list(params.values()))))  # one copy per dtype

    def load_state_dict(self, state):
        """Copy ``state`` (dotted name -> array) into the parameters in place.

        Raises ValueError on missing or unexpected names and on shape mismatches."""
        params = self.parameters()
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected {unexpected}")
        for k, p in params.items():
            v = np.asarray(to_numpy(state[k]))
            if v.shape != p.shape:
                raise ValueError(f"load_state_dict: {k} expected shape {p.shape}, got {v.shape}")
            p[...] = get_array_module(p).asarray(v, dtype=p.dtype)
        return self

    def to(self, device):
        """Move every parameter and gradient to 'cpu' or 'gpu' (replacing the dict entries)."""
        for _, m in self.named_modules():
            m.params = {k: to_device(v, device) for k, v in m.params.items()}
            m.grads = {k: to_device(v, device) for k, v in m.grads.items()}
        return self

    @property
    def dtype(self):
        return next(iter(self.parameters().values())).dtype

    def num_parameters(self):
        return int(sum(v.size for v in self.parameters().values()))

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError


class ModuleList(Module):
    """An indexable list of modules, registered as children '0', '1', ..."""

    def __init__(self, modules):
        super().__init__()
        self._items = list(modules)
        for i, m in enumerate(self._items):
            self._children[str(i)] = m

    def __getitem__(self, i):
        return self._items[i]

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self._items)


class _SharesTheFlag(types.ModuleType):
    """The class of a module that re-exports :data:`CHECK_INPUTS` (``whitebox.nn``): there
    ``CHECK_INPUTS`` reads this module's flag, and setting it (``nn.CHECK_INPUTS = False``)
    sets this module's flag. A plain copy would be a second flag that the checks never read."""

    @property
    def CHECK_INPUTS(self):
        return globals()["CHECK_INPUTS"]

    @CHECK_INPUTS.setter
    def CHECK_INPUTS(self, value):
        globals()["CHECK_INPUTS"] = value
