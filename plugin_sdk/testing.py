"""engineroom.plugin_sdk.testing — the conformance kit for execution providers.

The kit a provider author runs before publishing (and engineroom runs on its own providers). It does
two things:

* **contract checks** on the provider class: registered through the ``engineroom.providers`` entry
  point and loadable; ``name`` ends with "ExecutionProvider" and matches the entry point; built for a
  compatible plugin SDK; ``is_available()`` returns a bool and never raises; unknown provider options
  are rejected with :class:`~engineroom.plugin_sdk.ProviderOptionError` (a ``ValueError``);
  ``to_device``/``to_host``/``copy`` round-trip every dtype (float32/64/16, bfloat16, float8, signed
  and unsigned ints, bool) bit for bit, for plain, scalar, empty and non-contiguous arrays.
* **ONNX backend node tests**, built in memory from ``onnx.backend.test.case.node.collect_testcases()``
  (or read from a folder written by ``gen_node_tests.py``), each run in a session whose providers are
  ``[your provider, CPUExecutionProvider]``: nodes your provider does not claim fall back to the CPU
  provider, with real copy nodes between the two devices. Per ONNX op the kit counts the tests your
  provider *claimed* (it took at least one node, per ``session.get_provider_graph_assignment_info()``),
  and of those how many *passed*, were *wrong* (ran, but an output differs beyond rtol 1e-3 / atol
  1e-7, the comparison of engineroom's conformance tool) or raised an *error*. A claimed test that
  fails is rerun on the CPU provider alone; if that fails too it is counted as *cpu-fails* (the
  failure is not yours to fix). Unclaimed tests are not run.

From the command line::

    python -m engineroom.plugin_sdk.testing MyExecutionProvider
    python -m engineroom.plugin_sdk.testing MyExecutionProvider --only matmul --option device_id=1
    python -m engineroom.plugin_sdk.testing MyExecutionProvider --json report.json   # "-" for stdout
    python -m engineroom.plugin_sdk.testing MyExecutionProvider --isolate   # a segfault is one test's error
    python -m engineroom.plugin_sdk.testing MyExecutionProvider --expected-failures known.txt

It prints the report and exits 0 when the provider passes (1 otherwise). From pytest::

    from engineroom.plugin_sdk.testing import run_kit

    def test_my_provider_conforms():
        report = run_kit("MyExecutionProvider", only="matmul")
        assert report.ok, report.format()
        assert report.node_tests.ops["MatMul"].claimed > 0

Known failures can be listed with their reasons (``expected_failures={"test_x": "why"}``); a listed
test that passes makes the report fail, so the list only shrinks.

The kit drives real sessions through the engine's public API, which the core registers with
``plugin_sdk.engine`` when ``engineroom`` is imported, and finds providers with ``plugin_sdk.discovery``
as sessions do: like the rest of the SDK, it imports nothing from the core.
"""
from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

CPU_EP = "CPUExecutionProvider"
RTOL, ATOL = 1e-3, 1e-7
# Tests whose outputs are random draws: checked for shape, dtype and range instead of values.
RANDOM_TESTS = ("test_bernoulli",)
_STATUSES = ("passed", "wrong", "error", "cpu-fails", "unclaimed", "xfail", "xpass")


