"""Determinism on the CPU provider: outputs are bitwise identical across runs, threads, sessions and
processes (same machine, same thread settings)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from soak_support import run_threads, same, small_models

import engineroom as ort

HERE = os.path.dirname(os.path.abspath(__file__))


def _digest(outs) -> str:
    h = hashlib.sha256()
    for o in outs:
        o = np.ascontiguousarray(o)
        h.update(str((o.dtype, o.shape)).encode())
        h.update(o.tobytes())
    return h.hexdigest()


def _model_and_feed(name):
    if name.startswith("zoo:"):
        from conftest import zoo_path

        path = zoo_path(name[4:])
        z = np.load(path[:-5] + ".io.npz")
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return path, {a.name: z[f"in_{k}"] for k, a in enumerate(s.get_inputs())}
    model, feed = small_models()[name]
    return model, feed(np.random.default_rng(7))


def digest_of(name: str) -> str:
    model, feed = _model_and_feed(name)
    return _digest(ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feed))


@pytest.mark.parametrize("name", ["conv_relu_pool", "matmul_softmax_ln", "lstm", "zoo:mobilenet_v2", "zoo:bert_mini"])
def test_bitwise_identical_across_runs_threads_sessions_processes(name):
    model, feed = _model_and_feed(name)
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    first = s.run(None, feed)
    assert all(same(s.run(None, feed), first) for _ in range(3)), "runs differ"
    assert all(same(o, first) for o in run_threads(8, [feed] * 16, lambda f: s.run(None, f))), "threads differ"
    s2 = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert same(s2.run(None, feed), first), "sessions differ"
    r = subprocess.run(
        [sys.executable, "-c", f"import test_determinism as t; print(t.digest_of({name!r}))"],
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)])),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == _digest(first), "processes differ"
