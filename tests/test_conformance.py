"""ONNX backend node tests, built from the onnx wheel's case definitions and run through
``engineroom.backend``. Expected failures live in conformance_xfail.txt, each with its reason; a
listed test that passes fails this suite until it is removed, so the list only shrinks.

The cases, the comparison and the expected-failure format are the plugin kit's
(``engineroom.plugin_sdk.testing``), so this suite and a provider author's kit run judge alike."""
from __future__ import annotations

import os

import pytest

from engineroom import backend
from engineroom.plugin_sdk.testing import RANDOM_TESTS, close, node_tests, plausible_random, read_expected_failures

PROVIDERS = os.environ.get("ENGINEROOM_CONFORMANCE_PROVIDERS", "CPUExecutionProvider").split(",")
CASES = node_tests()
XFAIL = read_expected_failures(os.path.join(os.path.dirname(__file__), "conformance_xfail.txt"))


def _run_case(case) -> tuple[bool, str]:
    try:
        rep = backend.prepare(case.model, providers=PROVIDERS)
        for inputs, outputs in case.data_sets:
            got = rep.run(list(inputs))
            if len(got) != len(outputs):
                return False, f"{len(got)} outputs, expected {len(outputs)}"
            check = plausible_random if case.name.startswith(RANDOM_TESTS) else close
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


def test_every_node_test_is_collected():
    assert len(CASES) >= 1884, f"only {len(CASES)} node tests collected from the onnx wheel"


def test_xfail_list_names_real_tests():
    names = {c.name for c in CASES}
    stale = sorted(set(XFAIL) - names)
    assert not stale, f"conformance_xfail.txt lists tests that do not exist: {stale}"
