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