# -- comparison -------------------------------------------------------------------------------------------
def close(got: Any, ref: Any, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """engineroom's conformance comparison: exact for ints, bools and strings, allclose for floats
    (NaN equal to NaN), element-wise for sequences, identity for None."""
    if isinstance(ref, list):
        return isinstance(got, list) and len(got) == len(ref) and all(close(g, r, rtol, atol) for g, r in zip(got, ref))
    if ref is None:
        return got is None
    if isinstance(ref, dict):
        return False
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
    except (AssertionError, TypeError, ValueError):
        return False


def plausible_random(got: Any, ref: Any) -> bool:
    """For tests whose outputs are random draws: same shape and dtype, values within [0, 1]."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return False
    return bool(np.all((got >= 0) & (got <= 1))) if ref.dtype.kind in "fbiu" else True


def _difference(got: Any, ref: Any) -> str:
    """A short description of how ``got`` differs from ``ref``."""
    if isinstance(ref, list) or isinstance(got, list):
        return f"sequence of {len(got) if isinstance(got, list) else type(got).__name__}, expected {len(ref)}"
    if ref is None or got is None:
        return f"got {type(got).__name__}, expected {type(ref).__name__}"
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return f"shape {got.shape}, expected {ref.shape}"
    if got.dtype != ref.dtype and ref.dtype.kind not in "OUS":
        dt = f" (dtype {got.dtype}, expected {ref.dtype})"
    else:
        dt = ""
    if ref.dtype.kind in "fc" or (ref.dtype.kind == "V" or str(ref.dtype).startswith(("bfloat", "float8"))):
        try:
            g, r = got.astype(np.float64), ref.astype(np.float64)
            err = np.abs(g - r)
            err[np.isnan(g) & np.isnan(r)] = 0
            err[np.isnan(err)] = np.inf
            i = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
            return f"max abs diff {float(err[i]) if err.size else 0:.3g} at {tuple(int(k) for k in i)}: " \
                   f"got {float(g[i])!r}, expected {float(r[i])!r}{dt}"
        except (TypeError, ValueError):
            pass
    bad = int(np.sum(got != ref)) if got.shape == ref.shape else -1
    return f"{bad} of {ref.size} elements differ{dt}"


# -- the node tests -----------------------------------------------------------------------------------------
@dataclass
class NodeTest:
    """One ONNX backend node test: a model and its (inputs, expected outputs) data sets."""

    name: str
    model: Any                                    # onnx.ModelProto
    data_sets: list[tuple[list, list]]
    op: str = ""                                  # the ONNX op the test is about (see principal_op)


@functools.lru_cache(maxsize=1)
def _schema_names() -> dict[str, str]:
    import onnx.defs

    names = {s.name.lower(): s.name for s in onnx.defs.get_all_schemas_with_history()}
    # the short names some node tests use for their op
    names.update(sce="SoftmaxCrossEntropyLoss", nllloss="NegativeLogLikelihoodLoss", mvn="MeanVarianceNormalization")
    return names


def principal_op(test_name: str, model: Any) -> str:
    """The op a node test is about: the graph's only op type, else the op its name starts with
    (``test_reduce_sum_keepdims`` → ReduceSum, ``test_softmax_axis_0_expanded`` → Softmax)."""
    ops = [n.op_type for n in model.graph.node]
    tokens = test_name.removeprefix("test_").split("_")
    names = _schema_names()
    expanded = any(t.startswith("expanded") for t in tokens)
    for k in range(len(tokens), 0, -1):
        op = names.get("".join(tokens[:k]))
        if op is not None and (op in ops or expanded):
            return op
    return next((o for o in ops if o != "Constant"), ops[0] if ops else "?")


@functools.lru_cache(maxsize=4)
def _collected(data_dir: str | None) -> tuple[NodeTest, ...]:
    if data_dir:
        return tuple(_read_dir(data_dir))
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases()
    return tuple(sorted((NodeTest(c.name, c.model, [(_arrays(i), _arrays(o)) for i, o in c.data_sets],
                                  principal_op(c.name, c.model)) for c in cases), key=lambda t: t.name))


def _arrays(values: Iterable) -> list:
    """Test data as arrays: some cases hold TensorProto values (exotic element types)."""
    from onnx import TensorProto, numpy_helper

    return [numpy_helper.to_array(v) if isinstance(v, TensorProto) else v for v in values]


def _load_pb(path: str, info: Any) -> Any:
    import onnx
    from onnx import numpy_helper

    raw = open(path, "rb").read()
    t = info.type
    if t.HasField("sequence_type"):
        p = onnx.SequenceProto()
        p.ParseFromString(raw)
        return numpy_helper.to_list(p)
    if t.HasField("optional_type"):
        p = onnx.OptionalProto()
        p.ParseFromString(raw)
        return numpy_helper.to_optional(p)
    if t.HasField("map_type"):
        p = onnx.MapProto()
        p.ParseFromString(raw)
        return numpy_helper.to_dict(p)
    p = onnx.TensorProto()
    p.ParseFromString(raw)
    return numpy_helper.to_array(p)


def _read_dir(data_dir: str) -> list[NodeTest]:
    """Node tests from a folder of ``test_*/model.onnx`` + ``test_data_set_*/{input,output}_*.pb``."""
    import onnx

    out = []
    for d in sorted(glob.glob(os.path.join(data_dir, "test_*"))):
        mp = os.path.join(d, "model.onnx")
        if not os.path.isfile(mp):
            continue
        name = os.path.basename(d)
        m = onnx.load(mp)
        ins, outs = list(m.graph.input), list(m.graph.output)
        sets = []
        for ds in sorted(glob.glob(os.path.join(d, "test_data_set_*"))):
            nin = len(glob.glob(os.path.join(ds, "input_*.pb")))
            nout = len(glob.glob(os.path.join(ds, "output_*.pb")))
            sets.append(([_load_pb(os.path.join(ds, f"input_{j}.pb"), ins[j]) for j in range(nin)],
                         [_load_pb(os.path.join(ds, f"output_{j}.pb"), outs[j]) for j in range(nout)]))
        out.append(NodeTest(name, m, sets, principal_op(name, m)))
    return out


def node_tests(only: str | Iterable[str] | None = None, data_dir: str | None = None) -> list[NodeTest]:
    """The node tests whose name contains ``only`` (a substring, or any of several)."""
    tests = _collected(os.path.abspath(data_dir) if data_dir else None)
    if only is None:
        return list(tests)
    subs = [only] if isinstance(only, str) else list(only)
    return [t for t in tests if any(s in t.name for s in subs)]


# -- results ------------------------------------------------------------------------------------------------
@dataclass
class TestResult:
    """The outcome of one node test: ``status`` is one of passed, wrong, error (claimed tests),
    cpu-fails (claimed and failing, but the CPU provider alone fails it too), unclaimed, xfail
    (an expected failure) or xpass (an expected failure that passed)."""

    __test__ = False   # not a pytest test class

    name: str
    op: str
    status: str
    nodes: int = 0               # nodes the provider took
    total_nodes: int = 0
    detail: str = ""
    seconds: float = 0.0

    @property
    def claimed(self) -> bool:
        return self.status != "unclaimed"


@dataclass
class OpCounts:
    """Per-op counts: tests, and of the claimed ones how many passed, were wrong or raised."""

    tests: int = 0
    claimed: int = 0
    passed: int = 0
    wrong: int = 0
    errors: int = 0
    cpu_fails: int = 0
    xfail: int = 0
    xpass: int = 0

    def add(self, r: TestResult) -> None:
        self.tests += 1
        if not r.claimed:
            return
        self.claimed += 1
        attr = {"passed": "passed", "wrong": "wrong", "error": "errors", "cpu-fails": "cpu_fails",
                "xfail": "xfail", "xpass": "xpass"}[r.status]
        setattr(self, attr, getattr(self, attr) + 1)


@dataclass
class NodeTestReport:
    """The node-test part of a kit run."""

    provider: str
    results: list[TestResult]
    seconds: float = 0.0
    only: Any = None

    @property
    def ops(self) -> dict[str, OpCounts]:
        out: dict[str, OpCounts] = {}
        for r in self.results:
            out.setdefault(r.op, OpCounts()).add(r)
        return dict(sorted(out.items()))

    @property
    def totals(self) -> OpCounts:
        t = OpCounts()
        for r in self.results:
            t.add(r)
        return t

    def by_status(self, status: str) -> list[TestResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failures(self) -> list[TestResult]:
        """Claimed tests that are the provider's to fix: wrong, error, or an expected failure that passes."""
        return [r for r in self.results if r.status in ("wrong", "error", "xpass")]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        t = self.totals
        nops = sum(1 for c in self.ops.values() if c.claimed)
        s = (f"{self.provider} claimed {t.claimed}/{t.tests} node tests over {nops} ops: "
             f"{t.passed} passed, {t.wrong} wrong, {t.errors} errors")
        if t.cpu_fails:
            s += f", {t.cpu_fails} failing on the CPU provider alone too"
        if t.xfail or t.xpass:
            s += f", {t.xfail} expected failures, {t.xpass} expected failures that now pass"
        return s + f" ({self.seconds:.1f}s)"

    def format(self, max_failures: int = 40) -> str:
        lines = []
        ops = self.ops
        claimed = {op: c for op, c in ops.items() if c.claimed}
        w = max([len(op) for op in claimed] + [2])
        t = self.totals
        xf = bool(t.xfail or t.xpass)
        lines.append(f"  {'op':<{w}} {'tests':>6} {'claimed':>8} {'passed':>7} {'wrong':>6} {'errors':>7} "
                     f"{'cpu-fails':>10}" + (f" {'xfail':>6} {'xpass':>6}" if xf else ""))
        for op, c in claimed.items():
            lines.append(f"  {op:<{w}} {c.tests:>6} {c.claimed:>8} {c.passed:>7} {c.wrong:>6} {c.errors:>7} "
                         f"{c.cpu_fails:>10}" + (f" {c.xfail:>6} {c.xpass:>6}" if xf else ""))
        unclaimed = [op for op, c in ops.items() if not c.claimed]
        if unclaimed:
            lines.append(f"  ({len(unclaimed)} ops not claimed: {', '.join(unclaimed[:12])}"
                         f"{', ...' if len(unclaimed) > 12 else ''})")
        bad = self.failures + self.by_status("cpu-fails") + self.by_status("xfail")
        if bad:
            lines.append("failures:")
            for r in bad[:max_failures]:
                lines.append(f"  {r.name} [{r.op}] {r.status}: {r.detail}")
            if len(bad) > max_failures:
                lines.append(f"  ... {len(bad) - max_failures} more (see --json)")
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "seconds": round(self.seconds, 2),
                "totals": self.totals.__dict__,
                "ops": {op: c.__dict__ for op, c in self.ops.items()},
                "tests": {r.name: {"op": r.op, "status": r.status, "nodes": r.nodes, "total_nodes": r.total_nodes,
                                   "detail": r.detail} for r in self.results}}


