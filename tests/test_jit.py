"""The CPU provider's compiled loops (compiled.jit): built ahead of time out of process, loaded without numba,
argument types checked before the compiled code runs, and switched off by ENGINEROOM_JIT=0."""
from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest
from conftest import python_c

from engineroom.providers.cpu.compiled import jit as _jit

pytestmark = pytest.mark.skipif(not _jit.available(), reason="numba is not installed (jit extra)")


def test_wrong_argument_types_raise_not_crash():
    conv = _jit.load("conv")
    assert conv is not None, "the compiled conv loops failed to build (see the warning logged)"
    y = np.zeros((1, 4, 6), np.float32)
    conv.bias_clip(y, np.ones(4, np.float32), np.float32(0), np.float32(0.5))
    assert (y == 0.5).all()
    with pytest.raises(TypeError, match=r"compiled kernel bias_clip: no variant takes \(float32\[3-D\], float64"):
        conv.bias_clip(y, np.ones(4), np.float32(0), np.float32(1))
    with pytest.raises(TypeError, match="strided"):
        conv.bias_clip(np.zeros((1, 4, 12), np.float32)[:, :, ::2], np.ones(4, np.float32), 0.0, 1.0)
    with pytest.raises(TypeError, match="list"):
        conv.bias_clip([0.0], np.ones(4, np.float32), 0.0, 1.0)


_run = functools.partial(python_c, timeout=None)   # a child may compile loops first


def test_sessions_never_import_numba():
    """The compiled kernels are a plain extension module: numba and LLVM stay out of the process."""
    code = """
import sys, numpy as np, onnx
from onnx import helper, TensorProto
import engineroom as ort
w = np.random.default_rng(0).standard_normal((8, 1, 3, 3)).astype(np.float32)
g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], group=8, pads=[1, 1, 1, 1])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                      [onnx.numpy_helper.from_array(w, "w")])
s = ort.InferenceSession(helper.make_model(g).SerializeToString())
s.run(None, {"x": np.ones((1, 8, 16, 16), np.float32)})
from engineroom.providers.cpu.compiled import jit as _jit
print(_jit._modules["conv"] is not None, "numba" in sys.modules, "llvmlite" in sys.modules)
"""
    assert _run(code).split() == ["True", "False", "False"]


def test_switched_off_by_environment():
    code = "from engineroom.providers.cpu.compiled import jit as _jit; print(_jit.available(), _jit.load('conv'))"
    assert _run(code, ENGINEROOM_JIT="0").split() == ["False", "None"]


def test_unwritable_cache_falls_back_to_numpy(tmp_path):
    """A cache that cannot be written: a warning, the NumPy paths, and a session that still runs."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = """
import numpy as np
from engineroom.providers.cpu.compiled import jit as _jit
from engineroom.providers.cpu.conv import _ConvPlan
print(_jit.load("conv"))
p = _ConvPlan(np, {"group": 4, "pads": [1, 1, 1, 1]}, np.ones((4, 1, 3, 3), np.float32))
print(float(p(np.ones((1, 4, 5, 5), np.float32))[0, 0, 2, 2]))
"""
    assert _run(code, ENGINEROOM_CACHE_DIR=str(blocker / "cache")).split() == ["None", "9.0"]


def test_first_use_builds_in_the_background(tmp_path):
    """An empty cache: the first load answers None at once (NumPy paths) and says so, one detached child
    builds what is missing, and a load after it finished returns the compiled loops."""
    import shutil
    import time

    cache = tmp_path / "cache"
    (cache / "aot").mkdir(parents=True)
    # every module but one already built (copied from this machine's cache): the child builds only that one
    for name in _jit.module_names():
        if name != "conv_transpose" and _jit.load(name) is not None:
            _, _, target = _jit._paths(name)
            shutil.copy(target, cache / "aot" / target.name)
    code = """
import time
from engineroom.providers.cpu.compiled import jit as _jit
t0 = time.perf_counter()
first = _jit.load("conv_transpose")
print(first is None, time.perf_counter() - t0 < 5, (_jit.cache_dir() / ".build.lock").exists())
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**__import__("os").environ, "ENGINEROOM_JIT": "1", "ENGINEROOM_CACHE_DIR": str(cache)})
    assert proc.stdout.split() == ["True", "True", "True"]
    assert "compiling the CPU provider's loops in the background" in proc.stderr and "conv_transpose" in proc.stderr
    deadline = time.monotonic() + 600
    while (cache / "aot" / ".build.lock").exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert not (cache / "aot" / ".build.lock").exists(), (cache / "aot" / "build.log").read_text()
    code = "from engineroom.providers.cpu.compiled import jit as _jit; print(_jit.load('conv_transpose') is not None)"
    assert _run(code, ENGINEROOM_JIT="1", ENGINEROOM_CACHE_DIR=str(cache)).split() == ["True"]
    assert "built engineroom.providers.cpu.compiled._jit_conv_transpose" in (cache / "aot" / "build.log").read_text()


def test_no_c_compiler_one_notice_numpy_paths(tmp_path):
    """No compiler on PATH: one clear notice, None from load, and sessions still run."""
    code = """
import numpy as np
from engineroom.providers.cpu.compiled import jit as _jit
from engineroom.providers.cpu.conv import _ConvPlan
print(_jit.load("conv"), _jit.load("pool"))
p = _ConvPlan(np, {"group": 4, "pads": [1, 1, 1, 1]}, np.ones((4, 1, 3, 3), np.float32))
print(float(p(np.ones((1, 4, 5, 5), np.float32))[0, 0, 2, 2]))
"""
    import os

    env = {**os.environ, "ENGINEROOM_CACHE_DIR": str(tmp_path / "c"), "CC": "no-such-compiler",
           "PATH": str(tmp_path)}       # no cc or gcc either
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert proc.stdout.split() == ["None", "None", "9.0"]
    assert proc.stderr.count("no C compiler found") == 1
