"""One validation policy for every Module (issue 12), tested on every Module of the library.

The policy (``whitebox.module.Module``'s docstring): real floating input only, cast to the module's
dtype with overflow refused, finiteness checked, output in the module's dtype; ``dy`` exactly
the shape of the last output and finite; backward before forward a clear error; a finite input
the layer cannot compute in its precision refused instead of answered with inf or NaN. Each
defect the fuzzing pass found has its own test here; ``test_properties.py`` draws inputs at
random on top."""

import fakecupy
import numpy as np
import pytest

from whitebox import models, nn, vision
from whitebox.module import _first_array

F32, F64 = np.float32, np.float64


def _float_modules(dtype):
    """(name, module, input shape) for every Module that takes a float array."""
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    D, H = 8, 2
    return [
        ("Linear", nn.Linear(D, 5, dtype=dtype, rng=rng()), (2, 3, D)),
        ("LayerNorm", nn.LayerNorm(D, dtype=dtype), (2, 3, D)),
        ("GELU", nn.GELU(), (2, 3, D)),
        ("Dropout", nn.Dropout(0.25, seed=1), (2, 3, D)),
        ("MLP", nn.MLP(D, dtype=dtype, rng=rng()), (2, 3, D)),
        ("TSSA", nn.TSSA(D, H, dtype=dtype, rng=rng()), (2, 5, D)),
        ("CausalTSSA", nn.CausalTSSA(D, H, 6, dtype=dtype, rng=rng()), (2, 5, D)),
        ("SoftmaxAttention", nn.SoftmaxAttention(D, H, dtype=dtype, rng=rng()), (2, 5, D)),
        ("Block", nn.Block(D, H, dtype=dtype, rng=rng()), (2, 5, D)),
        ("Block(causal)", nn.Block(D, H, causal=True, block_size=6, dtype=dtype), (2, 5, D)),
        ("Block(softmax)", nn.Block(D, H, attention="softmax", dtype=dtype), (2, 5, D)),
        ("ToSTClassifier", models.ToSTClassifier(dim=D, num_heads=H, dtype=dtype), (2, 8, 8)),
        (
            "ToSTTokenClassifier",
            models.ToSTTokenClassifier(3, 4, dim=D, num_heads=H, dtype=dtype),
            (2, 5, 3),
        ),  # fmt: skip
        ("Conv2d", vision.Conv2d(2, 4, dtype=dtype, rng=rng()), (2, 2, 6, 6)),
        ("BatchNorm2d", vision.BatchNorm2d(3, dtype=dtype), (2, 3, 4, 4)),
        ("ConvStem", vision.ConvStem(1, D, 2, dtype=dtype, rng=rng()), (2, 1, 8, 8)),
        ("ClassAttention", vision.ClassAttention(D, H, dtype=dtype, rng=rng()), (2, 5, D)),
        (
            "ClassAttentionBlock",
            vision.ClassAttentionBlock(D, H, dtype=dtype, rng=rng()),
            (2, 5, D),
        ),  # fmt: skip
        (
            "ToSTCAB",
            vision.ToSTCAB(
                image_size=8,
                patch_size=4,
                in_chans=1,
                num_classes=3,
                dim=D,
                depth=1,
                num_heads=H,
                cls_attn_layers=1,
                dtype=dtype,
            ),
            (2, 1, 8, 8),
        ),  # fmt: skip
    ]


def _module_dtype(module, x):
    params = module.parameters()
    return next(iter(params.values())).dtype if params else x.dtype


FLOAT32_MODULES = _float_modules(F32)
IDS = [name for name, _, _ in FLOAT32_MODULES]


def _input(shape, dtype=F64, scale=1.0, seed=1):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@pytest.fixture(params=range(len(FLOAT32_MODULES)), ids=IDS)
def case(request):
    return _float_modules(F32)[request.param]


@pytest.mark.parametrize(
    "bad, what",
    [
        (lambda s: _input(s).astype(np.complex128), "complex"),
        (lambda s: _input(s).astype(object), "object"),
        (lambda s: _input(s) > 0, "bool"),
        (lambda s: np.ones(s, dtype=np.int64), "int"),
        (lambda s: _input(s).tolist(), "list"),
        (lambda s: 1.5, "scalar"),
        (lambda s: np.float64(1.5), "NumPy scalar"),
    ],
)
def test_only_real_floating_arrays_are_accepted(case, bad, what):
    name, module, shape = case
    with pytest.raises(ValueError, match=r"^x: expected"):
        module.forward(bad(shape))


