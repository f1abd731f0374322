"""Command line: ``python -m engineroom run | inspect | bench MODEL.onnx`` and ``--version``.

``run`` feeds random (or ``--inputs FILE.npz``) values and says what it fed, where the nodes went and how
long it took; ``inspect`` describes the model file and the session's placement (``--html`` draws it);
``bench`` times many runs and prints latency percentiles. Subcommands are registered in
:func:`_add_commands`. Usage mistakes (a missing file, a bad ``--dim``, an ``.npz`` key that names no
input) print one ``error:`` line and exit 1, as engineroom's own errors do.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np


class CliError(Exception):
    """A usage mistake, reported as one line."""


# -- argument types --------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _non_negative_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


def _parse_dims(items: list[str] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items or ():
        name, eq, val = it.partition("=")
        if not eq or not name or not val:
            raise CliError(f"--dim expects NAME=VALUE (e.g. --dim seq=64), got {it!r}")
        try:
            n = int(val)
        except ValueError:
            raise CliError(f"--dim {it}: the value must be a whole number, got {val!r}") from None
        if n < 0:
            raise CliError(f"--dim {it}: the value must be >= 0")
        out[name] = n
    return out


# -- the model file --------------------------------------------------------------------------------
def _model_path(args) -> str:
    path = args.model
    if path is None:  # `run` with no model: the project's own default model
        try:
            from engineroom.models import default_model_path
        except ImportError as e:
            raise CliError(f"no MODEL given and this installation has no default model ({e}); "
                           "pass a MODEL.onnx path") from None
        path = default_model_path()
        print(f"model: {path} (the default model; pass MODEL.onnx to run another)")
    if not os.path.isfile(path):
        from engineroom.errors import NoSuchFile

        raise NoSuchFile(f"Load model from {path} failed: file doesn't exist")
    return path


def _read_proto(path: str):
    """The model file's protobuf without its external data: opsets, metadata, the inputs' symbolic dims."""
    import onnx

    try:
        return onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a file protobuf cannot parse is the user's mistake, named
        raise CliError(f"{path} is not an ONNX model: {type(e).__name__}: {e}") from None


def _input_dims(proto) -> dict[str, list]:
    """Per graph input (initializers excluded), its dims as the file declares them: int, name or None."""
    inits = {t.name for t in proto.graph.initializer} | {t.name for t in proto.graph.sparse_initializer}
    out = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            out[vi.name] = None
            continue
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return out


def _check_dims(dims: dict[str, int], declared: dict[str, list]) -> None:
    known = {d for shape in declared.values() for d in (shape or ()) if isinstance(d, str)}
    bad = [n for n in dims if n not in known]
    if bad:
        have = ", ".join(sorted(known)) if known else "none"
        raise CliError(f"--dim {bad[0]}: the model's inputs have no symbolic dimension of that name "
                       f"(their symbolic dimensions: {have})")


# -- sessions and feeds ----------------------------------------------------------------------------
def _session(args, path: str, dims: dict[str, int]):
    """(session, creation seconds)."""
    import engineroom as ort

    so = ort.SessionOptions()
    for name, val in dims.items():
        so.add_free_dimension_override_by_name(name, val)
    if getattr(args, "threads", None) is not None:
        so.intra_op_num_threads = args.threads
    if getattr(args, "optimization", None):
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[args.optimization])
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    t0 = time.perf_counter()
    sess = ort.InferenceSession(path, so, providers=providers)
    return sess, time.perf_counter() - t0


def _load_npz(path: str, input_names: list[str]) -> dict[str, tuple[np.ndarray, str]]:
    """Arrays from ``path`` by input name, else positionally as ``in_K`` / ``inK`` (the zoo's io.npz);
    keys ``out_K`` / ``outK`` (reference outputs) are ignored; any other key is an error."""
    if not os.path.isfile(path):
        raise CliError(f"--inputs {path}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - an unreadable file is named with NumPy's reason
        raise CliError(f"--inputs {path}: not a NumPy .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise CliError(f"--inputs {path}: a single .npy array; save the inputs by name with numpy.savez")
    keys = list(z.files)
    names = set(input_names)
    out: dict[str, tuple[np.ndarray, str]] = {}
    used: set[str] = set()
    with z:
        for k, name in enumerate(input_names):
            for key in (name, f"in_{k}", f"in{k}"):
                if key in keys and key not in used and (key == name or key not in names):
                    out[name] = (z[key], key)
                    used.add(key)
                    break
    unused = [k for k in keys if k not in used and not re.fullmatch(r"out_?\d+", k)]
    if unused:
        raise CliError(f"--inputs {path}: {', '.join(repr(k) for k in unused)} name(s) no input of the model "
                       f"(its inputs: {', '.join(input_names)}; or positionally in_0..in_{len(input_names) - 1})")
    return out


def _elem_dtype(type_str: str) -> np.dtype:
    from engineroom.plugin_sdk import np_dtype
    from engineroom.plugin_sdk.dtypes import _ORT_NAMES

    if not type_str.startswith("tensor("):
        raise CliError(f"cannot make a random value of type {type_str}: the CLI feeds tensors only")
    by_name = {v: k for k, v in _ORT_NAMES.items()}
    return np_dtype(by_name[type_str[len("tensor("):-1]])


def _random(dtype: np.dtype, shape: list[int], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool), "random booleans"
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype), "random integers in [0, 10)"
    if dtype.kind == "O":
        return np.array(["a"] * int(np.prod(shape)), dtype=object).reshape(shape), "the string 'a'"
    return rng.standard_normal(size=shape).astype(dtype), "random normal"


def _make_feed(sess, declared: dict[str, list], dims: dict[str, int], npz: str | None, quiet: bool = False):
    """The feed for every input, and the lines saying what was fed and how each symbolic dim was chosen."""
    rng = np.random.default_rng(0)
    args = sess.get_inputs()
    given = _load_npz(npz, [a.name for a in args]) if npz else {}
    feed: dict[str, np.ndarray] = {}
    lines: list[str] = []
    chosen: dict[str, str] = {}   # symbolic dim -> "value (how)"
    for a in args:
        shape = declared.get(a.name)
        if shape is None:  # not in the file's inputs (or no shape there): what the session says
            shape = list(a.shape) if a.shape else None
        if a.name in given:
            arr, key = given[a.name]
            feed[a.name] = arr
            how = f"from {os.path.basename(npz)} '{key}'"
            for k, d in enumerate(shape or ()):
                if not isinstance(d, int) and k < arr.ndim:
                    chosen.setdefault(d or f"{a.name}[{k}]", f"{arr.shape[k]} (from --inputs)")
        else:
            dtype = _elem_dtype(a.type)
            if shape is None:
                raise CliError(f"input '{a.name}' has no declared shape: pass it with --inputs FILE.npz")
            concrete = []
            for k, d in enumerate(shape):
                if isinstance(d, int):
                    concrete.append(d)
                elif isinstance(d, str) and d in dims:
                    concrete.append(dims[d])
                    chosen.setdefault(d, f"{dims[d]} (--dim)")
                else:
                    concrete.append(1)
                    chosen.setdefault(d or f"{a.name}[{k}]", "1 (default)")
            arr, how = _random(dtype, concrete, rng)
            feed[a.name] = arr
        dt = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        lines.append(f"input  {a.name}: shape {tuple(arr.shape)}, dtype {dt}, {how}")
    if chosen:
        text = ", ".join(f"{k}={v}" for k, v in chosen.items())
        hint = " — set them with --dim NAME=V" if any(v.endswith("(default)") for v in chosen.values()) else ""
        lines.append(f"symbolic dims: {text}{hint}")
    return feed, lines


def _describe_output(arg, out) -> str:
    if isinstance(out, np.ndarray):
        return f"output {arg.name}: shape {out.shape}, dtype {out.dtype}"
    if isinstance(out, list):
        return f"output {arg.name}: sequence of {len(out)} tensors"
    return f"output {arg.name}: {type(out).__name__}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


# -- run -------------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    path = _model_path(args)
    dims = _parse_dims(args.dim)
    declared = _input_dims(_read_proto(path))
    _check_dims(dims, declared)
    if args.inputs:  # a wrong file or key is reported before the session is built
        _load_npz(args.inputs, [n for n in declared])
    sess, created = _session(args, path, dims)
    print(f"session created in {_ms(created)} (providers: {', '.join(sess.get_providers())})")
    print(f"placement: {sess.placement}")
    feed, lines = _make_feed(sess, declared, dims, args.inputs)
    print("\n".join(lines))
    t0 = time.perf_counter()
    outs = sess.run(None, feed)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    for arg, out in zip(sess.get_outputs(), outs):
        print(_describe_output(arg, out))
    if args.outputs:
        arrays = {a.name: o for a, o in zip(sess.get_outputs(), outs) if isinstance(o, np.ndarray)}
        np.savez(args.outputs, **arrays)
        skipped = len(outs) - len(arrays)
        print(f"outputs saved to {args.outputs}" + (f" ({skipped} non-tensor outputs left out)" if skipped else ""))
    print(f"latency: first run {_ms(first)}, median {_ms(float(np.median(times)))} over {len(times)} runs "
          f"(min {_ms(min(times))}, max {_ms(max(times))})")
    return 0


# -- inspect ---------------------------------------------------------------------------------------
def _op_counts(graph) -> tuple[dict[str, int], int]:
    """Op counts of a GraphProto's own nodes, and how many nodes its subgraphs (If/Loop/Scan) hold."""
    import onnx

    counts: dict[str, int] = {}
    nested = 0
    stack = []
    for n in graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        counts[key] = counts.get(key, 0) + 1
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                stack.append(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                stack.extend(a.graphs)
    while stack:
        g = stack.pop()
        nested += len(g.node)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)
    return counts, nested


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in
                               enumerate(zip(r, widths))).rstrip() for r in rows]


