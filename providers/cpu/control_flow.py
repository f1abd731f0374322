"""Control-flow kernels: If, Loop, Scan (Scan-8 with batch axis and sequence_lens; Scan-9+ with axes/directions).

Graph attributes arrive as planned subgraphs (``sub(inputs, outer) -> outputs``). The values the
node's subgraphs read from enclosing scopes come after the node's own inputs; the whole tail is handed
to every subgraph call (each subgraph's plan takes the node's full outer list).

Sequences (Python lists) and optionals (None when empty) pass through If/Loop unchanged; scan outputs
are stacked once at the end rather than grown per iteration.
"""
from __future__ import annotations

import numpy as np

from engineroom.plugin_sdk.limits import MAX_TENSOR_BYTES_KEY, TensorTooLarge
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import kernel


def _truth(c) -> bool:
    # Conditions are 0-d or single-element bool tensors; read once on the host.
    if type(c) is np.ndarray and c.size == 1:
        return bool(c)      # every Loop iteration: no reshape, no indexing
    return bool(np.asarray(c).reshape(-1)[0])


def _empty_like_output(info, k: int, xp):
    """The zero-iteration value of scan output ``k``: length 0 along the scan axis, other dims if known."""
    dt = info.output_dtypes[k] if k < len(info.output_dtypes) else None
    dt = np.float32 if dt is None else dt
    shp = info.output_shapes[k] if k < len(info.output_shapes) else None
    if shp and all(isinstance(d, int) for d in shp[1:]):
        return xp.zeros((0, *shp[1:]), dtype=dt)
    return xp.zeros((0,), dtype=dt)


def _same_bits(a, b) -> bool:
    """Whether carried value ``a`` holds the same bits as ``b`` (-0.0 and 0.0 differ; NaNs compare by
    payload): a value whose next iteration repeats this one exactly."""
    if a is b:
        return True
    if type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        u = np.dtype(f"u{a.dtype.itemsize}")
        return bool(np.array_equal(a.view(u), b.view(u)))
    return a.dtype.kind in "biu" and bool(np.array_equal(a, b))


# --- If (later versions only widen the allowed types)

@kernel("If", since=1, host_inputs=(0,))
def if_(info):
    then_b = info.attrs["then_branch"]
    else_b = info.attrs["else_branch"]
    n = info.num_inputs

    def run(*inputs):
        sub = then_b if _truth(inputs[0]) else else_b
        return tuple(sub([], inputs[n:]))

    return run



# --- Loop (13+ carries sequences, 16+ optionals: both pass through as Python values)

@kernel("Loop", since=1, host_inputs=(0, 1))
def loop(info):
    xp = info.xp
    body = info.attrs["body"]
    n = info.num_inputs
    n_carried = n - 2
    n_scan = len(body.output_names) - 1 - n_carried
    int64_max = np.iinfo(np.int64).max
    limit = info.max_tensor_bytes
    reads = getattr(body, "reads_input", None)
    # the iteration number as a fresh 0-d array only where the body reads it (the body may return it)
    needs_iter = reads is None or len(reads) < 1 or reads[0]
    # the body split into the steps that stop changing once carried values settle and the rest
    # (``Subgraph.loop_split``): in the first iterations, the carried values handed back with the bits
    # they came in with are settled (the next iteration's inputs repeat them, so by induction every later
    # one's, where the steps computing them read only settled values); the rest of the body, bound to
    # the invariant steps' values, runs from the next iteration on
    split_of = getattr(body, "loop_split", None) if arrays(xp).host else None

    def run(*inputs):
        m, cond = inputs[0], inputs[1]
        carried = list(inputs[2:n])
        outer = inputs[n:]
        trip = int64_max if m is None else int(np.asarray(m).reshape(-1)[0])
        go = True if cond is None else _truth(cond)
        scans: list[list] = [[] for _ in range(n_scan)]
        cond_t = np.array(True)
        i = 0
        held = 0   # bytes the scan outputs hold so far: a huge trip count stops at the tensor limit
        ndarray = np.ndarray
        step = body
        probe = split_of is not None and trip > 2 and n_carried > 0
        split = None
        while go and i < trip:
            # iter_num is a fresh 0-d array each iteration: the body may return it as an output.
            feeds = [np.array(i, dtype=np.int64) if needs_iter else None, cond_t, *carried]
            if split is not None:
                step = split.bind(split.first(feeds, outer))
                split = None
            outs = step(feeds, outer)
            if probe:
                settled = frozenset(j for j in range(n_carried) if _same_bits(outs[1 + j], carried[j]))
                split = split_of(n_carried, settled) if settled else None
                probe = split is None and i < 2
            c = outs[0]
            go = bool(c) if c.__class__ is ndarray and c.size == 1 else _truth(c)   # _truth, inlined
            carried = outs[1:1 + n_carried]
            if n_scan:
                for k in range(n_scan):
                    o = outs[1 + n_carried + k]
                    scans[k].append(o)
                    held += getattr(o, "nbytes", 0) + 64
                if held > limit > 0:
                    raise TensorTooLarge(f"Loop's scan outputs hold {held} bytes after {i + 1} iterations, over "
                                         f"the limit of {limit} bytes (session config '{MAX_TENSOR_BYTES_KEY}')")
            i += 1
        res = list(carried)
        for k in range(n_scan):
            if scans[k]:
                res.append(xp.stack(scans[k]))
            else:
                res.append(_empty_like_output(info, n_carried + k, xp))
        return tuple(res)

    return run