@dataclass
class ContractCheck:
    """One contract check: ``ok`` is True, False, or None when it could not run here (and why)."""

    name: str
    ok: bool | None
    detail: str = ""


@dataclass
class KitReport:
    """What :func:`run_kit` returns: the contract checks and the node-test report."""

    provider: str
    contract: list[ContractCheck] = field(default_factory=list)
    node_tests: NodeTestReport | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.contract) and (self.node_tests is None or self.node_tests.ok)

    def check(self, name: str) -> ContractCheck:
        return next(c for c in self.contract if c.name == name)

    def format(self) -> str:
        lines = [f"engineroom provider conformance kit: {self.provider}", "contract:"]
        for c in self.contract:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[c.ok]
            lines.append(f"  {mark} {c.name:<18} {c.detail}")
        if self.node_tests is not None:
            only = f" (only {self.node_tests.only!r})" if self.node_tests.only else ""
            how = "alone" if self.provider == CPU_EP else f"first and {CPU_EP} behind it"
            lines.append(f"node tests, {self.provider} {how}{only}:")
            lines.append(self.node_tests.format())
        lines.append(f"RESULT: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict:
        return {"provider": self.provider, "ok": self.ok,
                "contract": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.contract],
                "node_tests": None if self.node_tests is None else self.node_tests.to_dict()}


