"""CUDA graphs for ``enable_cuda_graph="1"``: a group of nodes run by the provider's kernels, whose
capturable stretches are captured once and replayed on later runs.

With graphs enabled the provider claims its nodes as groups (``Capability(kind="group")``), so the
core hands each cycle-free partition to ``compile``, which returns a :class:`CapturedGroup`:

* run 1 with a given input shape signature is a warm-up, run eagerly (CuPy compiles its kernels on
  first use, cuBLAS creates its handle); run 2 captures; later runs with the same shapes replay.
  A run with other input shapes runs eagerly (no recapture): CUDA graphs need fixed shapes, as in
  onnxruntime;
* CuPy refuses cuBLAS, cuSOLVER and cuRAND calls while a stream captures (``NotImplementedError``),
  and anything that synchronizes the host (data-dependent shapes, ``.item()``, reading a host input)
  invalidates a capture. Such steps run eagerly between the captured stretches: the ops known to need
  it (``EAGER_OPS``: every GEMM-based op, so each MatMul/Gemm/Conv splits the graph) up front, any
  other when its capture fails — the stretch is split at that step and captured again on the next
  run. With CuPy, then, a graph covers the elementwise, normalization, softmax and data-movement
  stretches between GEMMs, not a whole model;
* captured stretches allocate from a private CuPy memory pool kept as long as the group lives: a
  replay writes into the very buffers the capture allocated. Before each replay the stretch's
  inputs are copied into its static input buffers (device to device), and the group's outputs are
  copied out after it (the next replay overwrites them) — onnxruntime avoids those copies by asking
  for inputs and outputs at fixed addresses through IOBinding;
* runs of one group are serialized by a lock (they share the static buffers), and run on the
  provider's own non-blocking stream, ordered after the caller's stream by events on entry and exit.

None of this has run on a GPU yet (see bench/cuda_zoo.py).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from engineroom.plugin_sdk import GroupView, KernelInfo

log = logging.getLogger("engineroom")

# ops whose CuPy implementation calls cuBLAS/cuSOLVER/cuRAND or synchronizes: never captured
EAGER_OPS = frozenset({
    "MatMul", "Gemm", "Conv", "FusedConv", "ConvTranspose", "Einsum", "Attention", "MatMulInteger",
    "QLinearMatMul", "Det", "NonZero", "Compress", "Unique", "TopK", "NonMaxSuppression",
    "GRU", "LSTM", "RNN",
})
MIN_CAPTURED_STEPS = 2      # a shorter stretch is not worth a graph launch


@dataclass
class _Step:
    fn: Callable
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    to_host: tuple[int, ...]          # argument positions read on the host (a sync: never captured)
    eager: bool
    label: str


@dataclass
class _Stretch:
    """Consecutive capturable steps and, once captured, their graph and buffers."""

    steps: list[_Step]
    graph: Any = None
    static: dict[int, Any] = field(default_factory=dict)     # slot -> static input buffer
    produced: dict[int, Any] = field(default_factory=dict)   # slot -> array the replay writes
    keep: list = field(default_factory=list)                 # every array the capture allocated


class CapturedGroup:
    """``fn(*inputs) -> tuple`` for one group, replaying CUDA graphs where it can (module docstring)."""

    def __init__(self, provider, group: GroupView):
        self.cp = cp = provider.xp
        self.provider = provider
        self.device = cp.cuda.Device(provider.device.id)
        self.stream = provider.stream
        self.pool = cp.cuda.MemoryPool()
        self.lock = threading.Lock()
        n_in = len(group.inputs)
        slot: dict[Any, int] = {nm: i for i, nm in enumerate(group.inputs)}
        template: list = [None] * n_in
        self.none_slot = len(template)
        template.append(None)
        steps = []
        for v in group.nodes:
            host_in = set(provider.host_input_indices(v))
            ins, to_host = [], []
            for j, nm in enumerate(v.input_names):
                if not nm:
                    ins.append(self.none_slot)
                    continue
                if nm not in slot and nm in group.initializers:
                    key = (nm, j in host_in)                  # a constant, uploaded once (or kept on the host)
                    if key not in slot:
                        arr = group.initializers[nm]
                        template.append(arr if j in host_in else cp.asarray(arr))
                        slot[key] = len(template) - 1
                    ins.append(slot[key])
                    continue
                ins.append(slot[nm])
                if j in host_in:
                    to_host.append(j)
            outs = []
            for nm in v.output_names:
                template.append(None)
                outs.append(len(template) - 1)
                if nm:
                    slot[nm] = outs[-1]
            fn = provider.create_kernel(KernelInfo.from_view(v))
            eager = v.op_type in EAGER_OPS or bool(to_host)
            steps.append(_Step(fn, tuple(ins), tuple(outs), tuple(to_host), eager, v.describe()))
        self.template = template
        self.n_in = n_in
        self.steps = steps
        self.out_slots = tuple(slot[nm] for nm in group.outputs)
        self.consts = {s for s, v in enumerate(template) if v is not None}
        self.items: list = self._split(steps)
        self.key = None
        self.runs = 0
        self._warned = False

    # -- structure ------------------------------------------------------------------------------
    @staticmethod
    def _split(steps: list[_Step]) -> list:
        """Steps and stretches in order: eager steps alone, capturable runs as stretches."""
        items: list = []
        run: list[_Step] = []

        def flush():
            if len(run) >= MIN_CAPTURED_STEPS:
                items.append(_Stretch(list(run)))
            else:
                items.extend(run)
            run.clear()

        for st in steps:
            if st.eager:
                flush()
                items.append(st)
            else:
                run.append(st)
        flush()
        return items

    # -- running --------------------------------------------------------------------------------
    def __call__(self, *inputs):
        cp = self.cp
        with self.lock, self.device:
            caller = cp.cuda.get_current_stream()
            self.stream.wait_event(caller.record())
            with self.stream:
                vals = self.template.copy()
                vals[: self.n_in] = inputs
                key = tuple((tuple(x.shape), str(x.dtype)) if hasattr(x, "shape") else None for x in inputs)
                if self.key is None:
                    self.key = key
                if key != self.key:
                    if not self._warned:
                        log.warning("CUDAExecutionProvider: a CUDA-graph group ran with input shapes %s after "
                                    "capturing %s; runs with other shapes are not captured", key, self.key)
                        self._warned = True
                    self._eager(self.steps, vals)
                    outs = tuple(vals[s] for s in self.out_slots)
                else:
                    self.runs += 1
                    if self.runs == 1:
                        self._eager(self.steps, vals)               # warm-up: kernels compile here
                        outs = tuple(vals[s] for s in self.out_slots)
                    else:
                        self._graphed(vals)
                        outs = tuple(vals[s].copy() if hasattr(vals[s], "copy") else vals[s]
                                     for s in self.out_slots)      # the next replay overwrites them
            caller.wait_event(self.stream.record())
        return outs

    def _run_step(self, st: _Step, vals: list, local: dict | None = None) -> None:
        args = [vals[s] if local is None or s not in local else local[s] for s in st.ins]
        for j in st.to_host:
            args[j] = self.provider.to_host(args[j])
        res = st.fn(*args)
        target = vals if local is None else local
        for s, r in zip(st.outs, res):
            target[s] = r

    def _eager(self, steps, vals: list) -> None:
        for st in steps:
            self._run_step(st, vals)

    def _graphed(self, vals: list) -> None:
        items = []
        for item in self.items:
            if isinstance(item, _Step):
                self._run_step(item, vals)
                items.append(item)
            elif item.graph is None:
                items.extend(self._capture(item, vals))
            else:
                self._replay(item, vals)
                items.append(item)
        self.items = items

    def _external(self, stretch: _Stretch) -> list[int]:
        inside = {s for st in stretch.steps for s in st.outs}
        ext: dict[int, None] = {}
        for st in stretch.steps:
            for s in st.ins:
                if s not in inside and s not in self.consts and s != self.none_slot:
                    ext.setdefault(s)
        return list(ext)

    def _capture(self, stretch: _Stretch, vals: list) -> list:
        """Capture ``stretch`` and launch it once; on failure run it eagerly and return it split at the
        step that failed (captured again on the next run), or as eager steps when that is unknown."""
        cp = self.cp
        ext = self._external(stretch)
        if not all(isinstance(vals[s], cp.ndarray) for s in ext):
            self._eager(stretch.steps, vals)
            return list(stretch.steps)
        failed, err = None, None
        with cp.cuda.using_allocator(self.pool.malloc):
            static = {}
            for s in ext:
                buf = cp.empty_like(vals[s])
                buf[...] = vals[s]
                static[s] = buf
            local: dict[int, Any] = dict(static)
            self.stream.begin_capture()
            try:
                for k, st in enumerate(stretch.steps):
                    failed = k
                    self._run_step(st, vals, local)
                failed = None
            except Exception as e:  # noqa: BLE001 - a step CuPy cannot capture: it will run eagerly
                err = e
            try:
                graph = self.stream.end_capture()
            except Exception as e:  # noqa: BLE001 - an invalidated capture says so here
                graph, err = None, err or e
                if failed is None:
                    failed = -1
        if failed is not None or graph is None:
            self._eager(stretch.steps, vals)          # nothing of the failed capture ran
            where = stretch.steps[failed].label if failed is not None and failed >= 0 else "an unknown step"
            log.info("CUDAExecutionProvider: could not capture %s into a CUDA graph (%s: %s); it runs eagerly",
                     where, type(err).__name__, err)
            if failed is None or failed < 0:
                return list(stretch.steps)
            before, bad, after = stretch.steps[:failed], stretch.steps[failed], stretch.steps[failed + 1:]
            bad.eager = True
            return [*self._split(before), bad, *self._split(after)]
        stretch.graph = graph
        stretch.static = static
        stretch.keep = list(local.values())
        stretch.produced = {s: local[s] for st in stretch.steps for s in st.outs if s in local}
        graph.launch(self.stream)                    # the capture recorded the work; this runs it
        for s, a in stretch.produced.items():
            vals[s] = a
        return [stretch]

    def _replay(self, stretch: _Stretch, vals: list) -> None:
        for s, buf in stretch.static.items():
            v = vals[s]
            if getattr(v, "shape", None) != buf.shape or v.dtype != buf.dtype:   # data-dependent shape changed
                self._eager(stretch.steps, vals)
                return
        for s, buf in stretch.static.items():
            buf[...] = vals[s]
        stretch.graph.launch(self.stream)
        for s, a in stretch.produced.items():
            vals[s] = a
