"""The executor: runs a plan (``engineroom.plan.Plan``) by walking its flat list of steps over one list of
value slots, and nothing else: no dict lookups, graph walks or shape inference per step.

- :class:`Executor` holds a plan's steps in the form its loop reads fastest (prepared once per plan) and
  runs them; when a profiler or a verbose run log is on, the same loop runs them wrapped in timers.
- The run context of the current thread (:data:`running`: the RunOptions, the profiler), set around a
  run by :func:`execute` and read once per plan run, so the plans of If/Loop/Scan bodies see it too.
- :class:`Deadline`: RunOptions with the run config ``run.timeout_ms``.
- :class:`Subgraph`: what a control-flow kernel receives for a graph attribute.
- Located errors (:func:`located`, :func:`is_located`): an error that already says where it happened.
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from operator import itemgetter

from engineroom.errors import Fail, NotImplemented, RuntimeException
from engineroom.op_facts import RANDOM_OPS

RUN_TIMEOUT_KEY = "run.timeout_ms"

log = logging.getLogger("engineroom")


# -- located errors --------------------------------------------------------------------------------
# A step's failure is reported once, as RuntimeException "... while running <the step>", by the plan it
# happened in. The plan of an enclosing graph (the main graph around a Loop body) must pass it on as it
# is, and so must every plan for a stopped run (terminate flag, deadline): such errors carry this mark.
_LOCATED = "_engineroom_located"
_LOCATED_KINDS = (RuntimeException, Fail, NotImplemented)


def located(err: Exception) -> Exception:
    """``err``, marked as saying where it happened: enclosing plans re-raise it unchanged."""
    setattr(err, _LOCATED, True)
    return err


def is_located(err: BaseException) -> bool:
    return isinstance(err, _LOCATED_KINDS) and getattr(err, _LOCATED, False)


def terminated() -> Fail:
    return located(Fail("Exiting due to terminate flag being set to true."))


# -- the run context ---------------------------------------------------------------------------------
class _NotStopped:
    terminate = False


_NOT_STOPPED = _NotStopped()


class _Running(threading.local):
    # defaults as class attributes: measured ~0.7 us less per plan run (every Loop iteration) than reading
    # a plain threading.local's attributes with getattr(..., None)
    options = None
    profiler = None


running = _Running()


class Deadline:
    """A run's RunOptions with a time limit (run config ``run.timeout_ms``): the executor reads ``terminate``
    before every step, and past the deadline that read raises the timeout error."""

    __slots__ = ("_options", "_at", "_ms")

    def __init__(self, options, ms: float):
        self._options, self._ms = options, ms
        self._at = time.monotonic() + ms / 1000.0

    def __getattr__(self, name: str):
        return getattr(self._options, name)

    @property
    def terminate(self) -> bool:
        if self._options.terminate:
            return True
        if time.monotonic() > self._at:
            raise located(Fail(f"Exiting because the run took longer than its time limit of {self._ms:g} ms "
                               f"(run config '{RUN_TIMEOUT_KEY}')"))
        return False


def execute(plan, feeds: list, options=None, profiler=None, logid: str = "") -> list:
    """``plan.run(feeds)`` with the run's options (``terminate``, a :class:`Deadline`, a verbose step log) and
    the profiler as this thread's run context, where the plan and its subgraph plans read them."""
    prof = profiler if profiler is not None and profiler.active else None
    if prof is None and options is not None and log.isEnabledFor(logging.DEBUG):
        from engineroom.logger import logging_level

        if logging_level(options.log_severity_level) <= logging.DEBUG:
            from engineroom.profiling import StepLogger

            prof = StepLogger(options.logid or logid)
    prev = running.options, running.profiler
    running.options, running.profiler = options, prof
    try:
        if prof is None or not hasattr(prof, "session_event"):
            return plan.run(feeds)
        t0 = prof.now_us()
        outs = plan.run(feeds)
        t1 = prof.now_us()
        prof.session_event("SequentialExecutor::Execute", t0, t1)
        prof.session_event("model_run", t0, t1)
        return outs
    finally:
        running.options, running.profiler = prev


# -- the executor ------------------------------------------------------------------------------------
def _no_inputs(vals) -> tuple:
    return ()