# -- running ------------------------------------------------------------------------------------------------
class _Timeout(Exception):
    pass


class _alarm:
    """SIGALRM-based per-test time limit (where signals work: the main thread on POSIX)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.on = bool(seconds) and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.on:
            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, float(self.seconds))
        return self

    def _fire(self, *_):
        raise _Timeout(f"timed out after {self.seconds:g}s")

    def __exit__(self, *exc):
        if self.on:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


def _provider_name(provider: Any) -> str:
    if isinstance(provider, str):
        return provider
    name = getattr(provider, "name", None)
    if isinstance(name, str):
        return name
    raise TypeError(f"provider must be a registered provider name or class, got {provider!r}")


def _session(model: Any, providers: list, level: int | None):
    from engineroom.plugin_sdk.engine import engine

    api = engine()
    so = api.SessionOptions()
    so.log_severity_level = 3
    if level is not None:
        so.graph_optimization_level = api.GraphOptimizationLevel(level) if level in (0, 1, 2, 3, 99) else level
    return api.InferenceSession(model, so, providers=providers)


def _run_sets(sess, test: NodeTest) -> tuple[str, str]:
    """("passed" | "wrong", detail) over every data set of ``test``."""
    names = [i.name for i in test.model.graph.input]
    check = plausible_random if test.name.startswith(RANDOM_TESTS) else close
    for k, (inputs, outputs) in enumerate(test.data_sets):
        got = sess.run(None, dict(zip(names, inputs)))
        if len(got) != len(outputs):
            return "wrong", f"data set {k}: {len(got)} outputs, expected {len(outputs)}"
        for j, (g, r) in enumerate(zip(got, outputs)):
            if not check(g, r):
                return "wrong", f"data set {k}, output {j}: {_difference(g, r)}"
    return "passed", ""


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip()[:400]}"


def _cpu_alone_passes(test: NodeTest, model: Any, level: int | None, timeout: float | None) -> bool:
    try:
        with _alarm(timeout):
            return _run_sets(_session(model, [CPU_EP], level), test)[0] == "passed"
    except BaseException as e:  # noqa: BLE001 - any failure of the baseline is a failing baseline
        if isinstance(e, KeyboardInterrupt):
            raise
        return False


def run_test(test: NodeTest, provider: str, options: Mapping[str, Any] | None = None, *,
             timeout: float | None = 20.0, optimization_level: int | None = None) -> TestResult:
    """Run one node test with ``provider`` first and the CPU provider behind it."""
    t0 = time.perf_counter()
    model = test.model.SerializeToString()
    entry = (provider, dict(options or {}))
    providers = [entry] if provider == CPU_EP else [entry, CPU_EP]
    total = len(test.model.graph.node)
    nodes = 0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            with _alarm(timeout):
                sess = _session(model, providers, optimization_level)
                parts = sess.get_provider_graph_assignment_info()
                nodes = sum(len(p.get_nodes()) for p in parts if p.ep_name == provider)
                total = sum(len(p.get_nodes()) for p in parts) or total
                if nodes == 0 and provider != CPU_EP:
                    return TestResult(test.name, test.op, "unclaimed", 0, total, "", time.perf_counter() - t0)
                status, detail = _run_sets(sess, test)
        except BaseException as e:  # noqa: BLE001 - any engine error is a failed test with its message
            if isinstance(e, KeyboardInterrupt):
                raise
            status, detail = "error", _error_text(e)
        if status != "passed" and provider != CPU_EP and not _cpu_alone_passes(test, model, optimization_level,
                                                                                timeout):
            status, detail = "cpu-fails", f"{status} ({detail}); the CPU provider alone fails it too"
    return TestResult(test.name, test.op, status, nodes, total, detail, time.perf_counter() - t0)


def run_node_tests(provider: Any, options: Mapping[str, Any] | None = None, *,
                   only: str | Iterable[str] | None = None, data_dir: str | None = None,
                   expected_failures: Mapping[str, str] | Iterable[str] | None = None,
                   timeout: float | None = 20.0, optimization_level: int | None = None,
                   isolate: bool = False, progress: Callable[[int, int], None] | None = None) -> NodeTestReport:
    """Run the ONNX backend node tests with ``provider`` first and the CPU provider behind it.

    ``only`` keeps the tests whose name contains the substring (or any of several);
    ``data_dir`` reads tests written by ``gen_node_tests.py`` instead of building them in memory;
    ``expected_failures`` names tests known to fail (a mapping to the reason, or just names);
    ``isolate`` runs the tests in a worker process, so that a crash in native code (a segfault in a
    driver) is counted as that test's error and the run goes on in a new worker.
    """
    name = _provider_name(provider)
    _require_registered(name)
    expected = dict(expected_failures) if isinstance(expected_failures, Mapping) else \
        {n: "" for n in (expected_failures or ())}
    tests = node_tests(only, data_dir)
    t0 = time.perf_counter()
    if isolate:
        results = _run_isolated(tests, name, options, timeout, optimization_level, data_dir, progress)
    else:
        results = []
        for i, t in enumerate(tests):
            results.append(run_test(t, name, options, timeout=timeout, optimization_level=optimization_level))
            if progress is not None:
                progress(i + 1, len(tests))
    for r in results:
        if r.name in expected and r.claimed and r.status != "cpu-fails":
            if r.status == "passed":
                r.status, r.detail = "xpass", "listed as an expected failure, but passes: remove it from the list"
            else:
                r.status, r.detail = "xfail", f"{expected[r.name] or 'expected failure'}: {r.detail}"
    return NodeTestReport(name, results, time.perf_counter() - t0, only)


_PROTOCOL = "@@engineroom-kit "


def _run_isolated(tests: list[NodeTest], name: str, options, timeout, level, data_dir, progress) -> list[TestResult]:
    """Run ``tests`` in worker processes; a test during which the worker dies is an error, and a new
    worker goes on from the next test."""
    import subprocess
    import tempfile

    names = [t.name for t in tests]
    ops = {t.name: t.op for t in tests}
    results: dict[str, TestResult] = {}
    pos = 0
    while pos < len(names):
        cfg = {"provider": name, "options": {k: str(v) for k, v in dict(options or {}).items()},
               "timeout": timeout, "level": level, "data_dir": data_dir and os.path.abspath(data_dir),
               "tests": names[pos:]}
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path, err_path = os.path.join(tmp, "cfg.json"), os.path.join(tmp, "stderr.txt")
            with open(cfg_path, "w", encoding="utf-8") as f:
                json.dump(cfg, f)
            ready = False
            with open(err_path, "w+", encoding="utf-8") as err:
                env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))   # the same plugins
                proc = subprocess.Popen([sys.executable, "-m", "engineroom.plugin_sdk.testing", "--worker", cfg_path],
                                        stdout=subprocess.PIPE, stderr=err, text=True, env=env)
                for line in proc.stdout:
                    at = line.find(_PROTOCOL)
                    if at < 0:
                        continue
                    msg = json.loads(line[at + len(_PROTOCOL):])
                    if msg.get("ready"):
                        ready = True
                    elif "result" in msg:
                        r = TestResult(**msg["result"])
                        results[r.name] = r
                        pos += 1
                        if progress is not None:
                            progress(pos, len(names))
                rc = proc.wait()
                err.seek(0)
                tail = err.read()[-2000:]
        if pos < len(names):
            if not ready:
                raise RuntimeError(f"the kit's worker process failed to start (exit {rc}):\n{tail}")
            crashed = names[pos]
            how = f"signal {-rc} ({signal.Signals(-rc).name})" if rc < 0 else f"exit status {rc}"
            last = tail.strip().splitlines()[-1:] if tail.strip() else []
            results[crashed] = TestResult(crashed, ops[crashed], "error", 0, 0,
                                          f"the process died with {how} during this test"
                                          + (f"; last stderr line: {last[0][:200]}" if last else ""))
            pos += 1
            if progress is not None:
                progress(pos, len(names))
    return [results[n] for n in names]


def _worker(cfg_path: str) -> int:
    """The worker side of ``isolate``: runs the named tests, one protocol line per result."""
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)                     # anything else written to stdout goes to stderr
    sys.stdout = sys.stderr
    tests = {t.name: t for t in node_tests(cfg["tests"], cfg["data_dir"])}
    proto.write(_PROTOCOL + json.dumps({"ready": True}) + "\n")
    proto.flush()
    for n in cfg["tests"]:
        r = run_test(tests[n], cfg["provider"], cfg["options"], timeout=cfg["timeout"],
                     optimization_level=cfg["level"])
        proto.write(_PROTOCOL + json.dumps({"result": r.__dict__}) + "\n")
        proto.flush()
    return 0


def read_expected_failures(path: str) -> dict[str, str]:
    """Expected failures from a file of ``test_name  # reason`` lines (a reason is required)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, reason = line.partition("#")
            if not reason.strip():
                raise ValueError(f"{path}:{k}: expected failure {name.strip()!r} has no reason ('# why')")
            out[name.strip()] = reason.strip()
    return out


