#!/usr/bin/env python3
"""Latency under load: engineroom beside onnxruntime while another process keeps one core busy.

usage: python bench/under_load.py [--models resnet18,bert_mini,ppocrv5_det] [--runs N] [--rounds R]
                                  [--threads T] [--busy-core C] [--no-busy] [--steady | --spinning] [--rw DIR]

A busy process (a pure-Python loop) is pinned to core C (default: the last core this process may
use) for the whole measurement; then each engine runs in its own process, rounds alternating
A B A B, both with intra_op_num_threads = T (default 2), N timed runs per round after 3 warm-ups.
Printed per model: p50 and p99 of each engine over all its runs, and the ratios engineroom /
onnxruntime (the p99 ratio is issue 16's "steady under load" figure). Both engines run with their
default threads unless --steady or --spinning sets session.intra_op.allow_spinning to "0" or "1" for
both (engineroom's default is its sleeping worker pool; "1" puts its GEMMs on OpenBLAS's threads). Zoo models (resnet18,
bert_mini, ...) take their inputs from ../shared/models/NAME.io.npz; realworld models (ppocrv5_det,
...) from the manifest's feed recipes (../shared/realworld/run_all.py), files under --rw. The
measured processes run without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE; the BLAS kernel is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

from blas_env import blas_kernel, clean_env

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.abspath(os.path.join(HERE, "..", "..", "shared"))
ZOO = os.path.join(SHARED, "models")
RW_MANIFEST = os.path.join(SHARED, "realworld", "manifest.json")



def worker(engine: str, path: str, feed_file: str, runs: int, threads: int, out_file: str) -> None:
    with open(feed_file, "rb") as f:
        feed = pickle.load(f)
    if engine == "ort":
        import onnxruntime as ort
    else:
        import engineroom as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if os.environ.get("UNDER_LOAD_SPINNING"):
        # onnxruntime's switch, the same for both engines: "0" worker threads that sleep, "1" that spin
        so.add_session_config_entry("session.intra_op.allow_spinning", os.environ["UNDER_LOAD_SPINNING"])
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(3):
        s.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - t)
    with open(out_file, "w") as f:
        json.dump({"times": times, "blas": blas_kernel()}, f)


def _feed(name: str, rw: str) -> tuple[str, dict]:
    import numpy as np

    zoo = os.path.join(ZOO, name + ".onnx")
    if os.path.exists(zoo):
        io = np.load(os.path.join(ZOO, name + ".io.npz"))
        import onnx

        m = onnx.load(zoo, load_external_data=False)
        inits = {i.name for i in m.graph.initializer}
        names = [i.name for i in m.graph.input if i.name not in inits]
        if len(names) != len([k for k in io.files if k.startswith("in_")]):
            raise SystemExit(f"{name}: {len(names)} inputs but {name}.io.npz holds {io.files}")
        feed = {nm: io[f"in_{i}"] for i, nm in enumerate(names)}      # the file keeps them by position
        return zoo, feed
    sys.path.insert(0, os.path.join(SHARED, "realworld"))
    import run_all

    with open(RW_MANIFEST) as f:
        entries = {e["name"]: e for e in json.load(f)["models"]}
    if name not in entries:
        raise SystemExit(f"{name}: neither a zoo model in {ZOO} nor in {RW_MANIFEST}")
    path = os.path.join(rw, entries[name]["path"])
    return path, run_all.make_feed(path, entries[name])


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=5, metavar=("ENGINE", "MODEL", "FEED", "RUNS", "OUT"))
    ap.add_argument("--models", default="resnet18,bert_mini,ppocrv5_det")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--busy-core", type=int, default=None)
    ap.add_argument("--no-busy", action="store_true", help="no busy process (the quiet baseline)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--steady", action="store_true",
                      help='both engines with session.intra_op.allow_spinning = "0" (threads that do not spin)')
    mode.add_argument("--spinning", action="store_true",
                      help='both engines with session.intra_op.allow_spinning = "1" (threads that spin)')
    ap.add_argument("--rw", default="/work/rw", help="where fetch.sh put the realworld models")
    a = ap.parse_args()
    if a.worker:
        eng, path, feed, runs, out = a.worker
        worker(eng, path, feed, int(runs), a.threads, out)
        return 0
    env = clean_env()
    if a.steady or a.spinning:
        env["UNDER_LOAD_SPINNING"] = "0" if a.steady else "1"
    cores = sorted(os.sched_getaffinity(0))
    busy_core = cores[-1] if a.busy_core is None else a.busy_core
    busy = None
    if not a.no_busy:
        busy = subprocess.Popen(["taskset", "-c", str(busy_core), sys.executable, "-c", "while True: pass"])
    print(f"# {a.threads} threads for both engines; {a.rounds} alternating rounds x {a.runs} runs; "
          + ("no busy process" if busy is None else f"a busy process pinned to core {busy_core} of {cores}")
          + (f'; session.intra_op.allow_spinning = "{env["UNDER_LOAD_SPINNING"]}" for both'
             if "UNDER_LOAD_SPINNING" in env else "; both engines' default threads"),
          flush=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in a.models.split(","):
                path, feed = _feed(name, a.rw)
                ff = os.path.join(tmp, "feed.pkl")
                with open(ff, "wb") as f:
                    pickle.dump(feed, f)
                times: dict[str, list[float]] = {"ort": [], "engineroom": []}
                blas = ""
                for _ in range(a.rounds):
                    for eng in ("ort", "engineroom"):
                        out = os.path.join(tmp, f"{eng}.json")
                        subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--worker", eng,
                                        path, ff, str(a.runs), out], env=env, check=True)
                        with open(out) as f:
                            r = json.load(f)
                        times[eng] += r["times"]
                        if eng == "engineroom":
                            blas = r["blas"]
                o50, o99 = _pct(times["ort"], 0.5), _pct(times["ort"], 0.99)
                e50, e99 = _pct(times["engineroom"], 0.5), _pct(times["engineroom"], 0.99)
                print(f"{name:14s} ort p50 {o50:8.2f} p99 {o99:8.2f} ms | engineroom p50 {e50:8.2f} p99 {e99:8.2f} ms"
                      f" | p50 x{e50 / o50:.2f}  p99 x{e99 / o99:.2f}", flush=True)
        print(f"# BLAS in the engineroom process: {blas}")
    finally:
        if busy is not None:
            busy.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