def cmd_inspect(args) -> int:
    path = _model_path(args)
    dims = _parse_dims(args.dim)
    proto = _read_proto(path)
    _check_dims(dims, _input_dims(proto))
    print(f"model: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    print(f"IR version: {proto.ir_version}")
    producer = " ".join(x for x in (proto.producer_name, proto.producer_version) if x) or "(not recorded)"
    print(f"producer: {producer}")
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    print(f"opset imports: {opsets}")
    meta = [f"{p.key}={p.value}" for p in proto.metadata_props]
    for label, val in (("domain", proto.domain), ("model version", proto.model_version or ""),
                       ("graph", proto.graph.name), ("description", proto.doc_string)):
        if val:
            meta.insert(0, f"{label}={' '.join(str(val).split())}")
    print(f"metadata: {'; '.join(meta) if meta else '(none)'}")
    file_counts, nested = _op_counts(proto.graph)
    n_file = sum(file_counts.values())
    print(f"nodes in the file: {n_file}" + (f" (+{nested} inside If/Loop/Scan bodies)" if nested else "")
          + f", initializers: {len(proto.graph.initializer)}")

    sess, created = _session(args, path, dims)
    for a in sess.get_inputs():
        print(f"input  {a.name}: {a.type} {a.shape}")
    for a in sess.get_outputs():
        print(f"output {a.name}: {a.type} {a.shape}")
    print(f"session created in {_ms(created)}")
    print(f"placement: {sess.placement}")
    parts = sess.get_provider_graph_assignment_info()
    used = list(dict.fromkeys(p.ep_name for p in parts))
    planned: dict[str, dict[str, int]] = {}
    for p in parts:
        for n in p.get_nodes():
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            planned.setdefault(key, {}).setdefault(p.ep_name, 0)
            planned[key][p.ep_name] += 1
    print("op counts (in the file / as planned after optimization, per provider):")
    ops = sorted(set(file_counts) | set(planned),
                 key=lambda k: (-file_counts.get(k, 0), -sum(planned.get(k, {}).values()), k))
    rows = [["op", "file", *[_short(e) for e in used]]]
    for op in ops:
        rows.append([op, str(file_counts.get(op, "-")), *[str(planned.get(op, {}).get(e, "-")) for e in used]])
    rows.append(["total", str(n_file), *[str(sum(len(p.nodes) for p in parts if p.ep_name == e)) for e in used]])
    print("\n".join(_table(rows)))
    print(f"partitions ({len(parts)}, in execution order):")
    for k, part in enumerate(parts):
        kind = "compiled group" if part.compiled else "kernels"
        print(f"  {k}: {part.ep_name}, {len(part.nodes)} nodes ({kind})")
        if args.verbose:
            for n in part.get_nodes():
                print(f"       {n.op_type:<24} {n.name}")
    from engineroom.report_html import planned_copies

    copies = planned_copies(sess)
    print(f"copies inserted: {len(copies)}" + ("" if args.verbose or not copies else " (--verbose lists them)"))
    if args.verbose:
        for c in copies:
            print(f"  {c.value}: {c.src_device} -> {c.dst_device}")
    if args.html:
        from engineroom.report_html import write_report

        info = write_report(sess, args.html, title=os.path.basename(path))
        print(f"graph page written to {args.html} ({info})")
    return 0


def _short(ep_name: str) -> str:
    return ep_name[: -len("ExecutionProvider")] if ep_name.endswith("ExecutionProvider") else ep_name


# -- bench -----------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    path = _model_path(args)
    dims = _parse_dims(args.dim)
    declared = _input_dims(_read_proto(path))
    _check_dims(dims, declared)
    if args.inputs:
        _load_npz(args.inputs, [n for n in declared])
    sess, created = _session(args, path, dims)
    print(f"session created in {_ms(created)} (providers: {', '.join(sess.get_providers())})")
    print(f"placement: {sess.placement}")
    feed, lines = _make_feed(sess, declared, dims, args.inputs)
    print("\n".join(lines))
    from tqdm import tqdm

    t0 = time.perf_counter()
    sess.run(None, feed)
    first = time.perf_counter() - t0
    for _ in range(args.warmup):
        sess.run(None, feed)
    times = np.empty(args.repeat)
    bar = tqdm(total=args.repeat, desc="bench", unit="run", file=sys.stderr, disable=args.no_progress,
               dynamic_ncols=True)
    start = time.perf_counter()
    for k in range(args.repeat):
        t = time.perf_counter()
        sess.run(None, feed)
        times[k] = time.perf_counter() - t
        bar.update(1)
    wall = time.perf_counter() - start
    bar.close()
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    print(f"first run {_ms(first)}; then {args.warmup} warmup runs")
    print(f"latency over {args.repeat} runs: p50 {_ms(p50)}, p90 {_ms(p90)}, p99 {_ms(p99)} "
          f"(mean {_ms(times.mean())}, min {_ms(times.min())}, max {_ms(times.max())}); "
          f"{args.repeat / wall:.1f} runs/s")
    return 0


# -- the parser ------------------------------------------------------------------------------------
def _common(sp: argparse.ArgumentParser, model_optional: bool = False) -> None:
    if model_optional:
        sp.add_argument("model", nargs="?", help="the .onnx file (default: the project's own default model)")
    else:
        sp.add_argument("model", help="the .onnx file")
    sp.add_argument("--providers", help="comma-separated provider names in priority order "
                    "(default CPUExecutionProvider)")
    sp.add_argument("--dim", action="append", metavar="NAME=V",
                    help="value of a symbolic input dimension (repeatable; default 1)")
    sp.add_argument("--threads", type=_non_negative_int, metavar="N",
                    help="SessionOptions.intra_op_num_threads (0: the default)")
    sp.add_argument("--optimization", choices=list(_OPT_LEVELS),
                    help="graph optimization level (default: all, as onnxruntime)")


def _feed_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--inputs", metavar="FILE.npz",
                    help="input arrays by input name (or in_0, in_1... by position); others are random")