def _require_registered(name: str) -> None:
    from engineroom.plugin_sdk import discovery

    if discovery.provider_class(name) is None:
        why = discovery.load_failure(name) or (
            f"no provider of that name is registered in the '{_group()}' entry-point group; registered: "
            f"{', '.join(discovery.provider_names())} (install your package, e.g. `pip install -e .`)")
        raise LookupError(f"{name} cannot be tested: {why}")
    if not discovery.is_available(name):
        why = discovery.load_failure(name) or "is_available() returned False on this machine"
        raise LookupError(f"{name} cannot be tested here: {why}")


def _group() -> str:
    from engineroom.plugin_sdk import ENTRY_POINT_GROUP

    return ENTRY_POINT_GROUP


# -- contract checks ----------------------------------------------------------------------------------------
def _round_trip_arrays() -> dict[str, list[np.ndarray]]:
    import ml_dtypes

    rng = np.random.default_rng(0)
    floats = {"float32": np.float32, "float64": np.float64, "float16": np.float16,
              "bfloat16": ml_dtypes.bfloat16, "float8e4m3fn": ml_dtypes.float8_e4m3fn,
              "float8e5m2": ml_dtypes.float8_e5m2}
    ints = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
            "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64}
    out: dict[str, list[np.ndarray]] = {}
    for nm, dt in floats.items():
        a = (rng.standard_normal((2, 3, 4)) * 4).astype(dt)
        special = np.array([np.nan, np.inf, -np.inf, -0.0], np.float64) if nm != "float8e4m3fn" else \
            np.array([np.nan, -0.0, 448.0, -448.0])
        a.reshape(-1)[:4] = special.astype(dt)
        out[nm] = [a]
    for nm, dt in ints.items():
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, size=(2, 3, 4), dtype=dt, endpoint=True)
        a.reshape(-1)[:2] = [info.min, info.max]
        out[nm] = [a]
    out["bool"] = [rng.random((2, 3, 4)) > 0.5]
    for arrs in out.values():
        a = arrs[0]
        arrs.extend([a.reshape(-1)[:1].reshape(()).copy(), a[:0].copy(), a[1].T])   # scalar, empty, non-contiguous
    return out


