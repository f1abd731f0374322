"""The fuzzer's seeded short run (the long one is bench/fuzz.py): every case runs or raises one of
engineroom's errors; no crash, hang, foreign exception or difference from onnxruntime."""

from __future__ import annotations

import os

import fuzzing

CASES = int(os.environ.get("ENGINEROOM_FUZZ_CASES", "600"))  # ~30 s on 2 shared cores
SEED = int(os.environ.get("ENGINEROOM_FUZZ_SEED", "2026"))


def test_cases_are_deterministic_by_seed():
    corpus = fuzzing.load_corpus(node_tests=40)
    for i in (0, 7, 99):
        a, b = fuzzing.make_case(corpus, SEED, i), fuzzing.make_case(corpus, SEED, i)
        assert (a.seed_name, a.steps, a.data) == (b.seed_name, b.steps, b.data)
        assert a.feeds.keys() == b.feeds.keys()
        for k in a.feeds:
            assert a.feeds[k].tobytes() == b.feeds[k].tobytes()


def test_seeded_fuzz_run_has_no_findings():
    # 2 worker processes, each case with a time limit; node-test seeds where ../nt exists, else the built ones
    rep = fuzzing.fuzz(CASES, SEED, workers=2, case_timeout=240, node_tests=300)
    counts = rep["counts"]
    print(f"{CASES} cases, seed {SEED}: {counts}")
    assert sum(v for k, v in counts.items() if not k.startswith("oracle:")) == CASES
    # A difference only where a feed holds NaN/Inf is listed, not failed: there the order of IEEE operations
    # decides (onnxruntime multiplies an unused interpolation tap of weight 0 by inf and returns NaN where
    # the exact answer is the other tap; its MaxPool's NaN result depends on where the NaN sits). We keep
    # the exact answer (as issue 22 asks where onnxruntime is inexact); bench/fuzz.py counts these apart.
    non_finite = [f for f in rep["findings"] if f["outcome"] == "mismatch:non-finite feed"]
    for f in non_finite:
        print(f"listed: case {f['i']} on {f.get('seed')} {f.get('steps')}: {f.get('detail')}")
    findings = [f for f in rep["findings"] if f not in non_finite]
    assert not findings, "\n".join(
        f"case {f['i']} ({f['outcome']}) on {f.get('seed')} {f.get('steps')}: {f.get('detail')}" for f in findings
    )
    assert counts.get("ran", 0) > CASES // 5  # the mutations leave many runnable cases
