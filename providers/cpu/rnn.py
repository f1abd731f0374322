"""Recurrent layers: RNN, GRU (``linear_before_reset``), LSTM (peepholes, ``input_forget``).

All three share the frame: ``layout`` (14+: batch-major X/Y/states), ``direction`` (forward, reverse,
bidirectional), ``sequence_lens`` (per-batch lengths; steps past a sequence's end output zeros and
keep its state), ``clip`` (on gate pre-activations) and configurable activations.

Speed: the input projection ``X @ W^T + biases`` of every time step is one GEMM before the loop, so
the per-step work is a single ``H @ R^T`` (into a preallocated buffer) and the gate math. With the
default activations that math is one compiled loop per step (``_jit_rnn``, float32, the ``jit`` extra)
or a few in-place NumPy passes (``errstate`` entered once per direction, not per sigmoid); other
activations take the generic loop. A reverse direction runs its steps last to first, writing Y in
place; with ragged lengths it runs forward over each sequence reversed within its own length (one
gather before, one after), so every direction uses the same masked loop.
"""
from __future__ import annotations

import numpy as np

from engineroom.providers.cpu import _threadpool
from engineroom.providers.cpu._threadpool import parallel_ranges
from engineroom.providers.cpu.array_module import arrays
from engineroom.providers.cpu.registry import array_kernel

# name -> (uses alpha, uses beta, default alpha, default beta)
_ACT_PARAMS = {
    "relu": (False, False, 0.0, 0.0), "tanh": (False, False, 0.0, 0.0), "sigmoid": (False, False, 0.0, 0.0),
    "affine": (True, True, 1.0, 0.0), "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 1.0, 0.0), "scaledtanh": (True, True, 1.0, 1.0),
    "hardsigmoid": (True, True, 0.2, 0.5), "elu": (True, False, 1.0, 0.0),
    "softsign": (False, False, 0.0, 0.0), "softplus": (False, False, 0.0, 0.0),
}


def _activation(name: str, alpha: float, beta: float, xp):
    n = name.lower()
    if n == "sigmoid":
        def sigmoid(x):
            # exp(-x) may overflow to inf for very negative x; 1 / inf = 0 is the right limit.
            with np.errstate(over="ignore"):
                return 1 / (1 + xp.exp(-x))
        return sigmoid
    if n == "tanh":
        return xp.tanh
    if n == "relu":
        return lambda x: xp.maximum(x, 0)
    if n == "affine":
        return lambda x: alpha * x + beta
    if n == "leakyrelu":
        return lambda x: xp.where(x >= 0, x, alpha * x)
    if n == "thresholdedrelu":
        return lambda x: xp.where(x > alpha, x, 0)
    if n == "scaledtanh":
        return lambda x: alpha * xp.tanh(beta * x)
    if n == "hardsigmoid":
        return lambda x: xp.clip(alpha * x + beta, 0, 1)
    if n == "elu":
        return lambda x: xp.where(x >= 0, x, alpha * (xp.exp(xp.minimum(x, 0)) - 1))
    if n == "softsign":
        return lambda x: x / (1 + xp.abs(x))
    if n == "softplus":
        return lambda x: xp.logaddexp(x, 0)
    raise NotImplementedError(f"RNN activation '{name}' is not supported")


def _activations(info, defaults: list[str], num_dirs: int, xp) -> list[list]:
    """Activation callables per direction; alpha/beta lists are consumed in order by the functions using them."""
    names = list(info.attrs.get("activations") or [])
    if not names:
        names = defaults * num_dirs
    elif len(names) == len(defaults) and num_dirs == 2:
        names = names * 2
    alphas = list(info.attrs.get("activation_alpha") or [])
    betas = list(info.attrs.get("activation_beta") or [])
    fns = []
    for n in names:
        uses_a, uses_b, da, db = _ACT_PARAMS.get(n.lower(), (False, False, 0.0, 0.0))
        a = alphas.pop(0) if uses_a and alphas else da
        b = betas.pop(0) if uses_b and betas else db
        fns.append(_activation(n, float(a), float(b), xp))
    k = len(defaults)
    return [fns[d * k:(d + 1) * k] for d in range(num_dirs)]