def _same(a: np.ndarray, b: Any) -> str | None:
    if not isinstance(b, np.ndarray):
        return f"to_host returned {type(b).__name__}, not a numpy.ndarray"
    if b.dtype != a.dtype:
        return f"dtype {b.dtype}, expected {a.dtype}"
    if b.shape != a.shape:
        return f"shape {b.shape}, expected {a.shape}"
    if np.ascontiguousarray(b).tobytes() != np.ascontiguousarray(a).tobytes():
        return "values differ"
    return None


def _check_round_trips(prov, cpu) -> ContractCheck:
    failed: dict[str, str] = {}
    n = 0
    for dt, arrays in _round_trip_arrays().items():
        for a in arrays:
            what = f"{dt}{list(a.shape)}{'' if a.flags.c_contiguous else ' (non-contiguous)'}"
            try:
                n += 1
                dev = prov.to_device(a)
                why = _same(a, prov.to_host(dev))
                if why is None:
                    why = _same(a, prov.to_host(prov.copy(dev, prov)))
                    why = why and f"copy to itself: {why}"
                if why is None and cpu is not None:
                    why = _same(a, np.asarray(prov.copy(dev, cpu)))
                    why = why and f"copy to {CPU_EP}: {why}"
                    if why is None:
                        why = _same(a, prov.to_host(cpu.copy(a, prov)))
                        why = why and f"copy from {CPU_EP}: {why}"
                prov.synchronize()
            except Exception as e:  # noqa: BLE001 - a raising transfer is a failed check
                why = _error_text(e)
            if why:
                failed.setdefault(dt, f"{what}: {why}")
    if failed:
        return ContractCheck("copies", False, f"{len(failed)} dtypes do not round-trip: " +
                             "; ".join(failed.values()))
    return ContractCheck("copies", True, f"to_device/to_host/copy round-trip {len(_round_trip_arrays())} dtypes "
                         f"bit for bit ({n} arrays: plain, scalar, empty, non-contiguous)")


