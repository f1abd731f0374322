#!/usr/bin/env python3
"""A bounded load test of `engineroom serve` on 127.0.0.1, with and without dynamic batching.

usage: python bench/serve_load.py [--clients 32] [--requests 200] [--bad-every 10] [--rounds 2] [--delay-us 2000]

One server process (sessions with intra_op_num_threads 1: on a loaded machine a 2-thread BLAS call stalls for a
scheduler quantum whenever one of its threads is descheduled) serves the same MLP (128 -> 1024 x 4, FP32; about
13 MB of weights, so a 1-row run is bound by reading them) twice: `mlp` (max_batch_size 32, no dynamic batching:
one run per request) and `mlp_batched` (dynamic batching up to 32 rows, max_queue_delay_microseconds
--delay-us). For each, in alternating rounds, --clients concurrent clients (aiohttp, one process) each send
--requests REST infer requests of 1 row; every --bad-every-th request is malformed (in turn: wrong shape,
malformed JSON, unknown model, wrong datatype, binary payload shorter than declared). Every answer is checked:
good ones against a local engineroom run of the same rows (rtol 1e-4), bad ones for their HTTP status and error
body. Printed: requests/s, p50/p99 latency of the good requests, lost / wrong / unanswered counts, and the mean
batch size from the server's /metrics; then the model alone in-process at 1 and 32 rows beside onnxruntime (each
engine in its own process, alternating rounds, one thread each) for scale.

The server and the in-process runs go without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, and the BLAS kernel in
use is printed. On a shared machine the figures are noisy: compare the two modes of one run, not runs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

from blas_env import clean_env

HERE = os.path.dirname(os.path.abspath(__file__))
FEATURES, HIDDEN, LAYERS, MAX_BATCH = 128, 1024, 4, 32
ENV = clean_env()


def _model(path: str) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    nodes, inits, cur, width = [], [], "x", FEATURES
    for k in range(LAYERS):
        inits += [nh.from_array((rng.standard_normal((width, HIDDEN)) / np.sqrt(width)).astype(np.float32), f"W{k}"),
                  nh.from_array(rng.standard_normal(HIDDEN).astype(np.float32) * 0.1, f"B{k}")]
        out = "y" if k == LAYERS - 1 else f"h{k}"
        nodes += [h.make_node("MatMul", [cur, f"W{k}"], [f"m{k}"]), h.make_node("Add", [f"m{k}", f"B{k}"], [f"a{k}"]),
                  h.make_node("Relu", [f"a{k}"], [out])]
        cur, width = out, HIDDEN
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", HIDDEN])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(m, path)


def _repository(root: str, delay_us: int) -> str:
    one_thread = {"intra_op_num_threads": 1}
    for name, cfg in (("mlp", {"max_batch_size": MAX_BATCH, "session_options": one_thread}),
                      ("mlp_batched", {"max_batch_size": MAX_BATCH, "session_options": one_thread,
                                       "dynamic_batching": {"max_queue_delay_microseconds": delay_us}})):
        _model(os.path.join(root, name, "1", "model.onnx"))
        with open(os.path.join(root, name, "config.json"), "w") as f:
            json.dump(cfg, f)
    return os.path.join(root, "mlp", "1", "model.onnx")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_requests():
    """(path, body, headers, expected status, text the error names), one per kind of malformed request."""
    row = [0.1] * FEATURES
    good_in = {"name": "x", "datatype": "FP32", "shape": [1, FEATURES], "data": row}
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, FEATURES],
                                   "parameters": {"binary_data_size": 4 * FEATURES}}]}).encode()
    return [
        ("{m}", json.dumps({"inputs": [dict(good_in, shape=[1, FEATURES - 1], data=row[1:])]}).encode(), {}, 400,
         "does not match"),
        ("{m}", b'{"inputs": [{"name": "x", ', {}, 400, "malformed JSON"),
        ("nosuchmodel", json.dumps({"inputs": [good_in]}).encode(), {}, 404, "unknown model"),
        ("{m}", json.dumps({"inputs": [dict(good_in, datatype="INT32", data=[1] * FEATURES)]}).encode(), {}, 400,
         "datatype INT32"),
        ("{m}", head + bytes(4 * FEATURES - 4), {"Inference-Header-Content-Length": str(len(head))}, 400,
         "runs past"),
    ]


async def _load(url: str, model: str, xs, expected, clients: int, requests: int, bad_every: int) -> dict:
    import aiohttp
    import numpy as np

    bads = _bad_requests()
    lat, counts = [], {"good": 0, "bad_answered": 0, "wrong": 0, "lost": 0}

    async def client(cid: int, session):
        for k in range(requests):
            n = cid * requests + k
            t0 = time.perf_counter()
            try:
                if bad_every and k % bad_every == bad_every - 1:
                    path, body, headers, status, text = bads[n % len(bads)]
                    async with session.post(f"{url}/v2/models/{path.format(m=model)}/infer", data=body,
                                            headers=headers) as r:
                        doc = await r.json(content_type=None)
                    if r.status == status and text in doc.get("error", ""):
                        counts["bad_answered"] += 1
                    else:
                        counts["wrong"] += 1
                    continue
                i = n % len(xs)
                doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, FEATURES], "data": xs[i]}]}
                async with session.post(f"{url}/v2/models/{model}/infer", json=doc) as r:
                    ans = await r.json(content_type=None)
                lat.append(time.perf_counter() - t0)
                if r.status != 200:
                    counts["wrong"] += 1
                    continue
                y = np.asarray(ans["outputs"][0]["data"], np.float32)
                if np.allclose(y, expected[i], rtol=1e-4, atol=1e-4):
                    counts["good"] += 1
                else:
                    counts["wrong"] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
                counts["lost"] += 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c, session) for c in range(clients)))
        wall = time.perf_counter() - t0
    lat.sort()
    return dict(counts, wall=wall, total=clients * requests, p50=lat[len(lat) // 2] * 1e3,
                p99=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3)


def _batch_metrics(url: str, model: str) -> tuple[float, float]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics") as r:
        text = r.read().decode()
    vals = {}
    for line in text.splitlines():
        if line.startswith("engineroom_inference_batch_size_") and f'model="{model}"' in line:
            vals[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return vals.get("engineroom_inference_batch_size_count", 0.0), vals.get("engineroom_inference_batch_size_sum", 0.0)


def _inproc(engine: str, path: str, rows: int, runs: int) -> float:
    code = f"""
