"""Command line: ``python -m engineroom run MODEL.onnx`` and ``python -m engineroom inspect MODEL.onnx``."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _parse_dims(items: list[str]) -> dict[str, int]:
    out = {}
    for it in items or ():
        name, _, val = it.partition("=")
        if not val:
            raise SystemExit(f"--dim expects NAME=VALUE, got {it!r}")
        out[name] = int(val)
    return out


def _random_input(arg, dims: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    from engineroom.plugin_sdk import np_dtype

    shape = [d if isinstance(d, int) else dims.get(str(d), 1) for d in arg.shape]
    tname = arg.type[len("tensor("):-1] if arg.type.startswith("tensor(") else "float"
    import onnx

    elem = {v: k for k, v in _ort_names().items()}.get(tname, onnx.TensorProto.FLOAT)
    dtype = np_dtype(elem)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "O":
        return np.array(["a"] * int(np.prod(shape)), dtype=object).reshape(shape)
    return rng.standard_normal(size=shape).astype(dtype)


def _ort_names():
    from engineroom.plugin_sdk.dtypes import _ORT_NAMES

    return _ORT_NAMES


def _session(args):
    import engineroom as ort

    providers = args.providers.split(",") if args.providers else None
    so = ort.SessionOptions()
    for name, val in _parse_dims(args.dim).items():
        so.add_free_dimension_override_by_name(name, val)
    return ort.InferenceSession(args.model, so, providers=providers)


def cmd_run(args) -> int:
    sess = _session(args)
    rng = np.random.default_rng(0)
    dims = _parse_dims(args.dim)
    feed = {a.name: _random_input(a, dims, rng) for a in sess.get_inputs()}
    t0 = time.perf_counter()
    outs = sess.run(None, feed)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    print(f"providers: {', '.join(sess.get_providers())}")
    print(f"placement: {sess.placement}")
    for arg, out in zip(sess.get_outputs(), outs):
        if isinstance(out, np.ndarray):
            print(f"output {arg.name}: shape {out.shape}, dtype {out.dtype}")
        else:
            print(f"output {arg.name}: {type(out).__name__}")
    med = float(np.median(times)) * 1e3 if times else first * 1e3
    print(f"latency: first run {first * 1e3:.2f} ms, median {med:.2f} ms over {len(times)} runs")
    return 0


def cmd_inspect(args) -> int:
    sess = _session(args)
    for a in sess.get_inputs():
        print(f"input  {a.name}: {a.type} {a.shape}")
    for a in sess.get_outputs():
        print(f"output {a.name}: {a.type} {a.shape}")
    print(f"placement: {sess.placement}")
    for k, part in enumerate(sess.get_provider_graph_assignment_info()):
        ops = ", ".join(f"{n.op_type}:{n.name}" for n in part.get_nodes())
        print(f"partition {k} on {part.ep_name} ({len(part.nodes)} nodes): {ops}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="engineroom", description="Run or inspect an ONNX model with engineroom.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn, helptext in (("run", cmd_run, "run on random inputs and print outputs and latency"),
                               ("inspect", cmd_inspect, "print inputs, outputs and node placement")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("model")
        sp.add_argument("--providers", help="comma-separated provider names in priority order")
        sp.add_argument("--dim", action="append", help="NAME=VALUE for a symbolic dimension (default 1)")
        if name == "run":
            sp.add_argument("--repeat", type=int, default=10, help="timed runs after the first (default 10)")
        sp.set_defaults(fn=fn)
    from engineroom.serve.server import add_parser as add_serve_parser  # argparse only; the stack loads on use

    add_serve_parser(sub)
    args = p.parse_args(argv)
    import engineroom as ort

    try:
        return args.fn(args)
    except ort.EngineroomError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