def check_contract(provider: Any, options: Mapping[str, Any] | None = None) -> list[ContractCheck]:
    """The contract checks of ``provider`` (a registered name or its class)."""
    from engineroom.plugin_sdk import SDK_VERSION, ExecutionProvider, GraphView, discovery, sdk_compatible

    name = _provider_name(provider)
    checks: list[ContractCheck] = []
    cls = discovery.provider_class(name)
    if cls is None:
        why = discovery.load_failure(name) or (f"no provider of that name in the '{_group()}' entry-point group "
                                                f"(registered: {', '.join(discovery.provider_names())})")
        checks.append(ContractCheck("registered", False, why))
        if isinstance(provider, type) and issubclass(provider, ExecutionProvider):
            cls = provider    # check what can be checked on the class itself
        else:
            return checks
    else:
        checks.append(ContractCheck("registered", True, _entry_point_text(name)))
    if not isinstance(provider, str) and provider is not cls:
        checks.append(ContractCheck("registered", False, f"the entry point '{name}' names {cls!r}, not {provider!r}"))

    ok_name = cls.name == name and cls.name.endswith("ExecutionProvider")
    checks.append(ContractCheck("name", ok_name, f"{cls.name!r}" + (
        "" if ok_name else f": must end with 'ExecutionProvider' and match the entry point name {name!r}")))
    ver = getattr(cls, "sdk_version", None)
    checks.append(ContractCheck("sdk_version", sdk_compatible(ver),
                                f"built for SDK {ver!r}; this SDK is {SDK_VERSION!r}"))
    kind = getattr(cls, "device_kind", None)
    checks.append(ContractCheck("device_kind", kind in ("CPU", "GPU", "NPU"),
                                f"{kind!r} (OrtHardwareDeviceType: CPU, GPU or NPU)"))

    available = None
    times = []
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            available = cls.is_available()
            times.append(time.perf_counter() - t0)
            if not isinstance(available, bool):
                raise TypeError(f"returned {available!r}, not a bool")
        checks.append(ContractCheck("is_available", True, f"returned {available} without raising "
                                    f"(slowest of 3 calls {max(times) * 1e3:.1f} ms)"))
    except Exception as e:  # noqa: BLE001 - the contract says it never raises
        checks.append(ContractCheck("is_available", False, f"must never raise: {_error_text(e)}"))
        available = False
    if not available:
        why = "not available on this machine" if available is False else "is_available() failed"
        for nm in ("devices", "unknown_option", "starts", "get_capability", "copies"):
            checks.append(ContractCheck(nm, None, why))
        return checks

    try:
        devs = list(cls.available_devices())
        from engineroom.plugin_sdk import Device

        bad = [d for d in devs if not isinstance(d, Device)]
        checks.append(ContractCheck("devices", bool(devs) and not bad,
                                    f"available_devices() = {[str(d) for d in devs]}" +
                                    (f"; not Device: {bad!r}" if bad else "") + ("" if devs else ": empty")))
    except Exception as e:  # noqa: BLE001
        checks.append(ContractCheck("devices", False, f"available_devices() raised {_error_text(e)}"))

    bogus = "engineroom_kit_no_such_option"
    try:
        cls(**{bogus: "1"})
        checks.append(ContractCheck("unknown_option", False, f"{name}({bogus}='1') was accepted: unknown options "
                                    "must raise ProviderOptionError (a ValueError)"))
    except ValueError as e:
        named = bogus in str(e)
        checks.append(ContractCheck("unknown_option", named, f"rejected with {type(e).__name__}" + (
            "" if named else f", but the message does not name the option: {str(e)[:200]!r}")))
    except Exception as e:  # noqa: BLE001
        checks.append(ContractCheck("unknown_option", False, f"raised {_error_text(e)}; expected ProviderOptionError "
                                    "(a ValueError)"))

    try:
        prov = cls(**dict(options or {}))
        args = ", ".join(f"{k}={v!r}" for k, v in (options or {}).items())
        checks.append(ContractCheck("starts", True, f"{name}({args}) on {prov.device}; "
                                    f"options {prov.provider_options}"))
    except Exception as e:  # noqa: BLE001
        checks.append(ContractCheck("starts", False, f"{name}(**{dict(options or {})!r}) raised {_error_text(e)}"))
        checks.append(ContractCheck("get_capability", None, "the provider did not start"))
        checks.append(ContractCheck("copies", None, "the provider did not start"))
        return checks

    try:
        caps = prov.get_capability(GraphView(nodes=[], opsets={"": 21}))
        checks.append(ContractCheck("get_capability", isinstance(caps, list) and not caps,
                                    f"on an empty graph returned {caps!r}"))
    except Exception as e:  # noqa: BLE001
        checks.append(ContractCheck("get_capability", False, f"on an empty graph raised {_error_text(e)}"))

    cpu = None
    if name != CPU_EP and discovery.provider_class(CPU_EP) is not None:
        cpu = discovery.provider_class(CPU_EP)()
    checks.append(_check_round_trips(prov, cpu))
    return checks