def _reverse_index(seq_len: int, lens, xp):
    """Per (t, b) time index reversing each sequence within its own length (steps past it stay put)."""
    t = xp.arange(seq_len)[:, None]
    lens = lens[None, :]
    return xp.where(t < lens, lens - 1 - t, t)


def _factory(info):
    op = info.op_type
    xp = info.xp
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    direction = info.attrs.get("direction", "forward")
    if direction == "foward":  # GRU-1's schema spells its default this way
        direction = "forward"
    num_dirs = 2 if direction == "bidirectional" else 1
    layout = int(info.attrs.get("layout", 0))
    clip = info.attrs.get("clip")
    clip = None if clip is None else float(clip)
    lbr = bool(info.attrs.get("linear_before_reset", 0))
    input_forget = bool(info.attrs.get("input_forget", 0))
    defaults = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}[op]
    acts = _activations(info, defaults, num_dirs, xp)
    out_dtype = info.output_dtypes[0] if info.output_dtypes and info.output_dtypes[0] is not None else None

    def _calc(dt):
        # Half types compute in float32 (sums of many products), the result is cast back.
        return np.dtype(np.float32) if np.dtype(dt).itemsize < 4 else np.dtype(dt)

    def prepare(W, R, B, P, calc):
        """Per direction: W^T, R^T, the biases folded into the input projection, and what stays per step."""
        hidden = R.shape[-1]
        dirs = []
        for d in range(num_dirs):
            wt = xp.ascontiguousarray(W[d].astype(calc).T)            # (I, G*H)
            rt = xp.ascontiguousarray(R[d].astype(calc).T)            # (H, G*H)
            if B is not None:
                wb = B[d, :gates * hidden].astype(calc)
                rb = B[d, gates * hidden:].astype(calc)
            else:
                wb = xp.zeros(gates * hidden, calc)
                rb = xp.zeros(gates * hidden, calc)
            if op == "GRU":
                # Rbh multiplies by r_t when linear_before_reset; otherwise every bias folds in.
                in_bias = wb + rb if not lbr else xp.concatenate([wb[:2 * hidden] + rb[:2 * hidden], wb[2 * hidden:]])
                step_bias = rb[2 * hidden:] if lbr else None
            else:
                in_bias, step_bias = wb + rb, None
            p = None if P is None else P[d].astype(calc)
            dirs.append((wt, rt, in_bias, step_bias, p))
        return dirs

    cW, cR = info.const_inputs[1], (info.const_inputs[2] if len(info.const_inputs) > 2 else None)
    cB = info.const_inputs[3] if len(info.const_inputs) > 3 else None
    cP = info.const_inputs[7] if len(info.const_inputs) > 7 else None
    has_B = info.has_input(3)
    has_P = op == "LSTM" and info.has_input(7)
    prepacked = None
    if cW is not None and cR is not None and (cB is not None or not has_B) and (cP is not None or not has_P):
        x_dt = info.input_dtypes[0] if info.input_dtypes and info.input_dtypes[0] is not None else cW.dtype
        prepacked = (np.dtype(x_dt), prepare(xp.asarray(cW), xp.asarray(cR), None if cB is None else xp.asarray(cB),
                                              None if cP is None else xp.asarray(cP), _calc(x_dt)))

    # the default activations run through the lean loops below (compiled with the jit extra, float32)
    default_acts = _activation_names(info, defaults, num_dirs) == [[n.lower() for n in defaults]] * num_dirs
    jit = arrays(xp).compiled("rnn") if default_acts and op != "RNN" else None

    def run(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *_):
        dtype = X.dtype
        calc = _calc(dtype)
        if prepacked is not None and prepacked[0] == dtype:
            dirs = prepacked[1]
        else:
            dirs = prepare(W, R, B, P if op == "LSTM" else None, calc)
        hidden = R.shape[-1]
        if layout:
            X = xp.swapaxes(X, 0, 1)
            if initial_h is not None:
                initial_h = xp.swapaxes(initial_h, 0, 1)
            if initial_c is not None:
                initial_c = xp.swapaxes(initial_c, 0, 1)
        seq, batch, _ = X.shape
        Xc = X.astype(calc, copy=False)
        lens = None
        if sequence_lens is not None:
            lens = xp.asarray(sequence_lens).astype(np.int64)
            if bool(xp.all(lens >= seq)):
                lens = None
        Y = (xp.zeros if lens is not None else xp.empty)((seq, num_dirs, batch, hidden), calc)
        Y_h = xp.zeros((num_dirs, batch, hidden), calc)
        Y_c = xp.zeros((num_dirs, batch, hidden), calc)
        lean = arrays(xp).host and default_acts
        kern = jit if calc == np.float32 else None

        def one(d, mm):
            wt, rt, in_bias, step_bias, p = dirs[d]
            reverse = direction == "reverse" or d == 1
            Xd = Xc
            rev_idx = None
            if reverse and lens is not None:
                # ragged: each sequence reversed within its own length, run forward, put back after
                rev_idx = _reverse_index(seq, lens, xp)
                Xd = Xc[rev_idx, xp.arange(batch)[None, :]]
            xw = mm(Xd.reshape(seq * batch, -1), wt)
            xw += in_bias
            xw = xw.reshape(seq, batch, -1)
            h = xp.zeros((batch, hidden), calc) if initial_h is None else initial_h[d].astype(calc)
            c = None
            if op == "LSTM":
                c = xp.zeros((batch, hidden), calc) if initial_c is None else initial_c[d].astype(calc)
            if lean:
                # a reverse direction without ragged lengths runs its steps last to first, in place
                steps = range(seq - 1, -1, -1) if reverse and rev_idx is None else range(seq)
                out = Y[:, d] if rev_idx is None else xp.zeros((seq, batch, hidden), calc)
                lean_loop = _lean_lstm if op == "LSTM" else (_lean_gru if op == "GRU" else _lean_rnn)
                lean_loop(kern, xw, h, c, rt, step_bias, p, clip, lbr, input_forget, lens, steps, out, mm)
                y = out
            else:
                Xr = Xd[::-1] if reverse and rev_idx is None else Xd
                if Xr is not Xd:
                    xw = xw[::-1]
                y, h, c = _loop(op, xp, xw, h, c, rt, step_bias, p, acts[d], clip, lbr, input_forget, hidden, lens)
                if rev_idx is None and reverse:
                    y = y[::-1]
            if rev_idx is not None:
                y = y[rev_idx, xp.arange(batch)[None, :]]
            if not (lean and rev_idx is None):      # else written in place
                Y[:, d] = y
            Y_h[d] = h
            if c is not None:
                Y_c[d] = c

        def in_turn():
            for d in range(num_dirs):
                one(d, arrays(xp).matmul)

        def at_once():
            # one direction a thread, each with single-threaded GEMMs (BLAS held at one thread meanwhile;
            # NumPy's matmul, not the pool's, which would split them over the same threads again)
            _threadpool.hold_blas()
            try:
                parallel_ranges(lambda d0, d1: [one(d, np.matmul) for d in range(d0, d1)], 2, work)
            finally:
                _threadpool.release_blas()

        work = seq * batch * gates * hidden * (hidden + X.shape[-1])
        if num_dirs == 2 and lean and kern is not None and op != "RNN" and work >= _threadpool.MIN_QUIET_WORK \
                and _threadpool._blas.outside() > 1:
            # the two directions are independent recurrences: on two threads of the provider's pool where
            # the layer is large enough (thai_oskut_lstm: 21 steps of 200 x 224 by 224 x 896), as long as
            # that pays (a busy core can hold a direction for a time slice: ``_threadpool.gated``)
            _threadpool.gated(_directions_gate, work, at_once, in_turn)
        else:
            in_turn()
        target = out_dtype if out_dtype is not None else dtype
        if layout:
            Y = xp.transpose(Y, (2, 0, 1, 3))
            Y_h = xp.swapaxes(Y_h, 0, 1)
            Y_c = xp.swapaxes(Y_c, 0, 1)
        outs = (Y.astype(target, copy=False), Y_h.astype(target, copy=False))
        if op == "LSTM":
            outs += (Y_c.astype(target, copy=False),)
        return outs

    return run


