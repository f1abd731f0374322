"""Soak and concurrency, short forms (bench/soak.py runs the long ones): many runs without memory growth,
one session from 8 threads, 4 sessions of different models from 8 threads, sessions created and dropped
without leaking memory, open files or threads."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest
from soak_support import open_files, os_threads, rss_bytes, run_threads, same, small_models

import engineroom as ort

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS, fds and threads read from /proc")


def test_many_runs_do_not_grow_memory():
    model, feed = small_models()["conv_relu_pool"]
    s = ort.InferenceSession(model)
    rng = np.random.default_rng(0)
    feeds = [feed(rng) for _ in range(16)]
    for k in range(300):  # warm-up: allocator pools, caches
        s.run(None, feeds[k % 16])
    gc.collect()
    before = rss_bytes()
    for k in range(3000):
        s.run(None, feeds[k % 16])
    gc.collect()
    after = rss_bytes()
    print(f"RSS before {before / 2**20:.1f} MiB, after 3000 runs {after / 2**20:.1f} MiB")
    assert after <= before * 1.01, f"RSS grew {100 * (after - before) / before:.2f}% over 3000 runs"


def test_one_session_from_8_threads_equals_single_threaded():
    model, feed = small_models()["matmul_softmax_ln"]
    s = ort.InferenceSession(model)
    rng = np.random.default_rng(1)
    feeds = [feed(rng) for _ in range(800)]  # 8 threads x 100 runs, each its own input
    expected = [s.run(None, f) for f in feeds]
    got = run_threads(8, feeds, lambda f: s.run(None, f))
    assert all(same(a, b) for a, b in zip(got, expected))


def test_four_sessions_of_different_models_from_8_threads():
    models = small_models()
    sessions = {name: (ort.InferenceSession(m), f) for name, (m, f) in models.items()}
    rng = np.random.default_rng(2)
    jobs = []
    for k in range(400):
        name = sorted(sessions)[k % 4]
        jobs.append((name, sessions[name][1](rng)))
    expected = [sessions[n][0].run(None, f) for n, f in jobs]
    got = run_threads(8, jobs, lambda j: sessions[j[0]][0].run(None, j[1]))
    assert all(same(a, b) for a, b in zip(got, expected))


def test_sessions_created_and_dropped_leak_nothing():
    model, feed = small_models()["conv_relu_pool"]
    x = feed(np.random.default_rng(3))

    def cycle(n):
        for _ in range(n):
            s = ort.InferenceSession(model)
            s.run(None, x)
            del s
        gc.collect()

    cycle(30)  # warm-up
    before = rss_bytes(), open_files(), os_threads()
    cycle(200)
    after = rss_bytes(), open_files(), os_threads()
    print(
        f"200 sessions: RSS {before[0] / 2**20:.1f} -> {after[0] / 2**20:.1f} MiB, open files {before[1]} -> "
        f"{after[1]}, threads {before[2]} -> {after[2]}"
    )
    assert after[0] <= before[0] * 1.02 + (1 << 20)
    assert after[1] <= before[1] and after[2] <= before[2]