def _entry_point_text(name: str) -> str:
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group=_group()):
            if ep.name == name:
                dist = getattr(ep, "dist", None)
                where = f" (from {dist.name} {dist.version})" if dist is not None else ""
                return f"'{_group()}' entry point {name} = {ep.value}{where}"
    except Exception:  # noqa: BLE001 - only for the report's text
        pass
    return f"found in the '{_group()}' entry-point group"


def run_kit(provider: Any, options: Mapping[str, Any] | None = None, *, node_tests: bool = True,
            only: str | Iterable[str] | None = None, data_dir: str | None = None,
            expected_failures: Mapping[str, str] | Iterable[str] | None = None, timeout: float | None = 20.0,
            optimization_level: int | None = None, isolate: bool = False,
            progress: Callable[[int, int], None] | None = None) -> KitReport:
    """Contract checks, then (if the provider can start here) the node tests; returns a :class:`KitReport`."""
    name = _provider_name(provider)
    report = KitReport(name, check_contract(provider, options))
    started = any(c.name == "starts" and c.ok for c in report.contract)
    if node_tests and started:
        report.node_tests = run_node_tests(name, options, only=only, data_dir=data_dir,
                                           expected_failures=expected_failures, timeout=timeout,
                                           optimization_level=optimization_level, isolate=isolate,
                                           progress=progress)
    return report


# -- command line -------------------------------------------------------------------------------------------
def _parse_option(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    return k, v


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"] and len(argv) == 2:
        return _worker(argv[1])
    ap = argparse.ArgumentParser(prog="python -m engineroom.plugin_sdk.testing",
                                 description="Conformance kit for engineroom execution providers: contract checks "
                                             "and the ONNX backend node tests with the provider first and CPU "
                                             "behind it.")
    ap.add_argument("provider", help="provider name as registered in the engineroom.providers entry point")
    ap.add_argument("--only", action="append", metavar="SUBSTR",
                    help="run only node tests whose name contains SUBSTR (repeatable)")
    ap.add_argument("--json", metavar="PATH", help="also write the full report as JSON to PATH ('-' for stdout)")
    ap.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                    help="provider option (repeatable)")
    ap.add_argument("--data-dir", help="read node tests from this folder (gen_node_tests.py layout) instead of "
                                       "building them from the onnx package")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per node test (default 20)")
    ap.add_argument("--optimization-level", type=int, default=None,
                    help="graph_optimization_level of the sessions (default: onnxruntime's, ORT_ENABLE_ALL)")
    ap.add_argument("--expected-failures", metavar="FILE",
                    help="node tests known to fail, one 'test_name  # reason' a line")
    ap.add_argument("--isolate", action="store_true",
                    help="run the node tests in a worker process: a crash (segfault) is that test's error")
    ap.add_argument("--contract-only", action="store_true", help="skip the node tests")
    ap.add_argument("--max-failures", type=int, default=40, help="failing tests listed in the report")
    args = ap.parse_args(argv)

    def progress(i, n):
        if sys.stderr.isatty() and (i % 50 == 0 or i == n):
            print(f"\r  {i}/{n} node tests", end="" if i < n else "\n", file=sys.stderr, flush=True)

    only = args.only[0] if args.only and len(args.only) == 1 else args.only
    try:
        expected = read_expected_failures(args.expected_failures) if args.expected_failures else None
        report = run_kit(args.provider, dict(args.option), node_tests=not args.contract_only, only=only,
                         data_dir=args.data_dir, expected_failures=expected, timeout=args.timeout,
                         optimization_level=args.optimization_level, isolate=args.isolate, progress=progress)
    except (LookupError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = report.format()
    if report.node_tests is not None and args.max_failures != 40:
        text = text.replace(report.node_tests.format(), report.node_tests.format(args.max_failures))
    if args.json == "-":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(text)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report.to_dict(), f, indent=1)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
