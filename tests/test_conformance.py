"""ONNX backend node tests, built from the onnx wheel's case definitions and run through
``engineroom.backend``. Expected failures live in conformance_xfail.txt, each with its reason; a
listed test that passes fails this suite until it is removed, so the list only shrinks."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from engineroom import backend

PROVIDERS = os.environ.get("ENGINEROOM_CONFORMANCE_PROVIDERS", "CPUExecutionProvider").split(",")
_XFAIL_FILE = os.path.join(os.path.dirname(__file__), "conformance_xfail.txt")
# Ops whose outputs are random draws: checked for shape, dtype and range instead of values.
_RANDOM = ("test_bernoulli",)


def _load_xfail() -> dict[str, str]:
    out = {}
    for line in open(_XFAIL_FILE, encoding="utf-8"):
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition("#")
            assert reason.strip(), f"expected failure {name.strip()} has no reason"
            out[name.strip()] = reason.strip()
    return out


def _cases():
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(node_cases.collect_testcases(), key=lambda c: c.name)


CASES = _cases()
XFAIL = _load_xfail()


def close(got, ref, rtol=1e-3, atol=1e-7) -> bool:
    """The comparison of ../shared/tools/conformance.py."""
    if isinstance(ref, list):
        return isinstance(got, list) and len(got) == len(ref) and all(close(g, r, rtol, atol) for g, r in zip(got, ref))
    if ref is None:
        return got is None
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return False
    if ref.dtype == object or ref.dtype.kind in "US":
        return got.tolist() == ref.tolist()
    if ref.dtype.kind in "biu":
        return np.array_equal(got, ref)
    try:
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=atol,
                                   equal_nan=True)
        return True
    except AssertionError:
        return False


def _plausible_random(got, ref) -> bool:
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return False
    lo, hi = (0, 1) if ref.dtype.kind in "fbiu" else (None, None)
    return lo is None or bool(np.all((got >= lo) & (got <= hi)))


def _array(v):
    """Case data holds NumPy values, or TensorProtos for types NumPy lacks (bfloat16, float8, int4)."""
    from onnx import TensorProto, numpy_helper

    return numpy_helper.to_array(v) if isinstance(v, TensorProto) else v


def _run_case(case) -> tuple[bool, str]:
    try:
        rep = backend.prepare(case.model, providers=PROVIDERS)
        for inputs, outputs in case.data_sets:
            outputs = [_array(o) for o in outputs]
            got = rep.run([_array(i) for i in inputs])
            if len(got) != len(outputs):
                return False, f"{len(got)} outputs, expected {len(outputs)}"
            check = _plausible_random if case.name.startswith(_RANDOM) else close
            for k, (g, r) in enumerate(zip(got, outputs)):
                if not check(g, r):
                    return False, f"output {k} differs"
        return True, ""
    except Exception as e:  # noqa: BLE001 - any engine error is a failed test with its message
        return False, f"{type(e).__name__}: {str(e)[:300]}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node(case):
    ok, why = _run_case(case)
    if case.name in XFAIL:
        assert not ok, f"{case.name} now passes: remove it from conformance_xfail.txt"
        pytest.xfail(XFAIL[case.name])
    assert ok, why


def test_xfail_list_names_real_tests():
    names = {c.name for c in CASES}
    stale = sorted(set(XFAIL) - names)
    assert not stale, f"conformance_xfail.txt lists tests that do not exist: {stale}"
