"""The long soak: 10,000 runs of a zoo model (RSS before/after warm-up, engineroom and onnxruntime each in its
own process), 8 threads x 1,000 runs on one session (each output against the single-threaded one), 4 sessions
of different models used at once from 8 threads, 1,000 sessions created and dropped (RSS, open files, threads).

    python bench/soak.py [--model mobilenet_v2] [--runs 10000] [--threads 8] [--per-thread 1000] [--sessions 1000]

The short forms are tests/fuzz/test_soak.py. Linux only (RSS, files and threads read from /proc).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fuzz"))
for _v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # benchmarks run on the BLAS the machine picks
    os.environ.pop(_v, None)

import numpy as np  # noqa: E402
from blas_env import blas_kernel  # noqa: E402

ZOO = os.path.join(HERE, "..", "..", "shared", "models")


def soak_child(engine: str, model: str, runs: int, warmup: int) -> None:
    """One engine in this process: ``runs`` runs after ``warmup``; prints RSS before/after and mean latency."""
    from soak_support import rss_bytes

    if engine == "onnxruntime":
        import onnxruntime as rt
    else:
        import engineroom as rt
    path = os.path.join(ZOO, model + ".onnx")
    z = np.load(path[:-5] + ".io.npz")
    so = rt.SessionOptions()
    so.intra_op_num_threads = 1
    s = rt.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {a.name: z[f"in_{k}"] for k, a in enumerate(s.get_inputs())}
    for _ in range(warmup):
        s.run(None, feed)
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    mid = None
    for k in range(runs):
        s.run(None, feed)
        if k == runs // 2:
            mid = rss_bytes()
    dt = time.perf_counter() - t0
    gc.collect()
    print(json.dumps({"before": before, "mid": mid, "after": rss_bytes(), "mean_ms": 1e3 * dt / runs, "blas": blas_kernel()}))


def rss_soak(model: str, runs: int, warmup: int) -> None:
    res = {}
    for engine in ("engineroom", "onnxruntime"):
        r = subprocess.run(
            [sys.executable, __file__, "--child", engine, model, str(runs), str(warmup)],
            capture_output=True,
            text=True,
            env=dict(os.environ, ENGINEROOM_JIT="wait"),
        )
        if r.returncode:
            print(r.stderr[-2000:])
            raise SystemExit(f"{engine} soak failed")
        res[engine] = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"{runs} runs of {model} after {warmup} warm-up runs, 1 intra-op thread (BLAS: {res['engineroom']['blas']}):")
    for engine, r in res.items():
        g = 100 * (r["after"] - r["before"]) / r["before"]
        print(
            f"  {engine:12s} RSS {r['before'] / 2**20:.1f} -> {r['mid'] / 2**20:.1f} (half-way) -> "
            f"{r['after'] / 2**20:.1f} MiB: growth {g:+.3f}%; {r['mean_ms']:.2f} ms a run"
        )
    print(
        f"  latency ratio engineroom / onnxruntime: {res['engineroom']['mean_ms'] / res['onnxruntime']['mean_ms']:.2f}"
        " (noisy: shared machine)"
    )


def threads_one_session(n_threads: int, per_thread: int) -> None:
    from soak_support import run_threads, same, small_models

    import engineroom as ort

    model, feed = small_models()["matmul_softmax_ln"]
    s = ort.InferenceSession(model)
    rng = np.random.default_rng(11)
    feeds = [feed(rng) for _ in range(n_threads * per_thread)]
    expected = [s.run(None, f) for f in feeds]
    t0 = time.perf_counter()
    got = run_threads(n_threads, feeds, lambda f: s.run(None, f))
    bad = sum(not same(a, b) for a, b in zip(got, expected))
    print(
        f"{n_threads} threads x {per_thread} runs on one session, each its own input: {len(got) - bad} of "
        f"{len(got)} outputs bitwise equal to the single-threaded run ({time.perf_counter() - t0:.1f} s)"
    )


def four_sessions(n_threads: int, jobs_per_model: int) -> None:
    from soak_support import run_threads, same, small_models

    import engineroom as ort

    models = small_models()
    sessions = {name: (ort.InferenceSession(m), f) for name, (m, f) in models.items()}
    rng = np.random.default_rng(12)
    names = sorted(sessions)
    jobs = [
        (names[k % len(names)], sessions[names[k % len(names)]][1](rng)) for k in range(jobs_per_model * len(names))
    ]
    expected = [sessions[n][0].run(None, f) for n, f in jobs]
    got = run_threads(n_threads, jobs, lambda j: sessions[j[0]][0].run(None, j[1]))
    bad = sum(not same(a, b) for a, b in zip(got, expected))
    print(
        f"{len(names)} sessions ({', '.join(names)}) from {n_threads} threads, {len(jobs)} runs: "
        f"{len(jobs) - bad} equal to single-threaded"
    )


def create_and_drop(n: int) -> None:
    from soak_support import open_files, os_threads, rss_bytes, small_models

    import engineroom as ort

    model, feed = small_models()["conv_relu_pool"]
    x = feed(np.random.default_rng(13))

    def cycle(k):
        for _ in range(k):
            s = ort.InferenceSession(model)
            s.run(None, x)
            del s
        gc.collect()

    cycle(50)
    before = rss_bytes(), open_files(), os_threads()
    cycle(n)
    after = rss_bytes(), open_files(), os_threads()
    print(
        f"{n} sessions created, run and dropped: RSS {before[0] / 2**20:.1f} -> {after[0] / 2**20:.1f} MiB "
        f"({100 * (after[0] - before[0]) / before[0]:+.2f}%), open files {before[1]} -> {after[1]}, "
        f"OS threads {before[2]} -> {after[2]}"
    )


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        soak_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--per-thread", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--skip-rss-soak", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("ENGINEROOM_JIT", "wait")
    if not a.skip_rss_soak:
        rss_soak(a.model, a.runs, a.warmup)
    threads_one_session(a.threads, a.per_thread)
    four_sessions(a.threads, a.per_thread // 2)
    create_and_drop(a.sessions)


if __name__ == "__main__":
    main()
