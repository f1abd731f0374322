"""The fuzzer's long run: >= 10,000 seeded cases over the node tests' models, the small graphs of
tests/fuzz and the zoo, in worker processes with a time limit each; counts by outcome and the findings.

    python bench/fuzz.py [--cases 10000] [--seed 19] [--workers 2] [--json report.json]
    python bench/fuzz.py --seed 19 --case 1234      # replay one case in this process, with its details

A finding is a crash (the worker died on a signal), a hang (past --timeout), an exception that is not
one of engineroom's, or a result that differs from onnxruntime's where onnxruntime runs the same case.
Not a timed benchmark: no ratio to onnxruntime is printed (onnxruntime is the oracle of each case).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fuzz"))

import fuzzing  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a case may take before it is a hang")
    ap.add_argument("--node-tests", type=int, default=None, help="node-test seeds to use (default: all)")
    ap.add_argument("--zoo", default="vae_decoder,mobilenet_v2", help="zoo models among the seeds")
    ap.add_argument("--mem-gib", type=float, default=6.0, help="address-space limit of each worker")
    ap.add_argument("--case", type=int, default=None, help="replay this one case here and print it")
    ap.add_argument("--json", default=None, help="write counts and findings here")
    a = ap.parse_args()
    zoo = [z for z in a.zoo.split(",") if z]
    if a.case is not None:
        corpus = fuzzing.load_corpus(a.node_tests, zoo)
        case = fuzzing.make_case(corpus, a.seed, a.case)
        print(f"case {a.case} of seed {a.seed}: {case.seed_name}; {case.steps}")
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(fuzzing.run_case(case, tmp), indent=1, default=str))
        return 0
    t0 = time.time()
    done = [0]

    def progress(res):
        done[0] += 1
        if done[0] % 500 == 0:
            print(f"  {done[0]} cases, {time.time() - t0:.0f} s", flush=True)

    rep = fuzzing.fuzz(a.cases, a.seed, a.workers, a.timeout, a.node_tests, zoo, a.mem_gib, progress)
    print(f"{a.cases} cases, seed {a.seed}, {a.workers} workers, {time.time() - t0:.0f} s")
    for k, v in rep["counts"].items():
        print(f"  {k:40s} {v}")
    print(f"findings: {len(rep['findings'])}")
    for f in rep["findings"]:
        print(f"  case {f['i']}: {f['outcome']} on {f.get('seed')} {f.get('steps')}: {str(f.get('detail'))[-400:]}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rep, fh, indent=1, default=str)
    return 1 if rep["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
