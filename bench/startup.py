#!/usr/bin/env python3
"""Start-up cost of engineroom beside onnxruntime: `import`, the first session, a second session.

usage: python bench/startup.py [MODEL.onnx ...] [--realworld DIR MANIFEST.json] [--only a,b] [--rounds R]
                               [--threads T]

Every measurement is taken in a fresh process, engines alternating (A B A B), R rounds, best round kept:
- import: `import onnxruntime` / `import engineroom` alone (wall time and CPU time of the process);
- per model: `InferenceSession(...)` right after the import (what `run_all.py`'s create column times:
  it includes whatever the engine imports on first use), the import + that first session together
  (wall, and CPU time: steadier on a busy machine), and a second session of the same model in the
  same process (the per-session cost once every module is loaded; wall, and CPU time).
Without model arguments the realworld set (`../shared/realworld`, models in /work/rw) is used. The
measured processes run without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE and the BLAS kernel in use is
printed. Ratios are engineroom / onnxruntime; the geometric means are over the models both engines load.

Compiled bytecode: an installed package runs from the .pyc files pip wrote at install time, but an
editable checkout under PYTHONDONTWRITEBYTECODE=1 (this machine's setting) compiles every one of its
modules from source in every process (~0.1-0.15 s CPU of engineroom's first session; onnxruntime's
modules come with their .pyc). So by default both engines' processes keep their bytecode in one cache
folder (PYTHONPYCACHEPREFIX, filled by an untimed warm-up process per engine), as installed packages
do; `--no-pycache` measures with the environment as it is. The mode is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from blas_env import blas_kernel, clean_env

HERE = os.path.dirname(os.path.abspath(__file__))
RW_DIR = "/work/rw"
RW_MANIFEST = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "realworld", "manifest.json"))
ENGINES = ("ort", "engineroom")



def worker(engine: str, model: str, threads: int) -> dict:
    res: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    if engine == "ort":
        import onnxruntime as ort
    else:
        import engineroom as ort
    res["import"] = time.perf_counter() - t0
    res["import_cpu"] = time.process_time() - c0
    if not model:
        return res
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    try:
        t = time.perf_counter()
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        res["create"] = time.perf_counter() - t
        res["total"] = time.perf_counter() - t0
        res["total_cpu"] = time.process_time() - c0
        t, c = time.perf_counter(), time.process_time()
        ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        res["create2"] = time.perf_counter() - t
        res["create2_cpu"] = time.process_time() - c
    except Exception as e:  # noqa: BLE001 - a model one engine cannot load is reported, not fatal
        res["error"] = f"{type(e).__name__}: {e}"[:200]
    res["blas"] = blas_kernel()
    return res


def run(engine: str, model: str, threads: int, env: dict) -> dict:
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", engine, model or "",
                        "--threads", str(threads)], capture_output=True, text=True, env=env, timeout=900)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker died (exit {p.returncode}): {tail}"}
    return json.loads(lines[-1])


def _models(args) -> list[tuple[str, str]]:
    if args.models:
        return [(os.path.splitext(os.path.basename(m))[0], m) for m in args.models]
    with open(args.realworld[1]) as f:
        man = json.load(f)
    only = {s for s in args.only.split(",") if s}
    return [(e["name"], os.path.join(args.realworld[0], e["path"])) for e in man["models"]
            if (not only or e["name"] in only) and os.path.exists(os.path.join(args.realworld[0], e["path"]))]


def _geo(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "MODEL"))
    ap.add_argument("models", nargs="*")
    ap.add_argument("--realworld", nargs=2, metavar=("DIR", "MANIFEST"), default=[RW_DIR, RW_MANIFEST])
    ap.add_argument("--only", default="")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-pycache", action="store_true",
                    help="keep the environment's bytecode setting (PYTHONDONTWRITEBYTECODE) instead of a cache")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.threads)), flush=True)
        return 0
    env = clean_env()
    models = _models(args)
    if args.no_pycache:
        print(f"bytecode: as the environment says (PYTHONDONTWRITEBYTECODE="
              f"{env.get('PYTHONDONTWRITEBYTECODE', 'unset')})", flush=True)
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "engineroom-startup-pycache")
        for e in ENGINES:   # untimed: compiles what a first session imports into the cache
            run(e, models[0][1] if models else "", args.threads, env)
        print(f"bytecode: cached for both engines in {env['PYTHONPYCACHEPREFIX']} (as installed packages; "
              f"--no-pycache to compile from source as this environment does)", flush=True)
    imp = {e: [] for e in ENGINES}
    for _ in range(args.rounds):
        for e in ENGINES:
            r = run(e, "", args.threads, env)
            if "import" in r:
                imp[e].append((r["import"], r["import_cpu"]))
    best = {e: (min(w for w, _ in imp[e]), min(c for _, c in imp[e])) for e in ENGINES}
    print(f"import (best of {args.rounds}, fresh processes): onnxruntime {best['ort'][0] * 1e3:.0f} ms "
          f"(CPU {best['ort'][1] * 1e3:.0f}), engineroom {best['engineroom'][0] * 1e3:.0f} ms "
          f"(CPU {best['engineroom'][1] * 1e3:.0f}); ratio {best['engineroom'][0] / best['ort'][0]:.2f} "
          f"(CPU {best['engineroom'][1] / best['ort'][1]:.2f})", flush=True)
    print(f"{'model':22s} {'create ort/er ms':>18s} {'x':>6s} {'import+create ort/er ms':>24s} {'x':>6s}"
          f" {'2nd create ort/er ms':>21s} {'x':>6s} {'import+create CPU ms':>18s} {'x':>6s}"
          f" {'2nd create CPU ms':>18s} {'x':>6s}", flush=True)
    ratios: dict[str, list[float]] = {"create": [], "total": [], "create2": [], "total_cpu": [], "create2_cpu": []}
    blas = ""
    for name, path in models:
        got: dict = {e: [] for e in ENGINES}
        for _ in range(args.rounds):
            for e in ENGINES:
                got[e].append(run(e, path, args.threads, env))
        ok = {e: [r for r in got[e] if "create" in r] for e in ENGINES}
        if not all(ok.values()):
            errs = "; ".join(f"{e}: {got[e][0].get('error')}" for e in ENGINES if not ok[e])
            print(f"{name:22s} not loaded: {errs}", flush=True)
            continue
        blas = ok["engineroom"][0].get("blas", blas)
        cells = []
        for key in ratios:
            a, b = (min(r[key] for r in ok[e]) * 1e3 for e in ENGINES)
            ratios[key].append(b / a)
            cells.append(f"{a:9.1f} /{b:8.1f} {b / a:6.2f}")
        print(f"{name:22s} {cells[0]:>25s} {cells[1]:>31s} {cells[2]:>28s} {cells[3]:>25s} {cells[4]:>25s}",
              flush=True)
    print(f"# BLAS in the engineroom process: {blas}")
    print("geomean engineroom/onnxruntime: " + ", ".join(f"{k} {_geo(v):.2f}" for k, v in ratios.items())
          + f" over {len(ratios['create'])} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
