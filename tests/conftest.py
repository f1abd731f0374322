"""Shared fixtures and helpers: the test providers registered as a plugin, the model zoo, and what the test
modules would otherwise each write again (model building, placement and copy counts read through the public
API, the profiler's node events, onnxruntime-vs-engineroom runs, a fresh interpreter)."""
from __future__ import annotations

import contextlib
import os
import sys

import pytest

# Tests must know which kernel path runs: compiled loops are built in the foreground here, not in the
# background as for a user's first command (providers/cpu/compiled/jit.py).
os.environ.setdefault("ENGINEROOM_JIT", "wait")

HERE = os.path.dirname(os.path.abspath(__file__))
ZOO = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "models"))
ZOO_MODELS = ["resnet18", "mobilenet_v2", "bert_mini", "gpt2_tiny", "vae_decoder"]
PLUGINS = os.path.join(HERE, "plugins")   # the test providers' modules

_ENTRY_POINTS = """[engineroom.providers]
AddMulExecutionProvider = fake_providers:AddMulExecutionProvider
NegExecutionProvider = fake_providers:NegExecutionProvider
BrokenExecutionProvider = fake_providers:BrokenExecutionProvider
OldSdkExecutionProvider = fake_providers:OldSdkExecutionProvider
ProbeExecutionProvider = fake_providers:ProbeExecutionProvider
LostDeviceExecutionProvider = fake_providers:LostDeviceExecutionProvider
MissingExecutionProvider = fake_providers_missing_module:Nothing
"""


@pytest.fixture(scope="session")
def test_plugins(tmp_path_factory):
    """Register tests/plugins/fake_providers.py through an entry point, as an installed wheel would."""
    with registered_plugins(tmp_path_factory, "engineroom-test-plugins", _ENTRY_POINTS):
        yield


@contextlib.contextmanager
def registered_plugins(tmp_path_factory, name: str, entry_points: str):
    """While inside: the providers of ``entry_points`` (modules in ``PLUGINS``) registered as an installed
    distribution ``name`` would register them, and found by discovery."""
    from engineroom import discovery

    site = plugin_site(tmp_path_factory, name, entry_points)
    sys.path[:0] = [PLUGINS, site]
    discovery.refresh()
    try:
        yield
    finally:
        sys.path.remove(site)
        sys.path.remove(PLUGINS)
        discovery.refresh()


def plugin_site(tmp_path_factory, name: str, entry_points: str) -> str:
    """A new folder holding distribution ``name`` as pip installs one, with ``entry_points`` as its
    entry_points.txt: on sys.path (or PYTHONPATH) with ``PLUGINS``, its providers are found as a wheel's are."""
    site = tmp_path_factory.mktemp("site")
    dist = site / f"{name.replace('-', '_')}-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(entry_points)
    return str(site)


def zoo_path(name: str) -> str:
    path = os.path.join(ZOO, name + ".onnx")
    if not os.path.exists(path):
        pytest.skip(f"model zoo not found at {ZOO} (../shared/models beside the checkout)")
    return path


def run_zoo(name: str, providers=None, **kw):
    """Run zoo model ``name`` on its io.npz inputs: (session, outputs, PyTorch's outputs)."""
    import numpy as np

    import engineroom as ort

    path = zoo_path(name)
    z = np.load(path[:-5] + ".io.npz")
    s = ort.InferenceSession(path, providers=providers, **kw)
    feed = {a.name: z[f"in_{k}"] for k, a in enumerate(s.get_inputs())}
    outs = s.run(None, feed)
    refs = [z[f"out_{k}"] for k in range(len(outs)) if f"out_{k}" in z]
    return s, outs, refs


def assert_matches_pytorch(name: str, outs, refs, rel: float) -> None:
    """Every output has PyTorch's shape and dtype, and max abs error <= rel * max |reference|."""
    import numpy as np

    assert refs, f"{name}.io.npz has no reference outputs"
    for k, (out, ref) in enumerate(zip(outs, refs)):
        assert out.shape == ref.shape and out.dtype == ref.dtype
        err = float(np.max(np.abs(out.astype(np.float64) - ref)))
        assert err <= rel * float(np.max(np.abs(ref))), f"{name} output {k}: max abs error {err:.3g}"


# -- helpers the test modules share (``from conftest import make_model, assignment, ...``) ------------------
def make_model(nodes, inputs, outputs, inits=(), opset=17, *, opsets=(), check=False, **kw):
    """A model of ``nodes`` with graph ``inputs``/``outputs`` (ValueInfoProtos); ``inits`` are TensorProtos or
    (name, array) pairs; the default domain at ``opset``, plus ``opsets`` ((domain, version) pairs or
    OperatorSetIdProtos); ``check`` runs the ONNX checker; ``kw`` goes to ``onnx.helper.make_model``."""
    import numpy as np
    from onnx import TensorProto, checker, helper, numpy_helper

    inits = [t if isinstance(t, TensorProto) else numpy_helper.from_array(np.asarray(t[1]), t[0]) for t in inits]
    ids = [helper.make_opsetid("", opset)] + [helper.make_opsetid(*o) if isinstance(o, tuple) else o for o in opsets]
    m = helper.make_model(helper.make_graph(list(nodes), "g", list(inputs), list(outputs), inits),
                          opset_imports=ids, **kw)
    if check:
        checker.check_model(m)
    return m


