"""The exercises: every worked solution passes its checker, the untouched learner copies run
top to bottom and report "not implemented yet" without a traceback, planted mistakes are named
by the checker, and the learner copies are up to date with their instructor sources."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import nbformat
import numpy as np
import pytest

from whitebox import exercise_checks as ec
from whitebox import grade

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "exercises"
SOLUTIONS = EXERCISES / "solutions"

NAMES = [
    "ex01_coding_rate.ipynb",
    "ex02_variational_compression.ipynb",
    "ex03_gradient.ipynb",
    "ex04_tssa_step_membership.ipynb",
    "ex05_tssa_forward.ipynb",
    "ex06_tssa_backward.ipynb",
    "ex07_causal_tssa.ipynb",
    "ex08_complexity.ipynb",
    "ex09_unrolled_questions.ipynb",
    "ex10_training_questions.ipynb",
]
#: Reasoning questions (CS231n's inline questions): no function to write, written answers only.
QUESTIONS = ["ex09_unrolled_questions.ipynb", "ex10_training_questions.ipynb"]
PRESENT = [n for n in NAMES if (SOLUTIONS / n).exists()]


def _load_build_module():
    spec = importlib.util.spec_from_file_location(
        "build_exercises", ROOT / "scripts/build_exercises.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_module()


# ----------------------------------------------------------------------------- helpers

_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)


def _is_definition_cell(source: str) -> bool:
    """A cell that only imports and defines (the exercise's functions and the given helpers)."""
    body = ast.parse(source).body
    return bool(body) and all(isinstance(node, _DEFINITIONS) for node in body)


def _checker_statements(nb) -> list[tuple[str, str, str]]:
    """(result name, checker name, statement source) for every `x = check_...(...)` cell."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.parse(cell.source).body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name)
                and node.value.func.id.startswith("check_")
            ):
                out.append((node.targets[0].id, node.value.func.id, ast.unparse(node)))
    return out


def _namespace(nb, mutations=()) -> dict:
    """Execute the definition cells of ``nb``, after textual ``mutations`` (old, new), each of
    which must match exactly once."""
    ns: dict = {"__name__": "__exercise__"}
    hits = {old: 0 for old, _ in mutations}
    for cell in nb.cells:
        if cell.cell_type != "code" or not _is_definition_cell(cell.source):
            continue
        source = cell.source
        for old, new in mutations:
            hits[old] += source.count(old)
            source = source.replace(old, new)
        exec(compile(source, "<exercise>", "exec"), ns)
    for old, n in hits.items():
        assert n == 1, f"the planted mutation {old!r} matched {n} times, not once"
    return ns


def _run_checker(ns, statement):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(statement, ns)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the set


def test_every_exercise_has_a_solution_and_a_learner_copy():
    """Exactly the ten notebooks in each folder: none left under a name from before the ``ex``
    prefix."""
    assert [p.name for p in sorted(SOLUTIONS.glob("*.ipynb"))] == NAMES
    assert [p.name for p in sorted(EXERCISES.glob("*.ipynb"))] == NAMES


def test_no_exercise_shares_a_file_name_with_a_chapter():
    """JupyterLab names a tab by the file name alone: chapter 1 and exercise 1 open side by side
    must be told apart. Each exercise's file is its metadata's exercise with the prefix."""
    chapters = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert {"01_coding_rate.ipynb", "03_gradient.ipynb"} <= chapters  # the names that collided
    assert not chapters & set(NAMES)
    assert all(n.startswith("ex") for n in NAMES)
    for name in NAMES:
        nb = nbformat.read(EXERCISES / name, as_version=4)
        exercise = nb.metadata["whitebox"]["exercise"]
        assert exercise == name[len("ex") : -len(".ipynb")], name  # the identity, unchanged
        assert grade.file_name(exercise) == name and grade.exercise_of(name) == exercise
        assert exercise in grade.EXERCISES


def test_learner_copies_are_up_to_date():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/build_exercises.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- solutions


@pytest.mark.parametrize("name", [n for n in PRESENT if n not in QUESTIONS])
def test_solution_passes_its_checkers(name):
    nb = nbformat.read(SOLUTIONS / name, as_version=4)
    statements = _checker_statements(nb)
    assert statements, f"{name} calls no checker"
    ns = _namespace(nb)
    for result_name, checker, statement in statements:
        text = _run_checker(ns, statement)
        result = ns[result_name]
        assert result, f"{name}: {checker} failed:\n{text}"
        assert "✓" in text and "✗" not in text, text


# ----------------------------------------------------------------------------- learner copies


@pytest.mark.parametrize("name", PRESENT)
def test_learner_copy_runs_clean_and_reports_not_implemented(name):
    from nbclient import NotebookClient

    # the copy as the build generates it (equal to the committed one: see the test above), not
    # the file, which may hold a learner's answers
    source = nbformat.read(SOLUTIONS / name, as_version=4)
    nb = build.learner_notebook(source, f"exercises/solutions/{name}")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(EXERCISES)}}
    ).execute()  # raises CellExecutionError on any error output
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", out
            if out.output_type == "stream" and out.name == "stderr":
                # harmless notices may appear (matplotlib's first font-cache build); errors not
                assert "Error" not in out.text and "Traceback" not in out.text, out.text
            texts.append(out.get("text", ""))
    text = "\n".join(texts)
    assert "Traceback" not in text
    n_checks = len(_checker_statements(nb))
    assert text.count("not implemented yet") == n_checks, text


# ----------------------------------------------------------------------------- planted mistakes

# (notebook, [(text in the worked solution, planted replacement), ...], checker, the slip to name)
PLANTED = [
    ("ex01_coding_rate.ipynb", [("return 0.5 * logdet", "return logdet")], "check_coding_rate",
     "a missing ½"),
    ("ex01_coding_rate.ipynb", [("d / (n * eps**2)", "d / (n * eps)")], "check_coding_rate",
     "ε instead of ε²"),
    ("ex01_coding_rate.ipynb", [("d / (n_k * eps**2)", "d / (n * eps**2)")],
     "check_compression_rate", "n instead of n_k"),
    ("ex02_variational_compression.ipynb", [('"kdp,dn->kpn", U, Z', '"kpd,dn->kpn", U, Z')],
     "check_token_statistics", "a transposed U"),
    ("ex02_variational_compression.ipynb", [("return V", "return V.transpose(0, 2, 1)")],
     "check_eigenbases", "a transposed U"),
    ("ex03_gradient.ipynb", [('"kdp,kpn->dn", U, W) / n', '"kdp,kpn->dn", U, W)')],
     "check_variational_compression_grad", "a missing 1/n"),
    ("ex03_gradient.ipynb", [("(f(Z_plus) - f(Z_minus)) / (2 * h)", "(f(Z_plus) - f(Z)) / h")],
     "check_numerical_gradient", "a forward difference"),
    ("ex04_tssa_step_membership.ipynb", [("e.sum(axis=1, keepdims=True)", "e.sum(axis=0, keepdims=True)")],
     "check_estimate_membership", "the softmax over the wrong axis"),
    ("ex04_tssa_step_membership.ipynb", [("return Z - tau * update", "return Z + tau * update")],
     "check_tssa_step", "a plus sign"),
    ("ex05_tssa_forward.ipynb", [('x @ params["qkv.weight"] +', 'x @ params["qkv.weight"].T +')],
     "check_tssa_forward", "a transposed projection W_qkv"),
    ("ex05_tssa_forward.ipynb", [("np.exp(scores).sum(axis=1, keepdims=True)", "np.exp(scores).sum(axis=2, keepdims=True)")],
     "check_tssa_forward", "the softmax over the wrong axis"),
    ("ex05_tssa_forward.ipynb", [("(pi.sum(axis=2, keepdims=True) + 1e-8)", "pi.sum(axis=2, keepdims=True)")],
     "check_tssa_forward", "a forgotten 1e-8"),
    ("ex05_tssa_forward.ipynb", [("w / np.maximum(norm, 1e-12)", "w / norm")],
     "check_tssa_forward", "a forgotten 1e-12 floor"),
    ("ex05_tssa_forward.ipynb", [("w.reshape(B, n, H, p).transpose(0, 2, 1, 3)", "w.reshape(B, H, n, p)")],
     "check_tssa_forward", "heads split without the transpose"),
    ("ex06_tssa_backward.ipynb", [('cache["v_flat"].reshape(-1, D).T @ dout.reshape(-1, D)',
                                 'dout.reshape(-1, D).T @ cache["v_flat"].reshape(-1, D)')],
     "check_tssa_backward", "a transposed weight gradient"),
    ("ex06_tssa_backward.ipynb", [("(dpi * pi).sum(axis=1, keepdims=True)", "(dpi * pi).sum(axis=2, keepdims=True)")],
     "check_tssa_backward", "the softmax backward over the wrong axis"),
    ("ex06_tssa_backward.ipynb", [("dw += dnorm * w / denom", "dw += 0 * dnorm")],
     "check_tssa_backward", "the column norm treated as a constant"),
    ("ex06_tssa_backward.ipynb", [("dy = -(g**2) * dg", "dy = 0 * dg")],
     "check_tssa_backward", "y treated as a constant"),
    ("ex07_causal_tssa.ipynb", [("np.cumsum(pi[..., None] * w_sq, axis=2)", "(pi[..., None] * w_sq).sum(axis=2, keepdims=True)"),
                              ("np.cumsum(pi, axis=2) + 1e-8", "pi.sum(axis=2, keepdims=True) + 1e-8")],
     "check_causal_tssa_forward", "the statistics y see the future"),
    ("ex07_causal_tssa.ipynb", [("+ p * beta", "+ beta")],
     "check_causal_tssa_forward", "β added once instead of once per feature"),
    ("ex08_complexity.ipynb", [("np.polyfit(np.log(ns), np.log(times), 1)", "np.polyfit(ns, times, 1)")],
     "check_fit_exponent", "a fit of t against n"),
]  # fmt: skip

# The slips students really make (issue 11): each planted here must fail AND be named.
PLANTED += [
    # a wrong logarithm base
    ("ex01_coding_rate.ipynb", [("return 0.5 * logdet", "return 0.5 * np.log2(np.linalg.det(A))")],
     "check_coding_rate", "the logarithm in base 2 instead of the natural one"),
    ("ex01_coding_rate.ipynb", [("total += n_k / (2 * n) * logdet", "total += n_k / (2 * n) * logdet / np.log(10)")],
     "check_compression_rate", "the logarithm in base 10 instead of the natural one"),
    ("ex02_variational_compression.ipynb", [("np.log1p(d / eps**2 * y)", "np.log2(1 + d / eps**2 * y)")],
     "check_variational_compression_rate", "the logarithm in base 2 instead of the natural one"),
    # a centred covariance, or 1/(n - 1)
    ("ex01_coding_rate.ipynb", [("A = np.eye(d) + d / (n * eps**2) * (Z @ Z.T)",
                               "Zc = Z - Z.mean(axis=1, keepdims=True)\n    A = np.eye(d) + d / (n * eps**2) * (Zc @ Zc.T)")],
     "check_coding_rate", "a centred covariance"),
    ("ex01_coding_rate.ipynb", [("d / (n * eps**2) * (Z @ Z.T)", "d / eps**2 * np.cov(Z)")],
     "check_coding_rate", "np.cov (centred, and 1/(n − 1))"),
    ("ex01_coding_rate.ipynb", [("d / (n * eps**2)", "d / ((n - 1) * eps**2)")],
     "check_coding_rate", "1/(n − 1) instead of 1/n"),
    ("ex01_coding_rate.ipynb", [("cov = (Z * pi_k) @ Z.T", "Zc = Z - (Z @ pi_k / n_k)[:, None]\n        cov = (Zc * pi_k) @ Zc.T")],
     "check_compression_rate", "a centred group covariance"),
    ("ex01_coding_rate.ipynb", [("d / (n_k * eps**2)", "d / ((n_k - 1) * eps**2)")],
     "check_compression_rate", "1/(n_k − 1) instead of 1/n_k"),
    ("ex02_variational_compression.ipynb", [('return np.einsum("kpn,nk->kp", UtZ**2, Pi) / n_k[:, None]',
                                           'UtZ = UtZ - (np.einsum("kpn,nk->kp", UtZ, Pi) / n_k[:, None])[:, :, None]\n'
                                           '    return np.einsum("kpn,nk->kp", UtZ**2, Pi) / n_k[:, None]')],
     "check_token_statistics", "a centred second moment"),
    # hard argmax groups instead of the soft Π
    ("ex01_coding_rate.ipynb", [("pi_k = Pi[:, k]  # (n,)", "pi_k = (Pi.argmax(axis=1) == k).astype(float)")],
     "check_compression_rate", "hard groups (the argmax of Π) instead of the soft Π"),
    ("ex02_variational_compression.ipynb", [('UtZ = np.einsum("kdp,dn->kpn", U, Z)  # (K, p, n): U_k^T Z for every k',
                                           'Pi = np.eye(Pi.shape[1])[Pi.argmax(axis=1)]\n    UtZ = np.einsum("kdp,dn->kpn", U, Z)')],
     "check_token_statistics", "hard groups (the argmax of Π) instead of the soft Π"),
    ("ex03_gradient.ipynb", [('y = np.einsum("kpn,nk->kp", UtZ**2, Pi)',
                            'Pi = np.eye(Pi.shape[1])[Pi.argmax(axis=1)]\n    y = np.einsum("kpn,nk->kp", UtZ**2, Pi)')],
     "check_variational_compression_grad", "hard groups (the argmax of Π) instead of the soft Π"),
    ("ex04_tssa_step_membership.ipynb", [("return e / e.sum(axis=1, keepdims=True)",
                                        "return (scores == scores.max(axis=1, keepdims=True)).astype(float)")],
     "check_estimate_membership", "a hard argmax instead of the softmax"),
    ("ex05_tssa_forward.ipynb", [("pi = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)",
                                "pi = (scores == scores.max(axis=1, keepdims=True)).astype(float)")],
     "check_tssa_forward", "a hard argmax instead of the softmax"),
    # weights 1/K instead of n_k/n
    ("ex01_coding_rate.ipynb", [("total += n_k / (2 * n) * logdet", "total += 1 / (2 * Pi.shape[1]) * logdet")],
     "check_compression_rate", "weights 1/K instead of n_k/n"),
    ("ex02_variational_compression.ipynb", [("np.sum(n_k / (2 * n) * per_group)", "np.sum(1 / (2 * len(n_k)) * per_group)")],
     "check_variational_compression_rate", "weights 1/K instead of n_k/n"),
    ("ex03_gradient.ipynb", [('np.einsum("kdp,kpn->dn", U, W) / n', 'np.einsum("kdp,kpn->dn", U, W / (U.shape[0] * Pi.sum(axis=0)[:, None, None]))')],
     "check_variational_compression_grad", "weights 1/K instead of n_k/n"),
    # c = p/ε² instead of d/ε², or the scale dropped
    ("ex02_variational_compression.ipynb", [("np.log1p(d / eps**2 * y)", "np.log1p(y.shape[1] / eps**2 * y)")],
     "check_variational_compression_rate", "c = p/ε² instead of d/ε²"),
    ("ex02_variational_compression.ipynb", [("np.log1p(d / eps**2 * y)", "np.log1p(y)")],
     "check_variational_compression_rate", "the scale d/ε² is missing"),
    ("ex03_gradient.ipynb", [("c = d / eps**2", "c = U.shape[2] / eps**2")],
     "check_variational_compression_grad", "c = p/ε² instead of d/ε²"),
    ("ex04_tssa_step_membership.ipynb", [("c = d / eps**2", "c = U.shape[2] / eps**2")],
     "check_tssa_step", "c = p/ε² instead of d/ε²"),
    # a mean instead of a sum over coordinates
    ("ex02_variational_compression.ipynb", [("np.log1p(d / eps**2 * y).sum(axis=1)", "np.log1p(d / eps**2 * y).mean(axis=1)")],
     "check_variational_compression_rate", "a mean over the coordinates instead of a sum"),
    ("ex05_tssa_forward.ipynb", [("(w_hat**2).sum(axis=3)", "(w_hat**2).mean(axis=3)")],
     "check_tssa_forward", "a mean over the features instead of a sum in the scores"),
    # 1/n instead of 1/n_k
    ("ex05_tssa_forward.ipynb", [("weights = pi / (pi.sum(axis=2, keepdims=True) + 1e-8)", "weights = pi / n")],
     "check_tssa_forward", "1/n instead of 1/Σ_j Π_hj in the statistics"),
    ("ex07_causal_tssa.ipynb", [("den = np.cumsum(pi, axis=2) + 1e-8", "den = np.arange(1.0, T + 1)")],
     "check_causal_tssa_forward", "the token count t + 1 instead of Σ_{t' ≤ t} Π"),
    # τ/n applied twice
    ("ex04_tssa_step_membership.ipynb", [("return Z - tau * update", "return Z - tau / n * update")],
     "check_tssa_step", "τ/n applied twice"),
    # a temperature that divides instead of multiplies (or the reverse)
    ("ex04_tssa_step_membership.ipynb", [("/ (2 * eta)", "* eta")],
     "check_estimate_membership", "η multiplies instead of divides"),
    ("ex05_tssa_forward.ipynb", [('scores = params["temp"] * (w_hat**2).sum(axis=3)', 'scores = (w_hat**2).sum(axis=3) / params["temp"]')],
     "check_tssa_forward", "the temperature divides instead of multiplies"),
    ("ex07_causal_tssa.ipynb", [('scores = params["temp"] * ((w_sq / r).sum(axis=3) + p * beta)',
                               'scores = ((w_sq / r).sum(axis=3) + p * beta) / params["temp"]')],
     "check_causal_tssa_forward", "the temperature divides instead of multiplies"),
    # a missing bias
    ("ex05_tssa_forward.ipynb", [('w = x @ params["qkv.weight"] + params["qkv.bias"]', 'w = x @ params["qkv.weight"]')],
     "check_tssa_forward", "the bias b_qkv is missing"),
    ("ex05_tssa_forward.ipynb", [('out = v_flat @ params["proj.weight"] + params["proj.bias"]', 'out = v_flat @ params["proj.weight"]')],
     "check_tssa_forward", "the output bias b_out is missing"),
    ("ex07_causal_tssa.ipynb", [('out = v_flat @ params["proj.weight"] + params["proj.bias"]', 'out = v_flat @ params["proj.weight"]')],
     "check_causal_tssa_forward", "the output bias b_out is missing"),
    ("ex07_causal_tssa.ipynb", [("+ p * beta", "")],
     "check_causal_tssa_forward", "the bias β (denom_bias) is missing"),
    # an exclusive prefix in the causal statistics
    ("ex07_causal_tssa.ipynb", [("np.cumsum(pi[..., None] * w_sq, axis=2)", "np.cumsum(pi[..., None] * w_sq, axis=2) - pi[..., None] * w_sq"),
                              ("np.cumsum(pi, axis=2) + 1e-8", "np.cumsum(pi, axis=2) - pi + 1e-8")],
     "check_causal_tssa_forward", "an exclusive prefix in the statistics y"),
    ("ex07_causal_tssa.ipynb", [("np.maximum(np.cumsum(w_sq, axis=2), 1e-12)", "np.maximum(np.cumsum(w_sq, axis=2) - w_sq, 1e-12)")],
     "check_causal_tssa_forward", "an exclusive prefix in the normalizer r"),
    # a factor 2 missing on one path of the backward
    ("ex06_tssa_backward.ipynb", [("dw += 2 * dy[:, :, None, :]", "dw += dy[:, :, None, :]")],
     "check_tssa_backward", "a missing 2 in d(w²)/dw on the path through y"),
    ("ex06_tssa_backward.ipynb", [("dw += 2 * da[..., None]", "dw += da[..., None]")],
     "check_tssa_backward", "a missing 2 in d(w²)/dw on the path through the scores"),
    # an axis or batch slip in a parameter gradient
    ("ex06_tssa_backward.ipynb", [('grads["proj.bias"] = dout.sum(axis=(0, 1))', 'grads["proj.bias"] = dout.sum(axis=0)')],
     "check_tssa_backward", "a bias or temperature gradient summed over the wrong axes"),
    ("ex06_tssa_backward.ipynb", [('grads["qkv.bias"] = dw_flat.sum(axis=(0, 1))', 'grads["qkv.bias"] = dw_flat.sum(axis=1)')],
     "check_tssa_backward", "a bias or temperature gradient summed over the wrong axes"),
    ("ex06_tssa_backward.ipynb", [('x.reshape(-1, D).T @ dw_flat.reshape(-1, D)', 'x[0].T @ dw_flat[0]')],
     "check_tssa_backward", "a parameter gradient from one batch element only"),
    ("ex06_tssa_backward.ipynb", [('cache["v_flat"].reshape(-1, D).T @ dout.reshape(-1, D)', 'cache["v_flat"][0].T @ dout[0]')],
     "check_tssa_backward", "a parameter gradient from one batch element only"),
    ("ex06_tssa_backward.ipynb", [('(dz * cache["a"]).sum(axis=(0, 2))[:, None]', '(dz * cache["a"]).sum(axis=(0, 1))[:, None]')],
     "check_tssa_backward", "a bias or temperature gradient summed over the wrong axes"),
    ("ex06_tssa_backward.ipynb", [('(dz * cache["a"]).sum(axis=(0, 2))[:, None]', '(dz * cache["a"])[0].sum(axis=1)[:, None]')],
     "check_tssa_backward", "a parameter gradient from one batch element only"),
    # task 2: wrong answers that used to pass
    ("ex04_tssa_step_membership.ipynb", [("scores -= scores.max(axis=1, keepdims=True)", "pass")],
     "check_estimate_membership", "the max is not subtracted"),
    ("ex05_tssa_forward.ipynb", [("scores = scores - scores.max(axis=1, keepdims=True)", "pass")],
     "check_tssa_forward", "the softmax without the maximum subtracted"),
    ("ex07_causal_tssa.ipynb", [("scores = scores - scores.max(axis=1, keepdims=True)", "pass")],
     "check_causal_tssa_forward", "the softmax without the maximum subtracted"),
    ("ex03_gradient.ipynb", [("    grad = np.zeros_like(Z)\n", "    h = 1e-5  # the slip: the argument is shadowed\n    grad = np.zeros_like(Z)\n")],
     "check_numerical_gradient", "the step h is ignored"),
]  # fmt: skip


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the planted code divides 0 by 0
@pytest.mark.parametrize(
    "name, mutation, checker, slip",
    [pytest.param(*p, id=f"{p[0][:4]}-{p[3]}") for p in PLANTED if p[0] in PRESENT],
)
def test_planted_mistake_fails_with_feedback_naming_it(name, mutation, checker, slip):
    nb = nbformat.read(SOLUTIONS / name, as_version=4)
    ns = _namespace(nb, mutation)
    [(result_name, _, statement)] = [s for s in _checker_statements(nb) if s[1] == checker]
    text = _run_checker(ns, statement)
    result = ns[result_name]
    assert not result
    assert result.status in ("wrong", "error"), text
    assert f"Likely slip: {slip}" in text, text
    assert any(s.startswith(slip) for s in result.slips), result.slips
    assert "expected" in text and "got" in text  # the table of expected vs got


def test_a_causal_layer_that_sees_the_future_is_called_not_causal():
    name = "ex07_causal_tssa.ipynb"
    if name not in PRESENT:
        pytest.skip("exercise 7 is not written yet")
    nb = nbformat.read(SOLUTIONS / name, as_version=4)
    mutation = [
        (
            "np.maximum(np.cumsum(w_sq, axis=2), 1e-12)",
            "np.maximum(w_sq.sum(axis=2, keepdims=True), 1e-12)",
        )
    ]
    ns = _namespace(nb, mutation)
    text = _run_checker(ns, "result = check_causal_tssa_forward(causal_tssa_forward)")
    assert not ns["result"]
    assert "not causal: changing tokens 3.. changed the outputs at tokens < 3" in text, text
    assert "Likely slip: the normalizer r sees the future" in text, text


# ----------------------------------------------------------------------------- the checkers


def test_checkers_report_instead_of_raising(capsys):
    def raises(Z, eps):
        return {}["missing"]

    def returns_none(Z, eps):
        return None

    def wrong_shape(Z, eps):
        return np.zeros(3)

    def mutates(Z, eps):
        Z *= 2
        d, n = Z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + d / (4 * n * eps**2) * (Z @ Z.T))[1]

    r = ec.check_coding_rate(raises)
    out = capsys.readouterr().out
    assert r.status == "error" and "KeyError" in out and 'return {}["missing"]' in out
    assert "Traceback" not in out

    r = ec.check_coding_rate(returns_none)
    assert not r and "forget `return`?" in capsys.readouterr().out

    r = ec.check_coding_rate(wrong_shape)
    assert r.status == "wrong" and "shape (3,), expected ()" in capsys.readouterr().out

    r = ec.check_coding_rate(mutates)
    assert not r and "changed its input `Z` in place" in capsys.readouterr().out

    r = ec.check_coding_rate("not a function")
    assert r.status == "error"


def test_not_implemented_is_one_line(capsys):
    def todo(Z, eps):
        raise NotImplementedError

    r = ec.check_coding_rate(todo)
    out = capsys.readouterr().out
    assert r.status == "not implemented" and not r
    assert out.strip().count("\n") == 0 and "not implemented yet" in out


def test_checker_references_equal_the_library():
    """The checkers' own NumPy layers (intermediates, slip variants) are the library's."""
    from whitebox import nn
    from whitebox.gradcheck import rel_error

    for case in ec.tssa_layer._tssa_cases(501):
        x, params = case.args["x"], case.args["params"]
        out, cache = nn.tssa_forward(x, params)
        ref = ec.tssa_reference(x, params)
        assert rel_error(out, ref["out"]) < 1e-12 and rel_error(cache["pi"], ref["pi"]) < 1e-12
        dout = np.random.default_rng(0).standard_normal(out.shape)
        dx, grads = nn.tssa_backward(dout, cache)
        dx_ref, grads_ref = ec.tssa_backward_reference(dout, ref)
        assert rel_error(dx, dx_ref) < 1e-10
        assert all(rel_error(grads[k], grads_ref[k]) < 1e-10 for k in ec.GRAD_KEYS)
    for case in ec.causal._causal_cases(701):
        x, params = case.args["x"], case.args["params"]
        out, cache = nn.causal_tssa_forward(x, params)
        ref = ec.causal_tssa_reference(x, params)
        assert rel_error(out, ref["out"]) < 1e-12 and rel_error(cache["pi"], ref["pi"]) < 1e-12


def test_time_call_checker(capsys):
    def best(f, repeats=5):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return min(times)

    assert ec.check_time_call(best)
    assert ec.check_time_call(
        lambda f, repeats=5: sum(best(f, 1) for _ in range(repeats))
    ).slips == ["the total instead of the best time"]
    assert ec.check_time_call(lambda f, repeats=5: 1e3 * best(f, repeats)).slips == [
        "milliseconds instead of seconds"
    ]
    assert not ec.check_time_call(lambda f, repeats=5: best(f, 1))  # too few calls
    assert "Likely slip" in capsys.readouterr().out


def _timings(f, repeats):
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        out.append(time.perf_counter() - start)
    return out


@pytest.mark.parametrize(
    "statistic, slip",
    [
        (lambda t: float(np.mean(t)), "the mean instead of the best time"),
        (lambda t: float(np.median(t)), "the median instead of the best time"),
        (max, "the slowest call instead of the best"),
        (lambda t: t[-1], "the last call's time instead of the best"),
        (sum, "the total instead of the best time"),
    ],
    ids=["mean", "median", "max", "last", "total"],
)
def test_time_call_names_the_statistic_it_returned(statistic, slip, capsys):
    """A timer that returns the mean, the median, ... of its repeats instead of the best."""
    result = ec.check_time_call(lambda f, repeats=5: statistic(_timings(f, repeats)))
    out = capsys.readouterr().out
    assert not result and result.slips == [slip], out
    assert f"Likely slip: {slip}" in out


def test_time_call_accepts_a_warm_up_call():
    def with_warm_up(f, repeats=5):
        f()  # a warm-up call, not timed
        return min(_timings(f, repeats))

    assert ec.check_time_call(with_warm_up)


def _spec(name):
    from whitebox import nn

    return ec.SPECS[name](nn.tssa_forward) if name == "check_tssa_backward" else ec.SPECS[name]()


@pytest.mark.parametrize("name", sorted(ec.SPECS))
def test_every_slip_differs_from_the_right_answer(name):
    """A slip that equals the right answer on every case could never be named."""
    spec = _spec(name)
    cases = spec.cases()
    for slip in spec.slips:
        if slip.fn is None:
            continue
        differs = False
        for case in cases:
            try:
                with np.errstate(all="ignore"):
                    wrong = slip.fn(case)
            except Exception:
                continue  # e.g. a transposed U that does not fit a p < d case
            right = spec.reference(case)
            differs |= any(
                not ec.core.compare(right[q], wrong[q], spec.tol, spec.floor, spec.relative_floor)[
                    0
                ]
                for q in wrong
            )
        assert differs, f"{name}: the slip {slip.name!r} is indistinguishable from the answer"


# ----------------------------------------------------------------------------- the build


def test_build_replaces_regions_at_their_indentation():
    source = "def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    y = 2 * x\n    return y\n    ### END SOLUTION\n"
    out, n = build.strip_regions(source, build.CODE_STUB, "test")
    assert n == 1
    assert out == (
        "def f(x):\n    '''doc'''\n    # TODO: your code here\n    raise NotImplementedError\n"
    )
    ast.parse(out)


@pytest.mark.parametrize(
    "source",
    [
        "### BEGIN SOLUTION\nx = 1\n",
        "x = 1\n### END SOLUTION\n",
        "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n",
    ],
)
def test_build_rejects_unbalanced_markers(source):
    with pytest.raises(build.BuildError):
        build.strip_regions(source, build.CODE_STUB, "test")


@pytest.mark.parametrize("name", QUESTIONS)
def test_question_notebook_has_questions_with_model_answers(name):
    """3 to 5 questions, each followed by a "Your answer:" cell whose model answer is a
    solution region; the learner copy keeps the question and the blank answer only."""
    solution = nbformat.read(SOLUTIONS / name, as_version=4)
    learner = nbformat.read(EXERCISES / name, as_version=4)
    cells = solution.cells
    questions = [
        i for i, c in enumerate(cells) if c.cell_type == "markdown" and "**Question" in c.source
    ]
    assert 3 <= len(questions) <= 5, questions
    for i in questions:
        answer = cells[i + 1]
        assert answer.cell_type == "markdown" and answer.source.startswith("**Your answer:**")
        assert build.BEGIN in answer.source and "**Model answer.**" in answer.source
    assert not any(build.BEGIN in c.source for c in cells if c.cell_type == "code")
    text = "\n".join(c.source for c in learner.cells)
    assert "Model answer" not in text and "check_claim(" not in text
    assert text.count("**Your answer:**\n\n" + build.MARKDOWN_STUB) == len(questions)
    # every question is about something the notebook computes: a code cell right above it
    for i in questions:
        assert any(c.cell_type == "code" for c in cells[max(0, i - 2) : i]), i


@pytest.mark.parametrize("name", QUESTIONS)
def test_question_notebook_checks_the_numbers_of_its_model_answers(name):
    """The solution's cells that check the model answers' numbers run and raise nothing
    (whitebox.analysis.check_claim raises when a claim fails)."""
    nb = nbformat.read(SOLUTIONS / name, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", out


@pytest.mark.parametrize("name", PRESENT)
def test_learner_copy_keeps_no_solution(name):
    solution = nbformat.read(SOLUTIONS / name, as_version=4)
    learner = nbformat.read(EXERCISES / name, as_version=4)
    text = "\n".join(c.source for c in learner.cells if c.cell_type == "code")
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert "solution-only" not in str([c.metadata for c in learner.cells])
    stubs = text.count("raise NotImplementedError")
    regions = sum(c.source.count(build.BEGIN) for c in solution.cells if c.cell_type == "code")
    if name in QUESTIONS:  # written answers only
        markdown = "\n".join(c.source for c in learner.cells if c.cell_type == "markdown")
        answers = sum(
            c.source.count(build.BEGIN)
            for c in solution.cells
            if build.SOLUTION_ONLY_TAG not in c.metadata.get("tags", [])
        )
        assert stubs == regions == 0 and markdown.count(build.MARKDOWN_STUB) == answers > 0
        return
    assert stubs == regions > 0


@pytest.mark.parametrize("name", PRESENT)
def test_chapter_links_point_at_existing_chapters(name):
    """Links ../notebooks/NN_*.ipynb must name the chapter file once that chapter exists."""
    learner = nbformat.read(EXERCISES / name, as_version=4)
    text = "\n".join(c.source for c in learner.cells if c.cell_type == "markdown")
    links = re.findall(r"\]\(\.\./notebooks/(\d\d)_([\w-]+\.ipynb)\)", text)
    assert links, f"{name} does not link back to its chapter"
    for number, rest in links:
        target = ROOT / "notebooks" / f"{number}_{rest}"
        chapters = sorted((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
        if chapters and not target.exists():
            pytest.fail(
                f"{name} links to {target.name}, but chapter {number} is {chapters[0].name}"
            )


def _sphinx_match(name: str, pattern: str) -> bool:
    """Sphinx's glob for include_patterns and toctree :glob: (``*`` stays within a folder)."""
    a, b = PurePosixPath(name), PurePosixPath(pattern)
    return len(a.parts) == len(b.parts) and a.match(pattern)


def test_the_book_names_every_exercise_file_and_no_chapter_as_one():
    """book/conf.py makes the exercises and their solutions pages (include_patterns) and
    book/index.md lists them in the table of contents (toctree :glob:), under their file names;
    the exercises' patterns pick no chapter."""
    conf = ast.parse((ROOT / "book" / "conf.py").read_text(encoding="utf-8"))
    include = next(
        ast.literal_eval(node.value)
        for node in conf.body
        if isinstance(node, ast.Assign) and node.targets[0].id == "include_patterns"
    )
    index = (ROOT / "book" / "index.md").read_text(encoding="utf-8")
    toc = [ln.strip() for ln in index.splitlines() if ln.strip().startswith("exercises/")]
    files = [f"exercises/{n}" for n in NAMES] + [f"exercises/solutions/{n}" for n in NAMES]
    for path in files:
        assert any(_sphinx_match(path, p) for p in include), f"{path} is not a page of the book"
        docname = path.removesuffix(".ipynb")
        assert any(_sphinx_match(docname, p) for p in toc), f"{docname} is in no toctree"
    chapters = [f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")]
    # an exercise under its old name (a chapter's name) is no page either
    chapters += [f"exercises/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")]
    exercise_patterns = [p for p in include + toc if p.startswith("exercises/")]
    for path in chapters:
        for p in exercise_patterns:
            assert not _sphinx_match(path, p) and not _sphinx_match(path[:-6], p), (path, p)
    assert _sphinx_match("exercises/ex01_coding_rate", "exercises/ex[0-9]*")
    assert not _sphinx_match("exercises/solutions/ex01_coding_rate", "exercises/ex[0-9]*")


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(path):
    """(link, file it points at) for every relative markdown link of a notebook or .md file."""
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    else:
        text = path.read_text(encoding="utf-8")
    for link in _LINK.findall(text):
        target = link.partition("#")[0]
        if target and not re.match(r"[a-z]+:", target):
            yield link, (path.parent / target).resolve()


@pytest.mark.parametrize(
    "path",
    [EXERCISES / "README.md", *(EXERCISES / n for n in NAMES), *(SOLUTIONS / n for n in NAMES)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_relative_link_of_the_exercises_resolves(path):
    """The links between exercises, to the learner copy and back to the chapters name files that
    exist (a rename, such as the ``ex`` prefix, leaves none stale)."""
    links = list(_relative_links(path))
    assert links, f"{path.name} has no relative link"
    stale = [link for link, target in links if not target.exists()]
    assert not stale, f"{path.relative_to(ROOT)}: no such file for {stale}"


def test_the_link_check_finds_a_stale_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md#x) [web](https://example.org) [old](01_coding_rate.ipynb)\n")
    links = list(_relative_links(page))
    assert [link for link, _ in links] == ["page.md#x", "01_coding_rate.ipynb"]
    assert [link for link, target in links if not target.exists()] == ["01_coding_rate.ipynb"]


def _own_coding_rate(Z, eps):
    d, n = Z.shape
    return 0.5 * np.linalg.slogdet(np.eye(d) + d / (n * eps**2) * (Z @ Z.T))[1]


def test_constant_factor_is_said_only_when_every_case_has_the_same_factor(capsys):
    def times_three(Z, eps):
        return 3.0 * _own_coding_rate(Z, eps)

    def scaled_by_the_data(Z, eps):  # a factor that changes from case to case (like a centring)
        return float(np.abs(Z).max()) * 1.37 * _own_coding_rate(Z, eps)

    assert not ec.check_coding_rate(times_three)
    out = capsys.readouterr().out
    assert "3 × the expected one in every case: a constant factor is off" in out
    assert not ec.check_coding_rate(scaled_by_the_data)
    out = capsys.readouterr().out
    assert "constant factor is off" not in out and "not a constant factor" in out
    assert "in case '" in out.split("not a constant factor")[0]  # names the case that differs
