#!/usr/bin/env python3
"""The CUDA provider on a GPU machine: node tests, the zoo against PyTorch, latency beside peers.

NOT RUN YET: written in a session without a GPU (issue 9). The first session on the device machine
runs it, fixes what breaks, and quotes its output in the issue.

usage:
  python bench/cuda_zoo.py nodetests NT_DIR [--only SUBSTR] [--json OUT] [--timeout S]
  python bench/cuda_zoo.py zoo [--models a,b] [--graphs]
  python bench/cuda_zoo.py latency [--runs N] [--no-torch]
  python bench/cuda_zoo.py all NT_DIR

* ``nodetests``: the ONNX backend node tests (``../shared/tools/gen_node_tests.py NT_DIR`` writes
  them) with providers [CUDA, CPU]; a test counts as claimed when CUDA took one of its nodes; a
  claimed test that fails is re-run on the CPU provider alone, so "fails only with CUDA" means the
  CUDA provider is at fault (the plugin kit's method; without NT_DIR the tests are built in memory).
* ``zoo``: the five zoo models on [CUDA, CPU] against PyTorch's outputs in ``NAME.io.npz`` (max abs
  error <= 1e-3 x max |ref|), with the node split per provider and the number of copies.
* ``latency``: resnet18 (batch 1, 32) and bert_mini (batch 1, 16, seq 128) on the GPU: engineroom
  CUDA with and without CUDA graphs, through ``run`` (host arrays in and out) and through IOBinding
  (inputs and outputs on the GPU); engineroom's CPU provider; onnxruntime (its CUDA provider when
  onnxruntime-gpu is installed, else its CPU provider: the line says which); PyTorch eager on the GPU
  for the same architectures (torchvision's resnet18 and a transformers BertModel of bert_mini's
  shape — 4 layers, hidden 256, 4 heads, intermediate 1024 — with random weights: timing only).

On the device machine engineroom's pure-Python dependencies may have to be carried as wheels (see
the device README); CuPy, torch, transformers, onnx and onnx_ir are in its image.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.abspath(os.path.join(HERE, "..", "..", "shared"))
MODELS = ["resnet18", "mobilenet_v2", "bert_mini", "gpt2_tiny", "vae_decoder"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
sys.path.insert(0, HERE)


# -- node tests ---------------------------------------------------------------------------------------
class Timeout(Exception):
    pass


def nodetests(data: str | None, only: str | None, out: str | None, limit: int) -> None:
    """The plugin kit's node-test run with CUDA first (claimed / passed / wrong per op)."""
    from engineroom.plugin_sdk.testing import run_node_tests

    report = run_node_tests("CUDAExecutionProvider", only=only, data_dir=data, timeout=limit, isolate=True)
    print(report.format())
    if out:
        with open(out, "w") as f:
            json.dump(report.to_dict(), f, indent=1)


# -- the zoo against PyTorch's outputs ------------------------------------------------------------------
def zoo(models: list[str], graphs: bool) -> None:
    import engineroom as ort

    opts = {"enable_cuda_graph": "1"} if graphs else {}
    for m in models:
        path = os.path.join(SHARED, "models", m + ".onnx")
        if not os.path.exists(path):
            print(f"{m}: not found at {path}")
            continue
        z = np.load(path[:-5] + ".io.npz")
        s = ort.InferenceSession(path, providers=[(CUDA, opts), CPU])
        feed = {a.name: z[f"in_{k}"] for k, a in enumerate(s.get_inputs())}
        runs = 3 if graphs else 1                                  # with graphs: warm-up, capture, replay
        for _ in range(runs):
            outs = s.run(None, feed)
        errs = []
        for k, out in enumerate(outs):
            if f"out_{k}" not in z:
                continue
            ref = z[f"out_{k}"]
            err = float(np.max(np.abs(out.astype(np.float64) - ref))) if out.shape == ref.shape else float("inf")
            errs.append(err / max(float(np.max(np.abs(ref))), 1e-30))
        split = Counter(p.ep_name for p in s.get_provider_graph_assignment_info() for _ in p.get_nodes())
        verdict = "OK" if errs and max(errs) <= 1e-3 else "MISMATCH"
        print(f"{m}: {verdict} max rel err {max(errs) if errs else float('nan'):.2e}; nodes "
              + ", ".join(f"{k} {v}" for k, v in split.items()) + f"; copies {s._plan.n_copies}")
        print(f"  {s.placement}")


