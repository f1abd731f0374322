#!/usr/bin/env python3
"""engineroom beside onnxruntime: every zoo model plus a 1,000-node chain of tiny Adds.

usage: python bench/compare.py [--runs N] [--rounds R] [--threads T] [--models a,b] [--providers P1,P2]

Each engine runs in its own process (two engines' thread pools in one process fight for the cores),
in alternating rounds A B A B, on the same inputs (NAME.io.npz) and the same thread count
(intra_op_num_threads = T for both). The measured processes run without OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE (set on this machine for old OpenBLAS builds; they halve NumPy's BLAS speed), and
the BLAS kernel in use is printed. Per model: median latency of each engine, the ratio, peak RSS
of each and the session-creation time ratio; then the geometric mean of the latency ratios over the
zoo and the per-node cost on the Add chain.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from blas_env import blas_kernel, clean_env

HERE = os.path.dirname(os.path.abspath(__file__))
ZOO = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "models"))
MODELS = ["resnet18", "mobilenet_v2", "bert_mini", "gpt2_tiny", "vae_decoder"]
CHAIN = "add_chain_1000"
ENGINES = ("ort", "project")


def _feed(path: str):
    import numpy as np
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {x.name for x in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    npz = path[:-5] + ".io.npz"
    if os.path.exists(npz):
        z = np.load(npz)
        return {n: z[f"in_{i}"] for i, n in enumerate(names)}
    return {n: np.ones((1,), np.float32) for n in names}


def _session(engine: str, path: str, threads: int, providers: str | None):
    if engine == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    else:
        import engineroom as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        s = ort.InferenceSession(path, so, providers=providers.split(",") if providers else None)
    return lambda feed: s.run(None, feed)



def worker(engine: str, path: str, runs: int, threads: int, providers: str | None) -> None:
    feed = _feed(path)
    t0 = time.perf_counter()
    run = _session(engine, path, threads, providers)
    created = time.perf_counter() - t0
    run(feed)
    run(feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "create": created, "rss": rss, "blas": blas_kernel()}))


def add_chain(n: int = 1000) -> str:
    """A model of n tiny Adds in a chain (per-node overhead), written to a temporary file."""
    import numpy as np
    from onnx import helper, numpy_helper, save

    one = numpy_helper.from_array(np.ones((1,), np.float32), "one")
    nodes = [helper.make_node("Add", [f"v{i}", "one"], [f"v{i + 1}"]) for i in range(n)]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("v0", 1, [1])],
                          [helper.make_tensor_value_info(f"v{n}", 1, [1])], [one])
    path = os.path.join(tempfile.mkdtemp(prefix="engineroom-bench-"), f"{CHAIN}.onnx")
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def measure(path: str, args) -> dict:
    env = clean_env()
    res = {e: {"times": [], "create": [], "rss": [], "blas": ""} for e in ENGINES}
    per_round = max(1, args.runs // args.rounds)
    for _ in range(args.rounds):
        for e in ENGINES:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", e, path, "--runs", str(per_round),
                   "--threads", str(args.threads)]
            if args.providers:
                cmd += ["--providers", args.providers]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not lines:
                raise SystemExit(f"{e} failed on {path}: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
            r = json.loads(lines[-1])
            res[e]["times"] += r["times"]
            res[e]["create"].append(r["create"])
            res[e]["rss"].append(r["rss"])
            res[e]["blas"] = r["blas"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "MODEL"))
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--providers", default=None, help="engineroom providers (default: CPU)")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.runs, args.threads, args.providers)
        return 0
    rows = []
    paths = [(m, os.path.join(ZOO, m + ".onnx")) for m in args.models.split(",") if m]
    missing = [p for _, p in paths if not os.path.exists(p)]
    if missing:
        print(f"zoo models not found: {missing} (../shared/models beside the checkout)", file=sys.stderr)
        return 1
    paths.append((CHAIN, add_chain()))
    print(f"# {args.threads} threads for both engines; {args.runs} runs per engine in {args.rounds} alternating rounds")
    for name, path in paths:
        r = measure(path, args)
        med = {e: statistics.median(r[e]["times"]) * 1e3 for e in ENGINES}
        rows.append((name, med, r))
        if name == paths[0][0]:
            print(f"# BLAS in the engineroom process: {r['project']['blas']}")
        ratio = med["project"] / med["ort"]
        print(f"{name:14s} ort {med['ort']:8.3f} ms  engineroom {med['project']:8.3f} ms  ratio x{ratio:.2f}"
              f"  | peak RSS {max(r['ort']['rss']):.0f} / {max(r['project']['rss']):.0f} MB"
              f" (x{max(r['project']['rss']) / max(r['ort']['rss']):.2f})"
              f"  | session creation {min(r['ort']['create']) * 1e3:.0f} / {min(r['project']['create']) * 1e3:.0f} ms"
              f" (x{min(r['project']['create']) / min(r['ort']['create']):.1f})", flush=True)
    zoo = [med["project"] / med["ort"] for name, med, _ in rows if name != CHAIN]
    if zoo:
        geo = math.exp(sum(map(math.log, zoo)) / len(zoo))
        print(f"geometric mean of engineroom/onnxruntime over {len(zoo)} zoo models: x{geo:.2f} (max x{max(zoo):.2f})")
    chain = next((med for name, med, _ in rows if name == CHAIN), None)
    if chain:
        # ms for 1,000 nodes is µs per node
        print(f"per-node cost on the 1,000-Add chain: onnxruntime {chain['ort']:.3f} us, "
              f"engineroom {chain['project']:.3f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