# whether running a bidirectional layer's directions on two threads pays now (``_threadpool.gated``)
_directions_gate = _threadpool.SplitGate()


def _activation_names(info, defaults: list[str], num_dirs: int) -> list[list[str]]:
    """The activation names per direction (lower case), as ``_activations`` reads them."""
    names = list(info.attrs.get("activations") or [])
    if not names:
        names = defaults * num_dirs
    elif len(names) == len(defaults) and num_dirs == 2:
        names = names * 2
    k = len(defaults)
    return [[n.lower() for n in names[d * k:(d + 1) * k]] for d in range(num_dirs)]


def _masks(lens, seq, batch, dtype):
    """Per step, 1.0 for the sequences still running, 0.0 for those past their length: (seq, batch)."""
    if lens is None:
        return np.ones((seq, batch), dtype)
    return (np.arange(seq)[:, None] < lens[None, :]).astype(dtype)


# the lean loops' per-step GEMM: on the host, large ones split over the CPU provider's worker pool
_mm = arrays(np).matmul


def _sigmoid_(x):
    """The logistic function in place, 1 / (1 + e^-x) (the caller holds errstate(over="ignore"): e^-x
    overflows to inf for very negative x, and 1 / inf is the right limit)."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1
    np.reciprocal(x, out=x)


def _lean_lstm(kern, xw, h, c, rt, step_bias, p, clip, lbr, input_forget, lens, steps, out, mm=_mm):
    """An LSTM direction (default activations) over ``steps``, h and c in place, outputs into out[t]:
    per step one GEMM into a preallocated buffer, then the compiled gate loop or in-place NumPy passes."""
    B, H = h.shape
    a = np.empty((B, 4 * H), h.dtype)
    if kern is not None:
        masks = _masks(lens, xw.shape[0], B, h.dtype)
        pp = p if p is not None else np.zeros(3 * H, h.dtype)
        flags = (1 if input_forget else 0) | (2 if p is not None else 0)
        cl = h.dtype.type(np.inf if clip is None else clip)
        for t in steps:
            mm(h, rt, out=a)
            kern.lstm_step(a, xw[t], pp, masks[t], c, h, out[t], cl, flags)
        return
    ai, ao, af, ac = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    tmp = np.empty((B, H), h.dtype)
    with np.errstate(over="ignore"):
        for t in steps:
            mm(h, rt, out=a)
            a += xw[t]                          # gates i, o, f, c
            if p is not None:
                ai += p[:H] * c
                af += p[2 * H:] * c
            if clip is not None:        # o's pre-activation is clipped after its peephole term, below
                for v in ((a,) if p is None else (ai, af, ac)):
                    np.clip(v, -clip, clip, out=v)
            _sigmoid_(ai)
            if input_forget:
                np.subtract(1, ai, out=af)
            else:
                _sigmoid_(af)
            np.tanh(ac, out=ac)
            c_new = af * c
            np.multiply(ai, ac, out=tmp)
            c_new += tmp
            if p is not None:
                ao += p[H:2 * H] * c_new
                if clip is not None:
                    np.clip(ao, -clip, clip, out=ao)
            _sigmoid_(ao)
            np.tanh(c_new, out=tmp)
            h_new = ao * tmp
            _commit(t, lens, h, h_new, c, c_new, out)


def _commit(t, lens, h, h_new, c, c_new, out):
    """The step's new state into h (and c) and its output row: everywhere, or where sequences still run."""
    if lens is None:
        h[...] = h_new
        if c is not None:
            c[...] = c_new
        out[t] = h_new
        return
    m = (t < lens)[:, None]
    np.copyto(h, h_new, where=m)
    if c is not None:
        np.copyto(c, c_new, where=m)
    out[t] = np.where(m, h_new, 0)


