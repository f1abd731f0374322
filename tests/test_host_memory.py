"""`enable_cpu_mem_arena` (core/host_memory.py): with onnxruntime's default (on) a run's large intermediates
stop faulting their pages in again on every run; off, nothing changes. Checked in fresh processes by the
process's own page-fault count (getrusage), with the outputs compared against onnxruntime's."""
from __future__ import annotations

import json
import sys

import pytest
from conftest import python_c

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")

CHILD = r"""
import json, resource, numpy as np, onnx, onnxruntime, engineroom
from onnx import TensorProto, helper
# Add -> Tanh -> Mul on (96, 128, 1024) float32: three 48 MiB intermediates a run, freed each run (past
# glibc's largest dynamic mmap threshold, 32 MiB: without the arena each is mapped afresh every run)
g = helper.make_graph(
    [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
     helper.make_node("Mul", ["t", "a"], ["y"])], "g",
    [helper.make_tensor_value_info("a", TensorProto.FLOAT, [96, 1, 1024]),
     helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 128, 1024])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [96, 128, 1024])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
rng = np.random.default_rng(0)
feed = {"a": rng.standard_normal((96, 1, 1024), np.float32), "b": rng.standard_normal((1, 128, 1024), np.float32)}
so = engineroom.SessionOptions()
so.enable_cpu_mem_arena = ARENA
s = engineroom.InferenceSession(m, so, providers=["CPUExecutionProvider"])
for _ in range(3):
    y = s.run(None, feed)[0]
del y
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    y = s.run(None, feed)[0]
    del y
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
want = onnxruntime.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feed)[0]
got = s.run(None, feed)[0]
print(json.dumps({"faults": faults, "err": float(np.abs(got - want).max())}))
"""


def _child(arena: bool) -> dict:
    return json.loads(python_c(CHILD.replace("ARENA", str(arena))).strip().splitlines()[-1])


def test_arena_on_keeps_freed_memory_for_the_next_run():
    on, off = _child(True), _child(False)
    assert on["err"] < 1e-5 and off["err"] < 1e-5
    # off: each run maps its intermediates afresh (thousands of faults); on: they are reused
    assert off["faults"] > 200, off            # (fewer than 4 KiB pages: the kernel may back them with huge pages)
    assert on["faults"] < off["faults"] / 20, (on, off)


def test_arena_off_is_accepted_and_on_stays_on_for_the_process():
    from engineroom import host_memory

    assert host_memory.keep_freed_memory(True) is True
    assert host_memory.keep_freed_memory(False) is True