def cmd_compile(args) -> int:
    from engineroom import discovery

    names = args.providers.split(",") if args.providers else discovery.available_provider_names()
    failed = 0
    for name in names:
        cls = discovery.provider_class(name)
        if cls is None or not cls.is_available():
            print(f"{name}: not available here ({discovery.unavailable_reason(name) or 'not installed'})")
            failed += 1
            continue
        t0 = time.perf_counter()
        result = cls.prepare_machine(progress=True)
        bad = {k: v for k, v in result.items() if v is not None}
        for item, why in bad.items():
            last = why.strip().splitlines()[-1] if why.strip() else "unknown reason"
            print(f"{name}: {item} could not be built: {last}")
        if result:
            print(f"{name}: {len(result) - len(bad)} built now, {len(bad)} failed ({time.perf_counter() - t0:.1f} s)")
        else:
            print(f"{name}: nothing to build")
        failed += bool(bad)
    return 1 if failed else 0


def _add_commands(sub) -> None:
    """Every subcommand: its parser, its options and the function it runs (``set_defaults(fn=...)``)."""
    sp = sub.add_parser("run", help="run once on random (or given) inputs: what was fed, outputs, latency")
    _common(sp, model_optional=True)
    _feed_options(sp)
    sp.add_argument("--repeat", type=_positive_int, default=10, metavar="N",
                    help="timed runs after the first (>= 1, default 10)")
    sp.add_argument("--outputs", metavar="FILE.npz", help="save the outputs by name to FILE.npz")
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("inspect", help="describe the model file and which provider took which nodes")
    _common(sp)
    sp.add_argument("--verbose", "-v", action="store_true", help="also list every node and copy")
    sp.add_argument("--html", metavar="OUT.html",
                    help="write one self-contained page with the graph drawn, nodes coloured by provider")
    sp.set_defaults(fn=cmd_inspect)

    sp = sub.add_parser("bench", help="time many runs: p50/p90/p99 latency")
    _common(sp)
    _feed_options(sp)
    sp.add_argument("--repeat", type=_positive_int, default=100, metavar="N", help="timed runs (default 100)")
    sp.add_argument("--warmup", type=_non_negative_int, default=5, metavar="N",
                    help="untimed runs after the first, before timing (default 5)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(fn=cmd_bench)

    sp = sub.add_parser("compile", help="build now what providers would build on first use (the CPU "
                                         "provider's compiled loops), with a progress bar")
    sp.add_argument("--providers", help="comma-separated provider names (default: every available one)")
    sp.set_defaults(fn=cmd_compile)

    from engineroom.serve.server import add_parser as add_serve_parser  # argparse only; the stack loads on use

    add_serve_parser(sub)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import engineroom

    parts = []
    for dist in ("numpy", "onnx", "onnx-ir"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return f"engineroom {engineroom.__version__} ({', '.join(parts)}; Python {sys.version.split()[0]})"


class _VersionAction(argparse.Action):
    """--version, computed only when asked (it imports engineroom)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engineroom", description="Run, inspect or benchmark an ONNX model "
                                "with engineroom.")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engineroom.errors import EngineroomError

    try:
        return args.fn(args)
    except (EngineroomError, CliError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
