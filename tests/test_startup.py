"""What a process pays to start (issue 16), checked by what it imports, never by timing (timings are
bench/startup.py's): `import engineroom` loads neither onnx nor onnx_ir (ml_dtypes and sympy come with
them), every public name still resolves, and a session on the CPU provider imports no other provider."""
from __future__ import annotations

import json

import pytest
from conftest import python_c

import engineroom


def _child(code: str) -> dict:
    return json.loads(python_c(code).strip().splitlines()[-1])


def test_import_loads_no_onnx_stack():
    got = _child("import json, sys, engineroom; print(json.dumps(sorted(m for m in sys.modules "
                 "if m.split('.')[0] in ('onnx', 'onnx_ir', 'ml_dtypes', 'sympy', 'stevedore', 'numpy'))))")
    assert got == [], got


def test_every_public_name_resolves():
    missing = [n for n in engineroom.__all__ if getattr(engineroom, n, None) is None]
    assert not missing
    assert set(engineroom.__all__) <= set(dir(engineroom))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        engineroom.NoSuchName  # noqa: B018 - the look-up is the test
    ns: dict = {}
    exec("from engineroom import *", ns)   # the compat layer's onnxruntime module does this
    assert ns["InferenceSession"] is engineroom.InferenceSession and ns["OrtValue"] is engineroom.OrtValue
    assert engineroom.SessionIOBinding is engineroom.IOBinding


def test_cpu_session_imports_only_the_cpu_provider(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    got = _child(
        "import json, sys, numpy as np, engineroom as er\n"
        f"s = er.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])\n"
        "y = s.run(None, {'x': np.array([-1.0, 2.0], np.float32)})[0].tolist()\n"
        "print(json.dumps({'y': y, 'others': sorted({m.split('.')[2] for m in sys.modules "
        "if m.startswith('engineroom.providers.') and m.split('.')[2] != 'cpu'})}))")
    assert got == {"y": [0.0, 2.0], "others": []}
    # and the providers list still names every registered provider
    assert "CPUExecutionProvider" in engineroom.get_all_providers()


def test_scipy_is_imported_only_by_a_session_that_needs_it(tmp_path):
    """SciPy (~0.1 s and ~18 MB to import) comes in with the first session whose kernels call it: a
    LinearClassifier with post_transform LOGISTIC (SciPy's expit, one ufunc call a run), not a session
    of the same classifier without it. The probabilities agree with onnxruntime's."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the test oracle) is not installed")
    import numpy as np
    from onnx import TensorProto, helper

    x = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 0.0], [30.0, -20.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
    for post in ("NONE", "LOGISTIC"):
        node = helper.make_node("LinearClassifier", ["x"], ["label", "prob"], domain="ai.onnx.ml",
                                coefficients=[0.5, -1.0, 2.0, 3.0, -0.25, 1.5], intercepts=[0.1, -0.2],
                                classlabels_ints=[0, 1], post_transform=post, multi_class=1)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                               helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, 2])])
        path = tmp_path / f"{post}.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("ai.onnx.ml", 1)], ir_version=8), str(path))
        got = _child(
            "import json, sys, numpy as np, engineroom as er\n"
            f"s = er.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])\n"
            "created = 'scipy' in sys.modules\n"
            f"label, prob = s.run(None, {{'x': np.array({x.tolist()!r}, np.float32)}})\n"
            "print(json.dumps({'scipy': created, 'label': label.tolist(), 'prob': prob.tolist()}))")
        assert got["scipy"] is (post == "LOGISTIC"), post
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        assert got["label"] == want[0].tolist()
        np.testing.assert_allclose(np.array(got["prob"], np.float32), want[1], rtol=1e-6, atol=1e-7)


def test_creation_runs_no_garbage_collection(tmp_path):
    """The cyclic collector is held off while a session is made (it ran hundreds of passes over the
    objects creation allocates), is on again afterwards, and stays off where the caller turned it off."""
    onnx = pytest.importorskip("onnx")
    import gc

    import numpy as np
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Add", [f"v{i}", "one"], [f"v{i + 1}"]) for i in range(300)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("v300", TensorProto.FLOAT, [2])],
                          [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
    path = str(tmp_path / "chain.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    so = engineroom.SessionOptions()
    so.graph_optimization_level = engineroom.GraphOptimizationLevel.ORT_DISABLE_ALL   # 300 nodes to plan
    engineroom.InferenceSession(path, so, providers=["CPUExecutionProvider"])   # modules imported
    passes = []
    gc.callbacks.append(lambda phase, info: passes.append(info["generation"]) if phase == "start" else None)
    try:
        s = engineroom.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        during = list(passes)
        assert gc.isenabled()
        gc.disable()
        try:
            engineroom.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        gc.callbacks.pop()
    assert len(during) <= 1, during   # the one pass over what creation left, once the collector is back
    y = s.run(None, {"v0": np.array([1.0, -2.0], np.float32)})[0]
    np.testing.assert_array_equal(y, np.array([301.0, 298.0], np.float32))


def test_compiled_loop_sources_read_as_the_syntax_tree_says():
    """The compiled-loop cache key and the AOT tables are read from the modules' text (a session's first
    use of a compiled module parsed and walked whole syntax trees, ~30 ms of a first session): what they
    find equals what Python's own parser finds, for every compiled-loop module."""
    import ast
    import importlib.util
    from pathlib import Path

    from engineroom.providers.cpu.compiled import jit

    def parsed_sources(source: Path) -> list[Path]:
        seen: dict[Path, None] = {}
        todo = [source]
        while todo:
            f = todo.pop()
            if f in seen:
                continue
            seen[f] = None
            for node in ast.walk(ast.parse(f.read_text())):
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for leaf in (n.rsplit(".", 1)[-1] for n in names):
                    if leaf.startswith("_jit_"):
                        todo += [d / f"{leaf}.py" for d, _ in jit._FOLDERS if (d / f"{leaf}.py").exists()]
        return sorted(seen)

    names = jit.module_names()
    assert len(names) >= 10
    for name in names:
        src = Path(importlib.util.find_spec(jit._module(name)).origin)
        assert jit._sources(src) == parsed_sources(src), name
        table = next(ast.literal_eval(n.value) for n in ast.parse(src.read_text()).body
                     if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "AOT" for t in n.targets))
        assert jit._read_aot(src) == table, name