def _lean_gru(kern, xw, h, c, rt, step_bias, p, clip, lbr, input_forget, lens, steps, out, mm=_mm):
    """A GRU direction (default activations), as :func:`_lean_lstm`."""
    B, H = h.shape
    dt = h.dtype
    if kern is not None:
        masks = _masks(lens, xw.shape[0], B, dt)
        cl = dt.type(np.inf if clip is None else clip)
        if lbr:
            a = np.empty((B, 3 * H), dt)
            for t in steps:
                mm(h, rt, out=a)
                kern.gru_step_lbr(a, xw[t], step_bias, masks[t], h, out[t], cl)
        else:
            a = np.empty((B, 2 * H), dt)
            ah = np.empty((B, H), dt)
            z = np.empty((B, H), dt)
            rh = np.empty((B, H), dt)
            for t in steps:
                mm(h, rt[:, :2 * H], out=a)
                kern.gru_reset(a, xw[t], h, z, rh, cl)
                mm(rh, rt[:, 2 * H:], out=ah)
                kern.gru_update(ah, xw[t], z, masks[t], h, out[t], cl)
        return
    cl = (lambda v: np.clip(v, -clip, clip, out=v)) if clip is not None else (lambda v: v)
    with np.errstate(over="ignore"):
        for t in steps:
            g = xw[t]
            if lbr:
                hr = h @ rt
                zr = hr[:, :2 * H]
                zr += g[:, :2 * H]
                _sigmoid_(cl(zr))
                z, r = zr[:, :H], zr[:, H:]
                hh = hr[:, 2 * H:]
                hh += step_bias
                hh *= r
                hh += g[:, 2 * H:]
            else:
                zr = h @ rt[:, :2 * H]
                zr += g[:, :2 * H]
                _sigmoid_(cl(zr))
                z, r = zr[:, :H], zr[:, H:]
                hh = (r * h) @ rt[:, 2 * H:]
                hh += g[:, 2 * H:]
            np.tanh(cl(hh), out=hh)
            h_new = (1 - z) * hh + z * h
            _commit(t, lens, h, h_new, None, None, out)


