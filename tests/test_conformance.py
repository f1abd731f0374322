"""ONNX backend node tests, built from the onnx wheel's case definitions and run through ``engineroom.backend``,
once per provider: the CPU provider alone, every other provider first with the CPU provider behind it (the
nodes it does not claim fall back to the CPU through real copies; a test of which it claims no node is
skipped, the CPU provider's run covers it). A provider that is not available here is one skip with its reason.

Each provider has one reviewed list of expected differences (``EXPECTED`` below), a line per test,
``test_name  # reason``; a listed test that passes, or that its provider no longer claims, fails this suite
until it is removed, so the lists only shrink. The cases and the comparison are the plugin kit's
(``engineroom.plugin_sdk.testing``), so this suite and a provider author's kit run judge alike.

By default every provider runs every node test but OpenVINO, which compiles a model per test: it runs a
deterministic sample, about one test in ``SAMPLE[provider]`` (those whose name hashes into it), plus every
listed test and the tests of the ops its rules decline in some cases (``ALWAYS``). Measured on 2 shared cores
(load 5-6): CPU 35 s, OpenCL on PoCL 55 s, OpenVINO 76 s (its sample; 127 s for all). Environment:

- ``ENGINEROOM_CONFORMANCE=all``: every node test on every provider;
- ``ENGINEROOM_CONFORMANCE_PROVIDERS=P1,P2``: only these providers (default: all of ``EXPECTED``).
"""
from __future__ import annotations

import importlib.util
import os
import zlib

import numpy as np
import pytest

import engineroom as ort
from engineroom import backend
from engineroom.plugin_sdk.testing import RANDOM_TESTS, close, node_tests, plausible_random, read_expected_failures

HERE = os.path.dirname(os.path.abspath(__file__))
CPU = "CPUExecutionProvider"


def _shipped(package: str, name: str) -> str:
    """A file that ships inside a provider's package (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    return os.path.join(os.path.dirname(spec.origin), name)


# provider -> its reviewed list of expected differences
EXPECTED = {
    CPU: os.path.join(HERE, "conformance_xfail.txt"),
    "OpenCLExecutionProvider": os.path.join(HERE, "conformance_xfail_opencl.txt"),
    # the list OpenVINO ships for its kit users (python -m engineroom.plugin_sdk.testing ... --expected-failures)
    "OpenVINOExecutionProvider": _shipped("engineroom.providers.openvino", "node_test_differences.txt"),
    "CUDAExecutionProvider": os.path.join(HERE, "conformance_xfail_cuda.txt"),
}
# Tests always in a provider's default sample: those of the ops its rules decline in some cases (so a rule
# that stops declining shows up without the full run).
ALWAYS = {
    "OpenVINOExecutionProvider": ("test_resize_", "test_dft", "test_top_k", "test_roialign", "test_lstm", "test_gru",
                                  "test_simple_rnn", "test_rnn_", "test_maxpool_2d_ceil", "test_reduce_max_empty",
                                  "test_reduce_l1_default"),
}
# without ENGINEROOM_CONFORMANCE=all, these providers run about one test in N (the others all of them)
SAMPLE = {"OpenVINOExecutionProvider": 4}
FULL = os.environ.get("ENGINEROOM_CONFORMANCE", "").lower() == "all"
WANTED = [p for p in os.environ.get("ENGINEROOM_CONFORMANCE_PROVIDERS", ",".join(EXPECTED)).split(",") if p]
CASES = node_tests()
LISTS = {p: read_expected_failures(path) for p, path in EXPECTED.items()}


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


def _unavailable(provider: str) -> str | None:
    """Why ``provider`` cannot run here, or None."""
    if provider in ort.get_available_providers():
        return None
    from importlib.metadata import entry_points

    from engineroom.plugin_sdk import ENTRY_POINT_GROUP

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == provider]
    if not found:
        return f"{provider} is not registered in the '{ENTRY_POINT_GROUP}' entry-point group"
    try:
        why = found[0].load().unavailable_reason()
    except Exception as e:  # noqa: BLE001 - a provider that cannot even load says why
        why = f"{type(e).__name__}: {e}"
    return f"{provider} is not available here: {why or 'is_available() is False'}"


def _in_sample(provider: str, name: str) -> bool:
    if FULL or provider not in SAMPLE or name in LISTS[provider] or name.startswith(ALWAYS.get(provider, ())):
        return True
    return zlib.crc32(name.encode()) % SAMPLE[provider] == 0


def _params() -> list:
    out = []
    for p in WANTED:
        if p not in EXPECTED:
            raise ValueError(f"ENGINEROOM_CONFORMANCE_PROVIDERS names {p!r}; known: {', '.join(EXPECTED)}")
        why = _unavailable(p)
        if why:
            out.append(pytest.param(p, None, id=f"{_short(p)}-unavailable", marks=pytest.mark.skip(reason=why)))
            continue
        out.extend(pytest.param(p, c, id=f"{_short(p)}-{c.name}") for c in CASES if _in_sample(p, c.name))
    return out


def _run_case(case, provider: str) -> tuple[bool | None, str]:
    """(True, "") when every output matches, (False, why) when not, (None, "") when ``provider`` claims no node."""
    providers = [CPU] if provider == CPU else [provider, CPU]
    try:
        rep = backend.prepare(case.model, providers=providers, log_severity_level=3)
        if provider != CPU and not any(p.ep_name == provider and p.get_nodes()
                                       for p in rep.session.get_provider_graph_assignment_info()):
            return None, ""
        check = plausible_random if case.name.startswith(RANDOM_TESTS) else close
        for inputs, outputs in case.data_sets:
            with np.errstate(all="ignore"):
                got = rep.run(list(inputs))
            if len(got) != len(outputs):
                return False, f"{len(got)} outputs, expected {len(outputs)}"
            for k, (g, r) in enumerate(zip(got, outputs)):
                if not check(g, r):
                    return False, f"output {k} differs"
        return True, ""
    except Exception as e:  # noqa: BLE001 - any engine error is a failed test with its message
        return False, f"{type(e).__name__}: {str(e)[:300]}"


@pytest.mark.parametrize("provider,case", _params())
def test_node(provider, case):
    ok, why = _run_case(case, provider)
    listed = LISTS[provider]
    name = os.path.basename(EXPECTED[provider])
    if ok is None:
        assert case.name not in listed, f"{provider} no longer claims {case.name}: remove it from {name}"
        pytest.skip(f"{provider} claims no node of these tests (the CPU provider's run covers them)")
    if case.name in listed:
        assert not ok, f"{case.name} now passes on {provider}: remove it from {name}"
        pytest.xfail(listed[case.name])
    assert ok, why


def test_every_node_test_is_collected():
    assert len(CASES) >= 1884, f"only {len(CASES)} node tests collected from the onnx wheel"


@pytest.mark.parametrize("provider", list(EXPECTED), ids=_short)
def test_expected_differences_name_real_tests(provider):
    stale = sorted(set(LISTS[provider]) - {c.name for c in CASES})
    assert not stale, f"{os.path.basename(EXPECTED[provider])} lists tests that do not exist: {stale}"
