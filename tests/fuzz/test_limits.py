"""Resource limits: oversized tensors are refused before allocation (naming the node and the size),
a Loop with a huge trip count stops on RunOptions.terminate and on a run timeout, subgraph nesting is
bounded, huge string tensors are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import engineroom as ort

HERE = os.path.dirname(os.path.abspath(__file__))
BIG = 10**6  # every oversized model below asks for 10**12 elements


def _model(nodes, inits=(), inputs=(), out_type=TensorProto.FLOAT, opset=17):
    g = helper.make_graph(nodes, "g", list(inputs), [helper.make_tensor_value_info("y", out_type, None)], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _i64(name, v):
    return numpy_helper.from_array(np.array(v, np.int64), name)


def _f32(name, v):
    return numpy_helper.from_array(np.array(v, np.float32), name)


def oversized_models() -> dict:
    """One model per op that can be asked for 10**12 elements (4 TB of float32) by a small model."""
    one = _f32("x", np.ones((1, 1)))
    return {
        "ConstantOfShape": _model(
            [helper.make_node("ConstantOfShape", ["s"], ["y"], name="huge_constantofshape")], [_i64("s", [BIG, BIG])]
        ),
        "Expand": _model(
            [helper.make_node("Expand", ["x", "s"], ["y"], name="huge_expand")], [one, _i64("s", [BIG, BIG])]
        ),
        "Tile": _model([helper.make_node("Tile", ["x", "s"], ["y"], name="huge_tile")], [one, _i64("s", [BIG, BIG])]),
        "Range": _model(
            [helper.make_node("Range", ["a", "b", "c"], ["y"], name="huge_range")],
            [_i64("a", 0), _i64("b", BIG * BIG), _i64("c", 1)],
            out_type=TensorProto.INT64,
        ),
        "Resize": _model(
            [helper.make_node("Resize", ["x", "", "s"], ["y"], name="huge_resize")],
            [_f32("x", np.ones((1, 1, 1, 1))), _f32("s", [1, 1, BIG, BIG])],
        ),
        "Pad": _model(
            [helper.make_node("Pad", ["x", "p"], ["y"], name="huge_pad")], [one, _i64("p", [0, 0, BIG - 1, BIG - 1])]
        ),
        "OneHot": _model(
            [helper.make_node("OneHot", ["i", "d", "v"], ["y"], name="huge_onehot")],
            [_i64("i", np.zeros(BIG)), _i64("d", [BIG]), _f32("v", [0, 1])],
        ),
    }


def _refuse_all() -> None:
    """Child process: each oversized model's error, then this process's peak RSS (JSON on stdout)."""
    import resource

    errors = {}
    for op, m in oversized_models().items():
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        try:
            s.run(None, {})
            errors[op] = None
        except ort.RuntimeException as e:
            errors[op] = str(e)
    print(json.dumps({"errors": errors, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def test_oversized_tensors_refused_before_allocation():
    # each refused in a fresh process whose peak RSS shows nothing big was allocated
    r = subprocess.run(
        [sys.executable, __file__, "--refuse-all"], capture_output=True, text=True, timeout=300, cwd=HERE
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for op, err in got["errors"].items():
        print(f"{op}: {err}")
        assert err is not None, f"{op} ran"
        assert "TensorTooLarge" in err and "session.max_tensor_bytes" in err, err
        assert f"'huge_{op.lower()}'" in err, err  # names the node
        assert "1000000000000 elements" in err, err
    print(f"peak RSS of the refusing process: {got['peak_rss_kb'] / 1024:.0f} MiB")
    assert got["peak_rss_kb"] < 1024 * 1024, "the refusing process grew past 1 GiB"


def test_limit_is_a_session_option():
    m = _model(
        [helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos")],
        inputs=[helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
    )
    so = ort.SessionOptions()
    so.add_session_config_entry("session.max_tensor_bytes", "4096")
    s = ort.InferenceSession(m.SerializeToString(), so)
    assert s.run(None, {"s": np.array([32, 32], np.int64)})[0].shape == (32, 32)  # 4096 bytes: at the limit
    with pytest.raises(ort.RuntimeException, match=r"'cos'.*\(33, 32\).*4224 bytes.*4096 bytes"):
        s.run(None, {"s": np.array([33, 32], np.int64)})
    so.add_session_config_entry("session.max_tensor_bytes", "0")  # 0: no limit
    s0 = ort.InferenceSession(m.SerializeToString(), so)
    assert s0.run(None, {"s": np.array([33, 32], np.int64)})[0].shape == (33, 32)
    so.add_session_config_entry("session.max_tensor_bytes", "lots")
    with pytest.raises(ort.InvalidArgument, match="session.max_tensor_bytes"):
        ort.InferenceSession(m.SerializeToString(), so)


def test_huge_string_tensors_refused():
    words = numpy_helper.from_array(np.array([["a"]], dtype=object), "x")
    m = _model(
        [helper.make_node("Tile", ["x", "s"], ["y"], name="many_strings")],
        [words, _i64("s", [BIG, 10**4])],
        out_type=TensorProto.STRING,
    )
    s = ort.InferenceSession(m.SerializeToString())
    with pytest.raises(ort.RuntimeException, match="'many_strings'.*10000000000 elements of object"):
        s.run(None, {})


def _endless_loop(with_body_node: bool):
    """A Loop whose trip count is 2**62 and whose condition stays true (ORT would run it for ages too)."""
    body_in = [
        helper.make_tensor_value_info("i", TensorProto.INT64, []),
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        helper.make_tensor_value_info("v", TensorProto.FLOAT, [1]),
    ]
    nodes = [helper.make_node("Add", ["v", "one"], ["v2"])] if with_body_node else []
    body = helper.make_graph(
        nodes,
        "body",
        body_in,
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v2" if with_body_node else "v", TensorProto.FLOAT, [1]),
        ],
        [_f32("one", [1.0])] if with_body_node else [],
    )
    loop = helper.make_node("Loop", ["m", "cond", "v0"], ["y"], body=body, name="endless")
    return _model([loop], [_i64("m", 2**62), numpy_helper.from_array(np.array(True), "cond"), _f32("v0", [0.0])])


@pytest.mark.parametrize("with_body_node", [True, False], ids=["body", "empty_body"])
def test_huge_loop_stops_on_terminate(with_body_node):
    s = ort.InferenceSession(_endless_loop(with_body_node).SerializeToString())
    ro = ort.RunOptions()
    threading.Timer(0.5, lambda: setattr(ro, "terminate", True)).start()
    t0 = time.perf_counter()
    with pytest.raises(ort.Fail, match="terminate flag"):
        s.run(None, {}, ro)
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("with_body_node", [True, False], ids=["body", "empty_body"])
def test_huge_loop_stops_on_run_timeout(with_body_node):
    s = ort.InferenceSession(_endless_loop(with_body_node).SerializeToString())
    ro = ort.RunOptions()
    ro.add_run_config_entry("run.timeout_ms", "300")
    t0 = time.perf_counter()
    with pytest.raises(ort.Fail, match=r"time limit of 300 ms \(run config 'run.timeout_ms'\)"):
        s.run(None, {}, ro)
    assert time.perf_counter() - t0 < 30
    ro.add_run_config_entry("run.timeout_ms", "soon")
    with pytest.raises(ort.InvalidArgument, match="run.timeout_ms"):
        s.run(None, {}, ro)


def test_loop_scan_outputs_stop_at_the_tensor_limit():
    body = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["s"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [256]),
        ],
    )
    m = _model(
        [helper.make_node("Loop", ["m", ""], ["y"], body=body, name="grows")],
        [_i64("m", 2**62), _f32("x", np.ones(256))],
        opset=17,
    )
    so = ort.SessionOptions()
    so.add_session_config_entry("session.max_tensor_bytes", str(1 << 20))
    s = ort.InferenceSession(m.SerializeToString(), so)
    with pytest.raises(ort.RuntimeException, match="'grows'.*Loop's scan outputs hold .* over the limit of 1048576"):
        s.run(None, {})


def _nested_ifs(depth: int):
    leaf = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "leaf",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    g = leaf
    for k in range(depth - 1):
        # only the then branch nests: with both, the model would double in size at every level (2**200 nodes)
        node = helper.make_node("If", ["c"], ["y"], then_branch=g, else_branch=leaf, name=f"if{k}")
        g = helper.make_graph([node], f"level{k}", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    main = helper.make_graph(
        list(g.node),
        "main",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [_f32("x", [2.0]), numpy_helper.from_array(np.array(True), "c")],
    )
    return helper.make_model(main, opset_imports=[helper.make_opsetid("", 17)])


def test_subgraph_nesting_is_bounded():
    ok = ort.InferenceSession(_nested_ifs(8))
    assert ok.run(None, {})[0].tolist() == [2.0]
    with pytest.raises(ort.InvalidGraph, match="nested more than 32 levels"):
        ort.InferenceSession(_nested_ifs(33))  # a ModelProto: no protobuf parser to stop it


if __name__ == "__main__" and sys.argv[1:] == ["--refuse-all"]:
    _refuse_all()