import json, time, numpy as np
import {'onnxruntime' if engine == 'ort' else 'engineroom'} as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession({path!r}, so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal(({rows}, {FEATURES})).astype(np.float32)
for _ in range(5): s.run(None, {{"x": x}})
t = []
for _ in range({runs}):
    t0 = time.perf_counter(); s.run(None, {{"x": x}}); t.append(time.perf_counter() - t0)
print(json.dumps(float(np.median(t))))
"""
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _blas() -> str:
    code = ("import numpy\nfrom threadpoolctl import threadpool_info\n"
            "print('; '.join(f\"{i['internal_api']} {i.get('version')} {i.get('architecture')} \"\n"
            "      f\"{i['num_threads']} threads\" for i in threadpool_info() if i['user_api'] == 'blas'))")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    return r.stdout.strip() or f"unknown ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'no output'})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=200, help="requests per client")
    p.add_argument("--bad-every", type=int, default=10, help="every N-th request is malformed (0: none)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--delay-us", type=int, default=2000, help="max_queue_delay_microseconds of mlp_batched")
    args = p.parse_args()
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("this benchmark's client needs aiohttp (pip install aiohttp; tritonclient[http] brings it)")
        return 2
    import numpy as np

    import engineroom

    with tempfile.TemporaryDirectory() as root:
        path = _repository(root, args.delay_us)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((64, FEATURES)).astype(np.float32)
        expected = engineroom.InferenceSession(path).run(None, {"x": x})[0]
        xs = [row.tolist() for row in x]
        hp, gp = _free_port(), _free_port()
        log = open(os.path.join(root, "server.log"), "w")
        server = subprocess.Popen([sys.executable, "-m", "engineroom", "serve", "--model-repository", root,
                                   "--http-port", str(hp), "--grpc-port", str(gp)], env=ENV, stdout=log,
                                  stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{hp}"
        try:
            import urllib.request

            for _ in range(600):
                try:
                    urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None:
                        raise RuntimeError(open(log.name).read()) from None
                    time.sleep(0.2)
            print(f"# BLAS (server environment): {_blas()}")
            print(f"# {args.clients} clients x {args.requests} requests of 1 row, every {args.bad_every}th "
                  f"malformed; MLP {FEATURES}->{HIDDEN}x{LAYERS}; max_batch_size {MAX_BATCH}; "
                  f"queue delay {args.delay_us} us")
            results = {"mlp": [], "mlp_batched": []}
            for rnd in range(args.rounds):
                for model in (("mlp", "mlp_batched") if rnd % 2 == 0 else ("mlp_batched", "mlp")):
                    runs0, rows0 = _batch_metrics(url, model)
                    r = asyncio.run(_load(url, model, xs, expected, args.clients, args.requests, args.bad_every))
                    runs1, rows1 = _batch_metrics(url, model)
                    r["mean_batch"] = (rows1 - rows0) / max(runs1 - runs0, 1)
                    results[model].append(r)
                    print(f"round {rnd + 1} {model:12s} {r['total'] / r['wall']:8.0f} req/s  p50 {r['p50']:7.2f} ms  "
                          f"p99 {r['p99']:7.2f} ms  good {r['good']}  bad answered {r['bad_answered']}  "
                          f"wrong {r['wrong']}  lost {r['lost']}  mean batch {r['mean_batch']:.1f} rows", flush=True)
        finally:
            server.terminate()
            server.wait(30)
            log.close()
        best = {m: max(rs, key=lambda r: r["total"] / r["wall"]) for m, rs in results.items()}
        tp = {m: r["total"] / r["wall"] for m, r in best.items()}
        problems = sum(r["wrong"] + r["lost"] for rs in results.values() for r in rs)
        print(f"best round: without dynamic batching {tp['mlp']:.0f} req/s (p50 {best['mlp']['p50']:.2f} ms, "
              f"p99 {best['mlp']['p99']:.2f} ms); with {tp['mlp_batched']:.0f} req/s "
              f"(p50 {best['mlp_batched']['p50']:.2f} ms, p99 {best['mlp_batched']['p99']:.2f} ms): "
              f"x{tp['mlp_batched'] / tp['mlp']:.2f}; wrong or lost answers: {problems}")
        # the model alone, in-process, beside onnxruntime (each engine in its own process, alternating)
        times = {(e, n): [] for e in ("engineroom", "ort") for n in (1, MAX_BATCH)}
        for rnd in range(2):
            for e in (("engineroom", "ort") if rnd % 2 == 0 else ("ort", "engineroom")):
                for n in (1, MAX_BATCH):
                    times[(e, n)].append(_inproc(e, path, n, 200))
        for n in (1, MAX_BATCH):
            a, b = min(times[("engineroom", n)]), min(times[("ort", n)])
            print(f"model alone, {n:2d} rows: engineroom {a * 1e6:8.1f} us, onnxruntime {b * 1e6:8.1f} us, "
                  f"ratio {a / b:.2f}")
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