def tensor_info(name: str, array_or_type, shape=None):
    """A tensor ValueInfoProto: the dtype and shape of an array, or an ONNX element type and ``shape``."""
    from onnx import helper

    if hasattr(array_or_type, "dtype"):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array_or_type.dtype),
                                             array_or_type.shape)
    return helper.make_tensor_value_info(name, array_or_type, shape)


def assignment(session) -> list[tuple[str, list[str]]]:
    """(provider, node names) per partition, in plan order (``get_provider_graph_assignment_info``)."""
    return [(p.ep_name, [n.name for n in p.get_nodes()]) for p in session.get_provider_graph_assignment_info()]


def copies(session) -> int:
    """How many copies between devices the session's plan inserted, as its placement line says."""
    import re

    found = re.search(r"; (\d+) copies inserted", session.placement)
    assert found, f"no copy count in the placement line: {session.placement}"
    return int(found.group(1))


def optimized_ops(model, level, tmp_path) -> tuple:
    """(session, [(domain, op_type) per node]) of ``model`` optimized at ``level``, read back from the file
    ``SessionOptions.optimized_model_filepath`` saves under ``tmp_path``."""
    import onnx

    import engineroom as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.optimized_model_filepath = str(tmp_path / f"opt{int(level)}.onnx")
    s = ort.InferenceSession(model if isinstance(model, (bytes, str)) else model.SerializeToString(), so)
    return s, [(n.domain, n.op_type) for n in onnx.load(so.optimized_model_filepath).graph.node]


def profiled_node_events(session_factory, feed: dict, runs: int = 1) -> list[dict]:
    """The profiler's per-node events (``cat`` "Node") of ``runs`` runs of the session that
    ``session_factory(sess_options)`` creates with profiling on (``SessionOptions.enable_profiling``)."""
    import json
    import tempfile

    import engineroom as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        s = session_factory(so)
        for _ in range(runs):
            s.run(None, feed)
        with open(s.end_profiling(), encoding="utf-8") as f:
            return [e for e in json.load(f) if e.get("cat") == "Node"]


@contextlib.contextmanager
def steady_mode():
    """Inside it, the CPU provider behaves as in the steady mode (a run while another process keeps a core
    busy): BLAS held at one thread, large GEMMs and compiled loops split over its sleeping worker pool."""
    from engineroom.providers.cpu import _threadpool

    _threadpool.hold_blas()
    try:
        yield
    finally:
        _threadpool.release_blas()


@contextlib.contextmanager
def quick_mode():
    """Inside it (BLAS's own count at 2 or more), the CPU provider behaves as in a quiet run of the default
    mode that chose the quick mode: BLAS held at one thread, the pool's workers spinning between parts,
    GEMMs from 1M multiply-adds and the loops of ``compiled/_jit_par`` from 32K units of work split inside one
    compiled call, other loops over the Python workers from 512K units. Skips where the compiled
    waits are unavailable (no numba)."""
    import pytest

    from engineroom.providers.cpu import _threadpool

    threads = _threadpool._blas.outside()
    if threads < 2 or not _threadpool._pool(threads).quick:
        pytest.skip("the quick mode needs 2+ BLAS threads and the compiled waits (numba, the jit extra)")
    _threadpool._blas.hold_single()
    before = getattr(_threadpool._held, "quick", False)
    _threadpool._held.quick = True
    try:
        yield
    finally:
        _threadpool._held.quick = before
        _threadpool._blas.release()


def python_c(code: str, timeout: float = 300, **env) -> str:
    """What a fresh interpreter running ``code`` prints (``env`` added to its environment); a non-zero exit
    fails the test with the child's stderr."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    return r.stdout


def check_outputs(ref, got, tol):
    """``got`` against the oracle's ``ref``, output by output: same shape and dtype, floats within ``tol``
    (relative and absolute), everything else exactly; a sequence of maps (ZipMap) key by key, keys in order."""
    import numpy as np

    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        if isinstance(r, list):     # ZipMap: a sequence of maps
            assert len(r) == len(g) and all(list(a) == list(b) for a, b in zip(r, g))   # keys in order
            for a, b in zip(r, g):
                np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=tol, atol=tol)
            continue
        r, g = np.asarray(r), np.asarray(g)
        assert r.shape == g.shape and r.dtype == g.dtype, (r.shape, g.shape, r.dtype, g.dtype)
        if r.dtype.kind in "fc":
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol)
        else:
            np.testing.assert_array_equal(g, r)


def run_both(model: bytes, feed: dict, **er_kw) -> tuple[list, list]:
    """(onnxruntime's outputs, engineroom's outputs) on the CPU provider for model bytes ``model``;
    onnxruntime (the oracle) with one thread, ``er_kw`` to engineroom's InferenceSession."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the test oracle) is not installed")
    import engineroom as er

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ref = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feed)
    got = er.InferenceSession(model, providers=["CPUExecutionProvider"], **er_kw).run(None, feed)
    return ref, got
