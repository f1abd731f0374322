#!/usr/bin/env python3
"""Text generation, engineroom beside onnxruntime: greedy decoding of 128 new tokens after a 64-token
prompt with the two KV-cache decoders of ``engineroom.models.decoders`` (GPT-2, standard ops; a
Llama-style onnxruntime-genai model: GroupQueryAttention, RotaryEmbedding, MatMulNBits 4-bit),
batch 1 and 4, IOBinding keeping the cache in place between steps (``engineroom.models.generate``).

usage: python bench/generate.py [--models gpt2_kv,llama_kv] [--batches 1,4] [--prompt 64] [--new 128]
                                [--rounds 2] [--threads 1]

Each engine runs in its own process, in alternating rounds (A B A B), with the same thread count
(intra_op_num_threads) and the same prompt; the processes run without OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE and the BLAS kernel in use is printed. After a warm-up generation, per model and
batch: prefill latency (the prompt's step: median of 4 per process), per-token latency p50 / p99 (the
127 steps after it) and the per-token CPU time p50 of the calling thread, tokens per second (batch x new
tokens / the whole generation), the engineroom / onnxruntime ratios, peak RSS of each process, the
per-token p50 of the first and last 16 steps (growth with the cache's length), and whether both
engines generated the same token ids.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from blas_env import blas_kernel, clean_env

ENGINES = ("ort", "project")
NAMES = {"ort": "onnxruntime", "project": "engineroom"}


def worker(engine: str, path: str, batch: int, prompt_len: int, new: int, threads: int) -> None:
    import numpy as np

    from engineroom.models.generate import GreedyDecoder, uses_shared_cache

    if engine == "ort":
        import onnxruntime as mod
    else:
        import engineroom as mod
    so = mod.SessionOptions()
    so.intra_op_num_threads = threads
    t0 = time.perf_counter()
    s = mod.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    created = time.perf_counter() - t0
    dec = GreedyDecoder(s, mod, uses_shared_cache(path))
    prompt = np.random.default_rng(1234 + batch).integers(0, 8192, (batch, prompt_len))
    dec.generate(prompt, 2)                                             # warm-up: first-run costs out
    prefills = []
    for _ in range(3):                                                  # the prompt's step alone, 3 more samples
        t = time.perf_counter()
        next(dec.steps(prompt, 1))
        prefills.append(time.perf_counter() - t)
    times, cpu, ids = [], [], []
    t, c = time.perf_counter(), time.thread_time()
    for _, nxt in dec.steps(prompt, new):
        now, cnow = time.perf_counter(), time.thread_time()
        times.append(now - t)
        cpu.append(cnow - c)
        ids.append(nxt.tolist())
        t, c = time.perf_counter(), time.thread_time()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "cpu": cpu, "prefills": prefills + times[:1], "ids": ids, "create": created,
                      "rss": rss, "blas": blas_kernel()}))


def measure(path: str, batch: int, args) -> dict:
    env = clean_env()
    env["ENGINEROOM_JIT"] = env.get("ENGINEROOM_JIT", "wait")            # the compiled loops, built before timing
    res = {e: [] for e in ENGINES}
    for _ in range(args.rounds):
        for e in ENGINES:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", e, path, "--batch", str(batch),
                   "--prompt", str(args.prompt), "--new", str(args.new), "--threads", str(args.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not lines:
                raise SystemExit(f"{e} failed on {path}: {p.stderr.strip()[-2000:]}")
            res[e].append(json.loads(lines[-1]))
    return res


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def summarize(runs: list, batch: int, new: int) -> dict:
    prefill = statistics.median(t for r in runs for t in r["prefills"]) * 1e3
    tokens = [t * 1e3 for r in runs for t in r["times"][1:]]
    cpu = [t * 1e3 for r in runs for t in r["cpu"][1:]]
    first = statistics.median(t * 1e3 for r in runs for t in r["times"][1:17])
    last = statistics.median(t * 1e3 for r in runs for t in r["times"][-16:])
    tps = statistics.median(batch * new / sum(r["times"]) for r in runs)
    return {"prefill": prefill, "p50": _pct(tokens, 50), "p99": _pct(tokens, 99), "tps": tps, "cpu": _pct(cpu, 50),
            "rss": max(r["rss"] for r in runs), "first": first, "last": last, "blas": runs[0]["blas"],
            "ids": runs[0]["ids"], "same_ids_across_rounds": all(r["ids"] == runs[0]["ids"] for r in runs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "MODEL"))
    ap.add_argument("--models", default="gpt2_kv,llama_kv")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.batch, args.prompt, args.new, args.threads)
        return 0
    from engineroom.models.decoders import ensure

    paths = ensure()
    print(f"# greedy decoding, {args.prompt}-token prompt + {args.new} new tokens; {args.threads} thread(s) for "
          f"both engines; {args.rounds} alternating rounds per engine, each in its own process")
    ok = True
    blas_shown = False
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            r = measure(paths[name], batch, args)
            s = {e: summarize(r[e], batch, args.new) for e in ENGINES}
            if not blas_shown:
                print(f"# BLAS in the engineroom process: {s['project']['blas']}")
                print(f"{'model':9s} {'B':>2s} | {'prefill ms':>17s} {'x':>5s} | {'token p50 ms':>15s} {'x':>5s} | "
                      f"{'token p99 ms':>15s} | {'tokens/s':>13s} | {'peak RSS MB':>11s} {'x':>5s} | "
                      f"{'p50 first/last 16':>23s} | {'token CPU p50 ms':>20s} | ids")
                blas_shown = True
            o, p = s["ort"], s["project"]
            same = o["ids"] == p["ids"] and o["same_ids_across_rounds"] and p["same_ids_across_rounds"]
            ok &= same
            print(f"{name:9s} {batch:2d} | "
                  f"{o['prefill']:7.2f} / {p['prefill']:7.2f} {p['prefill'] / o['prefill']:5.2f} | "
                  f"{o['p50']:6.3f} / {p['p50']:6.3f} {p['p50'] / o['p50']:5.2f} | {o['p99']:6.3f} / {p['p99']:6.3f} | "
                  f"{o['tps']:5.0f} / {p['tps']:5.0f} | {o['rss']:4.0f} / {p['rss']:4.0f} {p['rss'] / o['rss']:5.2f} | "
                  f"ort {o['first']:5.2f}/{o['last']:5.2f} er {p['first']:5.2f}/{p['last']:5.2f} | "
                  f"{o['cpu']:6.3f} / {p['cpu']:6.3f} {p['cpu'] / o['cpu']:5.2f} | "
                  f"{'same' if same else 'DIFFERENT'}", flush=True)
    print("# columns: onnxruntime / engineroom, then the ratio engineroom / onnxruntime; token CPU: the thread's "
          "CPU time per step (both engines compute on the calling thread at 1 thread), steadier than wall time "
          "on a shared machine")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
