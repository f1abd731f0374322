#!/usr/bin/env python3
"""Latency of engineroom beside onnxruntime on every zoo model, through ../shared/tools/bench.py
(each engine in its own process, alternating rounds, OpenBLAS pins dropped, BLAS kernel printed).

usage: python bench/zoo.py [--providers P1,P2] [--engines ort,project] [--runs N] [--models a,b]
Prints bench.py's lines per model, then one summary table of the ratio of each engine to the first.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.abspath(os.path.join(HERE, "..", "..", "shared"))
MODELS = ["resnet18", "mobilenet_v2", "bert_mini", "gpt2_tiny", "vae_decoder"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--providers", default=None)
    ap.add_argument("--engines", default="ort,project")
    ap.add_argument("--runs", default="40")
    ap.add_argument("--rounds", default="4")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    tool = os.path.join(SHARED, "tools", "bench.py")
    if not os.path.exists(tool):
        print(f"bench.py not found at {tool}: the shared folder must sit beside the checkout", file=sys.stderr)
        return 1
    summary = []
    for m in args.models.split(","):
        cmd = [sys.executable, tool, os.path.join(SHARED, "models", m + ".onnx"), "--engines", args.engines,
               "--runs", args.runs, "--rounds", args.rounds]
        if args.providers:
            cmd += ["--providers", args.providers]
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        print(out.rstrip(), flush=True)
        med = dict(re.findall(r"\.onnx (\w+): median ([\d.]+) ms", out))
        summary.append((m, med))
    engines = args.engines.split(",")
    head = "".join(f"{e:>12s}" for e in engines)
    print(f"\nmodel          {head}   ratio {'/'.join(engines[1:])} : {engines[0]}")
    for m, med in summary:
        cells = "".join(f"{float(med[e]):>10.2f}ms" if e in med else f"{'error':>12s}" for e in engines)
        ratios = ", ".join(f"x{float(med[e]) / float(med[engines[0]]):.2f}" if e in med and engines[0] in med else "-"
                           for e in engines[1:])
        print(f"{m:14s} {cells}   {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
