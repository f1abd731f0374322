#!/usr/bin/env python3
"""OpenVINO's precision modes through engineroom: latency and max error against PyTorch, per zoo model.

usage: python bench/openvino_precision.py [--precision BF16] [--models a,b] [--runs N] [--rounds R]
                                          [--engines ort,openvino,project]

Engines, each in its own process (two engines' thread pools in one process fight for the cores), in
alternating rounds so machine drift hits all alike, as ../shared/tools/bench.py does:
  ort       onnxruntime's CPU provider in f32 (the baseline every ratio is printed against)
  openvino  OpenVINO directly: compile_model(path, "CPU", LATENCY, INFERENCE_PRECISION_HINT=<precision>)
  project   engineroom with providers [("OpenVINOExecutionProvider", {"precision": <precision>}), CPU]
The error is the max abs difference over every output against NAME.io.npz's out_k (PyTorch in f32),
and that divided by the largest |reference| (relative).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from blas_env import clean_env

HERE = os.path.dirname(os.path.abspath(__file__))
ZOO = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "models"))
MODELS = ["resnet18", "mobilenet_v2", "bert_mini", "gpt2_tiny", "vae_decoder"]
OV_PRECISION = {"FP32": "f32", "FP16": "f16", "BF16": "bf16"}


def _feed_and_refs(path: str, input_names: list[str]):
    z = np.load(path[:-5] + ".io.npz")
    feed = {n: z[f"in_{i}"] for i, n in enumerate(input_names)}
    refs = [z[k] for k in sorted((k for k in z.files if k.startswith("out_")), key=lambda k: int(k[4:]))]
    return feed, refs


def _make(engine: str, path: str, precision: str):
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {x.name for x in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    if engine == "ort":
        import onnxruntime

        s = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return names, lambda f: s.run(None, f)
    if engine == "openvino":
        import openvino as ov

        cfg = {"PERFORMANCE_HINT": "LATENCY"}
        if precision == "ACCURACY":
            cfg["EXECUTION_MODE_HINT"] = "ACCURACY"
        else:
            cfg["INFERENCE_PRECISION_HINT"] = OV_PRECISION[precision]
        c = ov.Core().compile_model(path, "CPU", cfg)
        r = c.create_infer_request()
        return names, lambda f: r.infer([f[n] for n in names]).to_tuple()
    if engine == "project":
        import engineroom

        s = engineroom.InferenceSession(path, providers=[("OpenVINOExecutionProvider", {"precision": precision}),
                                                         "CPUExecutionProvider"])
        return names, lambda f: s.run(None, f)
    raise SystemExit(f"unknown engine {engine}")


def worker(path: str, engine: str, precision: str, runs: int) -> None:
    t0 = time.perf_counter()
    names, fn = _make(engine, path, precision)
    feed, refs = _feed_and_refs(path, names)
    outs = fn(feed)
    first = time.perf_counter() - t0
    err = max(float(np.max(np.abs(np.asarray(o, np.float64) - r))) for o, r in zip(outs, refs))
    scale = max(float(np.max(np.abs(r))) for r in refs)
    fn(feed)
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(feed)
        ts.append(time.perf_counter() - t)
    print(json.dumps({"times": ts, "first": first, "err": err, "rel": err / scale if scale else err}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="BF16", choices=["FP32", "FP16", "BF16", "ACCURACY"])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--engines", default="ort,openvino,project")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.model, args.worker, args.precision, args.runs)
        return 0
    # as bench.py: OpenBLAS pins set by this workplace for old builds are not what a user runs
    env = clean_env()
    engines = args.engines.split(",")
    per_round = max(1, args.runs // args.rounds)
    rows = []
    for m in args.models.split(","):
        path = os.path.join(ZOO, m + ".onnx")
        if not os.path.exists(path):
            print(f"{m}: not found at {path}", file=sys.stderr)
            continue
        res = {e: {"times": [], "first": [], "err": None, "rel": None, "error": None} for e in engines}
        for _ in range(args.rounds):
            for e in engines:
                if res[e]["error"]:
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", e, "--model", path,
                       "--precision", args.precision, "--runs", str(per_round)]
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
                if p.returncode != 0 or not line.startswith("{"):
                    res[e]["error"] = ((p.stderr.strip().splitlines() or ["no output"])[-1])[:200]
                    continue
                r = json.loads(line)
                res[e]["times"] += r["times"]
                res[e]["first"].append(r["first"])
                res[e]["err"], res[e]["rel"] = r["err"], r["rel"]
        med = {}
        for e in engines:
            r = res[e]
            label = "f32" if e == "ort" else args.precision
            if r["error"]:
                print(f"{m} {e} ({label}): ERROR {r['error']}")
                continue
            med[e] = statistics.median(r["times"]) * 1e3
            print(f"{m} {e} ({label}): median {med[e]:.2f} ms over {len(r['times'])} runs; first-run "
                  f"{min(r['first']) * 1e3:.0f} ms; max abs err vs PyTorch {r['err']:.2e} (rel {r['rel']:.2e})",
                  flush=True)
        rows.append((m, med, {e: res[e]["rel"] for e in engines}))
    print(f"\nprecision {args.precision}: median ms (max rel err vs PyTorch); ratios to ort, and project : openvino")
    print(f"{'model':14s}" + "".join(f"{e:>22s}" for e in engines) + "   ratios")
    for m, med, rel in rows:
        cells = "".join(f"{med[e]:>9.2f} ms ({rel[e]:.1e})" if e in med else f"{'error':>22s}" for e in engines)
        ratios = []
        if "ort" in med:
            ratios += [f"{e}/ort x{med[e] / med['ort']:.2f}" for e in engines if e != "ort" and e in med]
        if "openvino" in med and "project" in med:
            ratios.append(f"project/openvino x{med['project'] / med['openvino']:.2f}")
        print(f"{m:14s}{cells}   {', '.join(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