# --- Scan

def _stack_axis(parts: list, axis: int, xp):
    """Stack per-iteration elements along ``axis`` (negative counts from the stacked rank)."""
    out = xp.stack(parts)
    return out if axis == 0 else xp.moveaxis(out, 0, axis)


@kernel("Scan", since=9)
def scan(info):
    xp = info.xp
    body = info.attrs["body"]
    n = info.num_inputs
    m = int(info.attrs["num_scan_inputs"])
    n_state = n - m
    n_scan_out = len(body.output_names) - n_state
    in_axes = list(info.attrs.get("scan_input_axes") or [0] * m)
    in_dirs = list(info.attrs.get("scan_input_directions") or [0] * m)
    out_axes = list(info.attrs.get("scan_output_axes") or [0] * n_scan_out)
    out_dirs = list(info.attrs.get("scan_output_directions") or [0] * n_scan_out)

    def run(*inputs):
        states = list(inputs[:n_state])
        outer = inputs[n:]
        seqs = []
        length = None
        for j in range(m):
            x = inputs[n_state + j]
            ax = in_axes[j] + x.ndim if in_axes[j] < 0 else in_axes[j]
            if ax != 0:
                x = xp.moveaxis(x, ax, 0)   # a view: iteration t reads x[t]
            if in_dirs[j]:
                x = x[::-1]
            if length is None:
                length = x.shape[0]
            elif x.shape[0] != length:
                raise ValueError(f"scan inputs have different sequence lengths ({length} and {x.shape[0]})")
            seqs.append(x)
        collected: list[list] = [[] for _ in range(n_scan_out)]
        for rows in zip(*seqs):   # (x[t] of each scan input), t = 0 .. length - 1
            outs = body([*states, *rows], outer)
            states = outs[:n_state]
            for k in range(n_scan_out):
                collected[k].append(outs[n_state + k])
        res = list(states)
        for k in range(n_scan_out):
            parts = collected[k]
            if not parts:
                res.append(_empty_like_output(info, n_state + k, xp))
                continue
            if out_dirs[k]:
                parts = parts[::-1]
            ax = out_axes[k]
            if ax < 0:
                ax += parts[0].ndim + 1
            res.append(_stack_axis(parts, ax, xp))
        return tuple(res)

    return run


@kernel("Scan", since=8, host_inputs=(0,))
def scan8(info):
    xp = info.xp
    body = info.attrs["body"]
    n = info.num_inputs
    m = int(info.attrs["num_scan_inputs"])
    n_state = n - 1 - m
    n_scan_out = len(body.output_names) - n_state
    dirs = list(info.attrs.get("directions") or [0] * m)

    def run(*inputs):
        seq_lens = inputs[0]
        states0 = inputs[1:1 + n_state]
        xs = inputs[1 + n_state:n]
        outer = inputs[n:]
        batch = xs[0].shape[0] if xs else states0[0].shape[0]
        max_len = xs[0].shape[1] if xs else 0
        lens = [max_len] * batch if seq_lens is None else [int(v) for v in np.asarray(seq_lens).reshape(-1)]
        final_states: list[list] = [[] for _ in range(n_state)]
        outs_per_batch: list[list] = [[] for _ in range(n_scan_out)]
        for b in range(batch):
            states = [s[b] for s in states0]
            L = lens[b]
            seqs = [x[b, :L][::-1] if dirs[j] else x[b, :L] for j, x in enumerate(xs)]
            collected: list[list] = [[] for _ in range(n_scan_out)]
            for t in range(L):
                outs = body([*states, *[x[t] for x in seqs]], outer)
                states = list(outs[:n_state])
                for k in range(n_scan_out):
                    collected[k].append(outs[n_state + k])
            for k in range(n_state):
                final_states[k].append(states[k])
            for k in range(n_scan_out):
                outs_per_batch[k].append(collected[k])
        res = [xp.stack(fs) for fs in final_states]
        for k in range(n_scan_out):
            per_b = outs_per_batch[k]
            sample = next((p[0] for p in per_b if p), None)
            if sample is None:
                shp = info.output_shapes[n_state + k] if len(info.output_shapes) > n_state + k else None
                dt = info.output_dtypes[n_state + k] or np.float32
                tail = tuple(shp[2:]) if shp and all(isinstance(d, int) for d in shp[2:]) else ()
                res.append(xp.zeros((batch, max_len, *tail), dtype=dt))
                continue
            sample = xp.asarray(sample)
            out = xp.zeros((batch, max_len, *sample.shape), dtype=sample.dtype)  # padding stays 0
            for b, parts in enumerate(per_b):
                if parts:
                    out[b, :len(parts)] = xp.stack(parts)
            res.append(out)
        return tuple(res)

    return run