# -- latency ---------------------------------------------------------------------------------------------
def _median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def _feeds(model: str, batch: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(0)
    if model == "resnet18":
        return {"input": r.standard_normal((batch, 3, 224, 224)).astype(np.float32)}
    return {"input_ids": r.integers(0, 8192, (batch, 128)).astype(np.int64),
            "attention_mask": np.ones((batch, 128), np.int64)}


def _engineroom_lines(path: str, feed: dict, runs: int) -> list[tuple[str, float]]:
    import cupy

    import engineroom as ort

    lines = []
    for graphs in (False, True):
        s = ort.InferenceSession(path, providers=[(CUDA, {"enable_cuda_graph": "1" if graphs else "0"}), CPU])
        tag = "engineroom CUDA" + (" + graphs" if graphs else "")
        lines.append((f"{tag}, run()", _median_ms(lambda s=s: s.run(None, feed), runs)))
        io = s.io_binding()
        dev_in = {k: cupy.asarray(v) for k, v in feed.items()}
        for k, v in dev_in.items():
            io.bind_input(k, "cuda", 0, v.dtype, v.shape, v.data.ptr)
        for o in s.get_outputs():
            io.bind_output(o.name, "cuda", 0)

        def bound(s=s, io=io):
            s.run_with_iobinding(io)

        lines.append((f"{tag}, IOBinding on the GPU", _median_ms(bound, runs)))
    s = ort.InferenceSession(path, providers=[CPU])
    lines.append(("engineroom CPU", _median_ms(lambda: s.run(None, feed), max(3, runs // 4))))
    return lines


def _onnxruntime_line(path: str, feed: dict, runs: int) -> tuple[str, float] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    prov = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() else CPU
    s = ort.InferenceSession(path, providers=[prov])
    return (f"onnxruntime {prov}", _median_ms(lambda: s.run(None, feed), runs if prov != CPU else max(3, runs // 4)))


def _torch_line(model: str, feed: dict, runs: int) -> tuple[str, float] | None:
    try:
        import torch
    except ImportError:
        return None
    dev = torch.device("cuda")
    if model == "resnet18":
        import torchvision

        net = torchvision.models.resnet18().eval().to(dev)
        args = (torch.from_numpy(feed["input"]).to(dev),)
    else:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=1024, max_position_embeddings=512)
        net = BertModel(cfg).eval().to(dev)
        args = (torch.from_numpy(feed["input_ids"]).to(dev), torch.from_numpy(feed["attention_mask"]).to(dev))

    def fwd():
        with torch.inference_mode():
            net(*args)
        torch.cuda.synchronize()

    return ("PyTorch eager on the GPU (same architecture, random weights)", _median_ms(fwd, runs))


def latency(runs: int, with_torch: bool) -> None:
    for model, batches in (("resnet18", (1, 32)), ("bert_mini", (1, 16))):
        path = os.path.join(SHARED, "models", model + ".onnx")
        for batch in batches:
            feed = _feeds(model, batch)
            lines = _engineroom_lines(path, feed, runs)
            for extra in (_onnxruntime_line(path, feed, runs), _torch_line(model, feed, runs) if with_torch else None):
                if extra is not None:
                    lines.append(extra)
            base = lines[0][1]
            print(f"{model} batch {batch}:")
            for name, ms in lines:
                print(f"  {name:58s} {ms:9.3f} ms   x{ms / base:.2f} of CUDA run()")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["nodetests", "zoo", "latency", "all"])
    ap.add_argument("nt_dir", nargs="?")
    ap.add_argument("--only")
    ap.add_argument("--json")
    ap.add_argument("--timeout", type=int, default=60)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--graphs", action="store_true")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    logging.getLogger("engineroom").setLevel(logging.ERROR)
    from engineroom.providers.cuda import CUDAExecutionProvider

    if not CUDAExecutionProvider.is_available():
        print(f"CUDAExecutionProvider is not available: {CUDAExecutionProvider.unavailable_reason()}", file=sys.stderr)
        return 1
    if a.what in ("nodetests", "all"):
        nodetests(a.nt_dir, a.only, a.json, a.timeout)
    if a.what in ("zoo", "all"):
        zoo(a.models.split(","), a.graphs)
        if a.what == "all":
            zoo(a.models.split(","), True)
    if a.what in ("latency", "all"):
        latency(a.runs, not a.no_torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