def _lean_rnn(kern, xw, h, c, rt, step_bias, p, clip, lbr, input_forget, lens, steps, out, mm=_mm):
    """A simple RNN direction (Tanh), as :func:`_lean_lstm` (NumPy: one GEMM and one tanh a step)."""
    for t in steps:
        a = h @ rt
        a += xw[t]
        if clip is not None:
            np.clip(a, -clip, clip, out=a)
        np.tanh(a, out=a)
        _commit(t, lens, h, a, None, None, out)


def _loop(op, xp, xw, h, c, rt, step_bias, p, acts, clip, lbr, input_forget, hidden, lens):
    """Run one direction forward over precomputed input projections ``xw`` (seq, batch, G*H)."""
    seq = xw.shape[0]
    y = xp.zeros((seq,) + h.shape, h.dtype)
    H = hidden
    cl = (lambda v: xp.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    for t in range(seq):
        g = xw[t]
        if op == "RNN":
            h_new = acts[0](cl(g + h @ rt))
            c_new = None
        elif op == "GRU":
            f, gg = acts
            if lbr:
                hr = h @ rt
                zr = f(cl(g[:, :2 * H] + hr[:, :2 * H]))
                z, r = zr[:, :H], zr[:, H:]
                hh = gg(cl(g[:, 2 * H:] + r * (hr[:, 2 * H:] + step_bias)))
            else:
                zr = f(cl(g[:, :2 * H] + h @ rt[:, :2 * H]))
                z, r = zr[:, :H], zr[:, H:]
                hh = gg(cl(g[:, 2 * H:] + (r * h) @ rt[:, 2 * H:]))
            h_new = (1 - z) * hh + z * h
            c_new = None
        else:
            f, gg, hf = acts
            a = g + h @ rt                      # gates i, o, f, c
            ai, ao, af, ac = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            if p is not None:
                ai = ai + p[:H] * c
                af = af + p[2 * H:] * c
            i = f(cl(ai))
            fg = 1 - i if input_forget else f(cl(af))
            c_new = fg * c + i * gg(cl(ac))
            if p is not None:
                ao = ao + p[H:2 * H] * c_new
            o = f(cl(ao))
            h_new = o * hf(c_new)
        if lens is not None:
            # Sequences already finished keep their state and output zeros.
            m = (t < lens)[:, None]
            h = xp.where(m, h_new, h)
            if c_new is not None:
                c = xp.where(m, c_new, c)
            y[t] = xp.where(m, h_new, 0)
        else:
            h = h_new
            c = c_new
            y[t] = h_new
    return y, h, c


for _op in ("RNN", "GRU", "LSTM"):
    array_kernel(_op, since=1, host_inputs=(4,))(_factory)