def _fast_step(st) -> tuple:
    """A plan step as the executor's loop reads it (see :class:`Executor`)."""
    n = len(st.ins)
    get = itemgetter(*st.ins) if n > 1 else None if n else _no_inputs
    if n and len(st.outs) == 1 and len(st.release) <= 2:
        r1, r2 = (*st.release, 0, 0)[:2]
        return (st.fn, n if n <= 2 else 3, st.ins[0], st.ins[-1], st.outs[0], r1, r2, get)
    return (st.fn, 0, st.ins[0] if n else 0, 0, -1, 0, 0, (get, st.outs, st.release))


class Executor:
    """Runs one plan's steps. Each step is kept as ``(fn, kind, a, b, out, r1, r2, more)``. Kinds 2, 1, 3:
    one output, into slot ``out``, and at most two slots released, ``r1`` and ``r2`` (slot 0, which always
    holds None, where there are fewer): the common steps, run with no further tests. Kind 2 reads slots
    ``a`` and ``b``, kind 1 slot ``a``, kind 3 (more inputs) the slots ``more`` (an ``itemgetter``) reads.
    Kind 0 is any other step, described by ``more`` = ``(get, outs, release)`` (the getter of its inputs,
    None for one input, read from slot ``a``; its output slots; the slots it releases)."""

    __slots__ = ("_template", "_input_slots", "_inputs_at", "_output_slots", "_output", "_outputs", "_steps", "_fast")

    def __init__(self, template: list, input_slots, output_slots, steps) -> None:
        self._template = template
        self._input_slots = tuple(input_slots)
        # the planner gives a graph's inputs consecutive slots: they are placed with one slice assignment
        lo = self._input_slots[0] if self._input_slots else 0
        self._inputs_at = slice(lo, lo + len(self._input_slots)) \
            if self._input_slots == tuple(range(lo, lo + len(self._input_slots))) else None
        self._output_slots = tuple(output_slots)
        self._output = self._output_slots[0] if len(self._output_slots) == 1 else -1
        self._outputs = itemgetter(*self._output_slots) if len(self._output_slots) > 1 else _no_inputs
        self._steps = steps   # the plan's Step records: labels and profiling infos of errors and timed runs
        self._fast = [_fast_step(st) for st in steps]

    def run(self, feeds) -> list:
        return self(feeds)

    def __call__(self, inputs, outer=()) -> list:
        """The plan's outputs for ``inputs`` followed by ``outer`` (the values a subgraph reads from enclosing
        scopes): one call, so a Loop / Scan iteration enters the loop below directly."""
        feeds = [*inputs, *outer] if outer else inputs
        vals = self._template.copy()
        if self._inputs_at is not None and len(feeds) == len(self._input_slots):
            vals[self._inputs_at] = feeds
        else:
            for s, v in zip(self._input_slots, feeds):
                vals[s] = v
        # RunOptions.terminate is read before every step (a plain attribute read), so another thread can stop
        # a run in progress; with a profiler, the same loop runs the steps wrapped in timers
        stop = running.options or _NOT_STOPPED
        fast = self._fast if running.profiler is None else self._timed(running.profiler)
        if not fast and stop.terminate:   # a body with no steps still stops (a Loop over it can run 2**63 times)
            raise terminated()
        fn = kind = a = b = out = r1 = r2 = more = None
        try:
            # the loop's variables are the step's fields (one unpacking, no step variable, no tests of
            # what to release): 1,000-Add chain 0.39 -> 0.36 us a node
            for fn, kind, a, b, out, r1, r2, more in fast:
                if stop.terminate:
                    raise terminated()
                if kind == 2:
                    vals[out] = fn(vals[a], vals[b])[0]
                elif kind == 1:
                    vals[out] = fn(vals[a])[0]
                elif kind == 3:
                    vals[out] = fn(*more(vals))[0]
                else:
                    get, outs, release = more
                    for s, r in zip(outs, fn(vals[a]) if get is None else fn(*get(vals))):
                        vals[s] = r
                    for s in release:
                        vals[s] = None
                vals[r1] = None
                vals[r2] = None
        except Exception as e:
            if is_located(e):
                raise
            # the failing step, found by its fields (its output slots are its own): no step counter in the loop
            i = next((k for k, st in enumerate(fast) if st == (fn, kind, a, b, out, r1, r2, more)), -1)
            raise self._located(e, i) from e
        if self._output >= 0:
            return [vals[self._output]]
        return list(self._outputs(vals))

    def _located(self, e: Exception, i: int) -> RuntimeException:
        label = self._steps[i].label if i >= 0 else "the plan"
        return located(RuntimeException(f"Non-zero status code returned while running {label}: "
                                        f"{type(e).__name__}: {e}"))

    def _timed(self, profiler) -> list:
        """The steps with each callable timed into ``profiler`` (a ``Profiler`` or ``StepLogger``): the
        same loop runs them."""
        perf = time.perf_counter_ns
        node_event = profiler.node_event

        def timed(fn, i, info):
            def step(*args):
                t0 = perf()
                res = fn(*args)
                node_event(info, i, t0, perf(), args, res)
                return res

            return step

        return [(timed(st[0], i, self._steps[i].info), *st[1:]) for i, st in enumerate(self._fast)]