def test_shuffled_legacy_forest_against_onnxruntime():
    """A legacy TreeEnsembleClassifier with its trees and votes written in shuffled order, sparse node ids
    and negative tree ids: the forest's links are found by sorting at creation (a Python look-up per node
    and vote cost ~5 ms of a 2,700-node forest's session), and the classes and scores are onnxruntime's."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the test oracle) is not installed")
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    trees = []
    for tree in range(6):
        nodes, votes, ids = [], [], iter(range(1, 1000, 3))

        def grow(depth, tree=tree, nodes=nodes, votes=votes, ids=ids):
            me = next(ids)
            row = [tree * 7 - 10, me, 0, 0, "LEAF", 0, 0.0]
            nodes.append(row)
            if depth < 4 and rng.random() < 0.8:
                row[4:] = ["BRANCH_LEQ", int(rng.integers(0, 4)), float(rng.standard_normal())]
                row[2] = grow(depth + 1)
                row[3] = grow(depth + 1)
            else:
                votes.extend([tree * 7 - 10, me, c, float(rng.random())] for c in range(3))
            return me

        grow(0)
        trees.append((nodes, votes))
    order = rng.permutation(len(trees))
    nodes = [r for i in order for r in trees[i][0]]
    votes = [trees[i][1][j] for i in order for j in range(len(trees[i][1]))]
    votes = [votes[i] for i in rng.permutation(len(votes))]
    col = list(zip(*nodes))
    vcol = list(zip(*votes))
    node = helper.make_node(
        "TreeEnsembleClassifier", ["x"], ["label", "prob"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2],
        nodes_treeids=col[0], nodes_nodeids=col[1], nodes_truenodeids=col[2], nodes_falsenodeids=col[3],
        nodes_modes=col[4], nodes_featureids=col[5], nodes_values=col[6], class_treeids=vcol[0],
        class_nodeids=vcol[1], class_ids=vcol[2], class_weights=vcol[3], post_transform="NONE")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                           helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, 3])])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                             ir_version=8).SerializeToString()
    x = rng.standard_normal((64, 4)).astype(np.float32)
    got = engineroom.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert len(col[0]) > 40
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)