def test_output_is_in_the_modules_dtype(case):
    name, module, shape = case
    for in_dtype in (np.float16, F32, F64):
        x = _input(shape, in_dtype)
        out = _first_array(module.forward(x))
        assert out.dtype == _module_dtype(module, x), (name, in_dtype)


def test_float64_beyond_float32_range_is_refused_not_nan(case):
    """A finite float64 input beyond float32's range (3.4e38) came out as NaN (134 of 180)."""
    name, module, shape = case
    if not module.parameters():  # a module without parameters keeps the input's dtype
        pytest.skip("no dtype of its own")
    x = _input(shape)
    x.flat[0] = 1e39
    with pytest.raises(ValueError, match=r"^x: values up to 1e\+39 overflow float32"):
        module.forward(x)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(case, value):
    """Linear, LayerNorm, GELU and MLP never checked for NaN/Inf."""
    name, module, shape = case
    x = _input(shape)
    x.flat[-1] = value
    with pytest.raises(ValueError, match=r"^x: contains NaN or Inf"):
        module.forward(x)


def test_backward_before_forward_is_a_clear_error(case):
    name, module, shape = case
    with pytest.raises(nn.BackwardBeforeForwardError, match="call forward first"):
        module.backward(np.ones(shape, F32))


def test_dy_must_have_the_shape_of_the_last_output(case):
    """LayerNorm.backward returned a batch-2 result after a batch-1 forward."""
    name, module, shape = case
    out = _first_array(module.forward(_input(shape, F32)))
    for wrong in [(1,) + out.shape[1:], (2 * out.shape[0],) + out.shape[1:], out.shape + (1,)]:
        with pytest.raises(ValueError, match=r"^dy: expected the shape of the last output"):
            module.backward(np.ones(wrong, F32))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_dy_must_be_finite(case, value):
    name, module, shape = case
    out = _first_array(module.forward(_input(shape, F32)))
    dy = np.ones(out.shape, F32)
    dy.flat[0] = value
    with pytest.raises(ValueError, match=r"^dy: contains NaN or Inf"):
        module.backward(dy)


def test_dy_of_another_type_is_refused(case):
    name, module, shape = case
    out = _first_array(module.forward(_input(shape, F32)))
    with pytest.raises(ValueError, match=r"^dy: expected"):
        module.backward(np.ones(out.shape, np.complex64))
    with pytest.raises(ValueError, match=r"^dy: expected"):
        module.backward(np.ones(out.shape).tolist())


def test_a_valid_backward_still_works_after_the_checks(case):
    name, module, shape = case
    out = _first_array(module.forward(_input(shape, F64)))
    dx = module.backward(np.ones(out.shape, F64))  # a float64 dy for a float32 output: cast
    if dx is not None:
        assert np.isfinite(dx).all() and dx.dtype == out.dtype


def test_float32_overflow_inside_the_layer_is_refused_not_nan():
    """A finite float32 input whose squares overflow: the layer refuses instead of NaN."""
    ln = nn.LayerNorm(8, dtype=F32)
    x = _input((2, 3, 8), F32, scale=1e30)
    with np.errstate(over="ignore"), pytest.raises(ValueError, match=r"^x: LayerNorm overflowed"):
        ln.forward(x)
    # the same values in float64 are fine
    assert np.isfinite(nn.LayerNorm(8, dtype=F64).forward(x.astype(F64))).all()


@pytest.mark.parametrize(
    "module, shape",
    [
        (nn.TSSA(8, 2), (2, 5, 8)),
        (nn.CausalTSSA(8, 2, 6), (2, 5, 8)),
        (vision.BatchNorm2d(3), (2, 3, 4, 4)),
    ],
    ids=["TSSA", "CausalTSSA", "BatchNorm2d"],
)
def test_an_overflowed_norm_is_refused_not_a_silent_zero(module, shape):
    """w^2 overflowing float32 made the column norm inf and TSSA's output exactly its bias."""
    x = _input(shape, F32, scale=1e25 if isinstance(module, vision.BatchNorm2d) else 1e21)
    with (
        np.errstate(over="ignore", invalid="ignore"),
        pytest.raises(ValueError, match="overflowed"),
    ):
        module.forward(x)
    if isinstance(module, vision.BatchNorm2d):  # the running statistics were left alone
        assert (module.buffers["running_var"] == 1).all()


def test_token_ids_must_be_integers():
    emb = nn.Embedding(10, 4)
    lm = models.ToSTLanguageModel(10, 8, n_layer=1, n_head=2, n_embd=8)
    for module in (emb, lm):
        for bad in (np.zeros((1, 3)), np.zeros((1, 3), bool), np.zeros((1, 3), complex)):
            with pytest.raises(ValueError, match=r"^idx: expected integer token ids"):
                module.forward(bad)
        with pytest.raises(ValueError, match=r"^idx: token ids must lie in \[0, 10\)"):
            module.forward(np.array([[0, 10]]))
    assert lm.forward([[1, 2, 3]]).shape == (1, 3, 10)  # a list of ids is fine


