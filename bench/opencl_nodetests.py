#!/usr/bin/env python3
"""The ONNX backend node tests with OpenCL first: the OpenCL provider's own claimed / passed count.

usage: python bench/opencl_nodetests.py NT_DIR [--only SUBSTR] [--json OUT] [--timeout S] [--verbose]

NT_DIR is what ``../shared/tools/gen_node_tests.py NT_DIR`` writes. For every test a session is made
with providers [OpenCLExecutionProvider, CPUExecutionProvider]; a test counts as *claimed* when
OpenCL took at least one of its nodes. Claimed tests are run and compared with the expected outputs
as ``../shared/tools/conformance.py`` compares them (rtol 1e-3, atol 1e-7); a claimed test that
fails is re-run on the CPU provider alone, so a failure is reported as *wrong because of OpenCL*
only when the CPU provider passes it.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import signal
import sys
import time
from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper


def load_pb(path, info):
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
    p = onnx.TensorProto()
    p.ParseFromString(raw)
    return numpy_helper.to_array(p)


def close(a, b, rtol=1e-3, atol=1e-7):
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(close(x, y, rtol, atol) for x, y in zip(a, b))
    if b is None:
        return a is None
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return False
    if b.dtype == object or b.dtype.kind in "US":
        return a.tolist() == b.tolist()
    if b.dtype.kind in "biu" or b.dtype == bool:
        return np.array_equal(a, b)
    try:
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
        return True
    except AssertionError:
        return False


class Timeout(Exception):
    pass


def run_test(ort, d, providers):
    m = onnx.load(os.path.join(d, "model.onnx"))
    ins = list(m.graph.input)
    outs = list(m.graph.output)
    s = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=providers)
    ok = True
    for ds in sorted(glob.glob(os.path.join(d, "test_data_set_*"))):
        nin = len(glob.glob(os.path.join(ds, "input_*.pb")))
        feed = {ins[j].name: load_pb(os.path.join(ds, f"input_{j}.pb"), ins[j]) for j in range(nin)}
        nout = len(glob.glob(os.path.join(ds, "output_*.pb")))
        ref = [load_pb(os.path.join(ds, f"output_{j}.pb"), outs[j]) for j in range(nout)]
        got = s.run(None, feed)
        if len(got) != len(ref) or not all(close(g, r) for g, r in zip(got, ref)):
            ok = False
            break
    return s, ok


def main():
    data = sys.argv[1]
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    out = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    verbose = "--verbose" in sys.argv
    limit = int(sys.argv[sys.argv.index("--timeout") + 1]) if "--timeout" in sys.argv else 30
    logging.getLogger("engineroom").setLevel(logging.ERROR)
    import engineroom as ort

    ocl = ["OpenCLExecutionProvider", "CPUExecutionProvider"]
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(Timeout()))
    results: dict[str, str] = {}
    ops: Counter = Counter()
    t0 = time.time()
    for d in sorted(glob.glob(os.path.join(data, "test_*"))):
        name = os.path.basename(d)
        if only and only not in name:
            continue
        if verbose:
            print(name, flush=True)
        try:
            signal.alarm(limit)
            try:
                s = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=ocl)
            except Exception as e:  # noqa: BLE001 - a model the engine refuses is not OpenCL's to count
                results[name] = "unclaimed (session: " + type(e).__name__ + ")"
                continue
            mine = [n.op_type for p in s.get_provider_graph_assignment_info()
                    if p.ep_name == "OpenCLExecutionProvider" for n in p.get_nodes()]
            if not mine:
                results[name] = "unclaimed"
                continue
            ops.update(set(mine))
            try:
                _, ok = run_test(ort, d, ocl)
                res = "pass" if ok else "fail"
            except Exception as e:  # noqa: BLE001 - reported per test
                res = "error: " + (type(e).__name__ + ": " + str(e))[:200]
            if res != "pass":
                try:
                    _, cpu_ok = run_test(ort, d, ["CPUExecutionProvider"])
                except Exception:  # noqa: BLE001
                    cpu_ok = False
                res += " (cpu passes)" if cpu_ok else " (cpu fails too)"
            results[name] = res + " [" + ",".join(sorted(set(mine))) + "]"
        except Timeout:
            results[name] = "error: timeout"
        finally:
            signal.alarm(0)
    claimed = {k: v for k, v in results.items() if not v.startswith("unclaimed")}
    passed = sum(v.startswith("pass") for v in claimed.values())
    ocl_wrong = sorted(k for k, v in claimed.items() if "(cpu passes)" in v)
    both = sorted(k for k, v in claimed.items() if "(cpu fails too)" in v)
    print(f"OpenCL claimed a node in {len(claimed)} of {len(results)} tests; {passed} passed "
          f"({100.0 * passed / max(len(claimed), 1):.1f}%); {len(ocl_wrong)} fail only with OpenCL, "
          f"{len(both)} fail on the CPU provider too; {time.time() - t0:.0f}s")
    print(f"  {len(ops)} op types claimed: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    for k in ocl_wrong:
        print("  OpenCL-only failure:", k, claimed[k][:240])
    for k in both:
        print("  also fails on CPU:  ", k, claimed[k][:160])
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