class Subgraph(Executor):
    """A planned graph attribute of a control-flow node, the executor of its plan: ``sub(inputs, outer) ->
    outputs``."""

    __slots__ = ("plan", "input_names", "output_names", "outer_names", "reads_input", "_splits")

    def __init__(self, plan, outer_names: list[str]):
        super().__init__(plan.template, plan.input_slots, plan.output_slots, plan.steps)
        self.plan = plan
        self.input_names = plan.input_names[: len(plan.input_names) - len(outer_names)]
        self.output_names = plan.output_names
        self.outer_names = outer_names
        # per input, whether the body reads it (a Loop need not make an iteration number nobody reads)
        read = {s for st in plan.steps for s in st.ins} | set(plan.output_slots)
        self.reads_input = [s in read for s in plan.input_slots]
        self._splits: dict = {}

    def loop_split(self, n_carried: int, carried: frozenset) -> "LoopSplit | None":
        """For a Loop body: its steps split into those that compute the same thing in every iteration once
        the carried values at positions ``carried`` have settled (an iteration handed them back with the
        bits it was given), and the rest; None where no step is invariant. The caller sees the settling at
        run time; a position whose output is not computed from settled values alone is dropped first, since
        its next value could differ. Made once per set of positions (cached)."""
        key = (n_carried, carried)
        if key in self._splits:
            return self._splits[key]
        ins, outs, steps = self._input_slots, self._output_slots, self._steps
        n_body = len(self.input_names)
        fixed = set(ins[n_body:]) | {s for s, v in enumerate(self._template) if v is not None} | {0}
        c_in, c_out = ins[2:2 + n_carried], outs[1:1 + n_carried]
        cand = set(carried)
        while True:
            stable = fixed | {c_in[j] for j in cand}
            inv = []
            for i, st in enumerate(steps):
                if st.info[1] not in _VOLATILE and all(s in stable for s in st.ins):
                    inv.append(i)
                    stable.update(st.outs)
            drop = {j for j in cand if c_out[j] not in stable}
            if not drop:
                break
            cand -= drop
        split = None
        if inv:
            inv_set = set(inv)
            made = {s for i in inv for s in steps[i].outs}
            needed = sorted({s for i, st in enumerate(steps) if i not in inv_set for s in st.ins if s in made}
                            | {s for s in outs if s in made})
            rest = [st for i, st in enumerate(steps) if i not in inv_set]
            if needed:
                split = LoopSplit(Executor(self._template, ins, needed, [steps[i] for i in inv]), needed,
                                  Executor(self._template, ins, outs, rest))
        self._splits[key] = split
        return split


# ops whose outputs may differ between two calls with the same inputs (or that run graphs of their own):
# never taken as loop-invariant
_VOLATILE = RANDOM_OPS | {"Dropout", "If", "Loop", "Scan", "SequenceMap"}


class LoopSplit:
    """A Loop body's plan as two executors (:meth:`Subgraph.loop_split`): ``first`` computes the values of
    the invariant steps that the other steps or the body's outputs read (``needed`` slots), ``rest`` the
    other steps; :meth:`bind` gives ``rest`` with those values in place, the body of every later
    iteration."""

    __slots__ = ("first", "needed", "rest")

    def __init__(self, first, needed, rest) -> None:
        self.first, self.needed, self.rest = first, needed, rest

    def bind(self, values) -> Executor:
        template = self.rest._template.copy()
        for s, v in zip(self.needed, values):
            template[s] = v
        ex = copy.copy(self.rest)
        ex._template = template
        return ex