def test_the_checks_run_once_per_call_not_once_per_layer(monkeypatch):
    """A model checks its input (one pass) and its output (one pass), not each layer's."""
    calls = []
    real = np.isfinite
    monkeypatch.setattr(np, "isfinite", lambda a, *k, **kw: calls.append(a.shape) or real(a))
    model = models.ToSTClassifier(dim=8, num_heads=2, depth=3)
    logits = model.forward(_input((4, 8, 8), F32))
    # the input, each TSSA block's column norms (the overflow check, (B, H, p)), the output
    assert calls == [(4, 8, 8)] + [(4, 2, 4)] * 3 + [(4, 10)]
    calls.clear()
    model.backward(np.ones_like(logits))
    # dy, then the result: dx and every gradient (parameter-sized), each once
    assert calls[0] == (4, 10) and len(calls) == 2 + len(model.parameters())


def test_check_inputs_off_skips_only_the_value_checks(monkeypatch):
    """The training loop turns the value checks off (on a GPU each waits for the device);
    type, dtype and shape checks stay."""
    monkeypatch.setattr(nn, "CHECK_INPUTS", False)
    layer = nn.Linear(4, 3)
    x = np.full((1, 2, 4), np.nan, F32)
    assert np.isnan(layer.forward(x)).all()  # not checked: the caller checks its batches
    with pytest.raises(ValueError, match=r"^x: expected real floating-point"):
        layer.forward(np.ones((1, 2, 4), np.complex64))
    with pytest.raises(ValueError, match=r"^dy: expected the shape"):
        layer.backward(np.ones((1, 2, 4), F32))


def test_an_array_on_the_wrong_device_is_refused_by_name(monkeypatch):
    fakecupy.install(monkeypatch)
    layer = nn.Linear(4, 3)  # on the CPU
    with pytest.raises(ValueError, match=r"^x: the array is on the GPU \(CuPy\) but the module"):
        layer.forward(fakecupy.asarray(np.ones((1, 2, 4), F32)))
    layer.to("gpu")
    with pytest.raises(ValueError, match=r"^x: the array is on the CPU \(NumPy\) but the module"):
        layer.forward(np.ones((1, 2, 4), F32))
    # the image models take host images and move them themselves
    model = models.ToSTClassifier(dim=8, num_heads=2).to("gpu")
    assert model.forward(np.ones((1, 8, 8), F32)).shape == (1, 10)


def _f32_against_f64(cls, args, scale, seed=0):
    m64 = cls(*args, dtype=F64, rng=np.random.default_rng(seed))
    m32 = cls(*args, dtype=F32, rng=np.random.default_rng(seed))
    m64.load_state_dict(m32.state_dict())  # the same (float32-representable) weights
    rng = np.random.default_rng(seed + 1)
    x = (rng.standard_normal((2, 7, args[0])) * scale).astype(F32)
    dy = rng.standard_normal((2, 7, args[0])).astype(F32)
    got = [m32.forward(x), m32.backward(dy), *m32.gradients().values()]
    ref = [m64.forward(x.astype(F64)), m64.backward(dy.astype(F64)), *m64.gradients().values()]
    return max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref))


@pytest.mark.parametrize("cls, args", [(nn.TSSA, (16, 4)), (nn.CausalTSSA, (16, 4, 8))])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e6, 1e10, 1e12, 1e14, 1e16, 1e18])
def test_float32_tssa_gradients_match_float64_over_the_whole_float32_range(cls, args, scale):
    """Float32 gradients went wrong from |x| ~ 1e12 (dx error 0.16-0.64, ~2 for the causal
    layer): c^2 ~ 1/|w|^4 underflowed. Now within 1e-3 of float64 (outputs, dx and every
    parameter gradient, each relative to its largest entry) up to |x| ~ 1e18, where w^2 is
    about to overflow float32; beyond that the forward refuses (next test)."""
    assert _f32_against_f64(cls, args, scale) < 1e-3


@pytest.mark.parametrize("cls, args", [(nn.TSSA, (16, 4)), (nn.CausalTSSA, (16, 4, 8))])
def test_float32_tssa_beyond_its_range_is_refused(cls, args):
    layer = cls(*args, dtype=F32)
    x = _input((2, 7, 16), F32, scale=1e21)
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(ValueError, match="overflow"):
        layer.forward(x)
