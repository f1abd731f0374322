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
    assert not rep["findings"], "\n".join(
        f"case {f['i']} ({f['outcome']}) on {f.get('seed')} {f.get('steps')}: {f.get('detail')}"
        for f in rep["findings"]
    )
    assert counts.get("ran", 0) > CASES // 5  # the mutations leave many runnable cases
