"""Helpers for the serving tests: small models built with onnx.helper, a model repository, a server process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh


def _save(graph, path: str) -> str:
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(m, path)
    return path


def mlp_model(path: str, features: int = 16, hidden: int = 32, layers: int = 1, seed: int = 0) -> str:
    """x [N, features] FP32 -> y [N, hidden]: (MatMul + Add + Relu) x layers."""
    rng = np.random.default_rng(seed)
    nodes, inits, cur, width = [], [], "x", features
    for k in range(layers):
        w = nh.from_array((rng.standard_normal((width, hidden)) / np.sqrt(width)).astype(np.float32), f"W{k}")
        b = nh.from_array(rng.standard_normal(hidden).astype(np.float32), f"B{k}")
        out = "y" if k == layers - 1 else f"h{k}"
        nodes += [h.make_node("MatMul", [cur, f"W{k}"], [f"m{k}"]), h.make_node("Add", [f"m{k}", f"B{k}"], [f"a{k}"]),
                  h.make_node("Relu", [f"a{k}"], [out])]
        inits += [w, b]
        cur, width = out, hidden
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", hidden])], inits)
    return _save(g, path)


def two_input_model(path: str, offset: float) -> str:
    """a FP32 [N, 4], b INT64 [N, 4] -> sum = a * float(b) + offset (FP32 [N, 4]), count = sum(b, 1) (INT64 [N])."""
    g = h.make_graph(
        [h.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), h.make_node("Mul", ["a", "bf"], ["m"]),
         h.make_node("Add", ["m", "off"], ["sum"]),
         h.make_node("ReduceSum", ["b", "axes"], ["count"], keepdims=0)],
        "two_in",
        [h.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         h.make_tensor_value_info("b", TensorProto.INT64, ["N", 4])],
        [h.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 4]),
         h.make_tensor_value_info("count", TensorProto.INT64, ["N"])],
        [nh.from_array(np.array([offset], np.float32), "off"), nh.from_array(np.array([1], np.int64), "axes")])
    return _save(g, path)


def write_config(repo: str, name: str, config: dict) -> None:
    with open(os.path.join(repo, name, "config.json"), "w") as f:
        json.dump(config, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m engineroom serve`` in a subprocess on free ports; waits until /v2/health/ready answers.

    The wait is long because the server inherits ENGINEROOM_JIT=wait (tests/conftest.py): on a machine whose
    compiled-loop cache is cold, its first sessions build it in the foreground."""

    def __init__(self, repo: str, extra_args=(), timeout: float = 600.0, log_path: str | None = None):
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_path or os.path.join(repo, f"server-{self.http_port}.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engineroom", "serve", "--model-repository", repo, "--host", "127.0.0.1",
             "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port), *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
