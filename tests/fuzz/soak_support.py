"""What the soak tests (tests/fuzz/test_soak.py) and the long soak (bench/soak.py) share: RSS, open files
and threads of this process, and the four small models used at once from many threads."""

from __future__ import annotations

import os
import threading

import numpy as np


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def small_models() -> dict:
    """name -> (serialized model, feed maker(rng) -> feed) for four different small graphs."""
    import fuzzing

    res = {}
    for s in fuzzing._built_seeds():
        if s.name not in ("conv_relu_pool", "matmul_softmax_ln", "lstm", "loop_scan"):
            continue

        def feed(rng, base=s.feeds):
            return {
                k: (v + rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v)
                for k, v in base.items()
            }

        res[s.name] = (s.model.SerializeToString(), feed)
    return res


def run_threads(n_threads: int, jobs: list, fn) -> list:
    """``fn(job)`` for every job, from ``n_threads`` threads at once; results in the jobs' order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n_threads) as pool:
        return list(pool.map(fn, jobs))


def same(a, b) -> bool:
    """Bitwise equality of two lists of outputs."""
    return len(a) == len(b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(a, b)
    )
