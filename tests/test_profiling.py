"""SessionOptions.enable_profiling writes a Chrome-trace JSON in onnxruntime's layout; checked on bert_mini."""
from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
import pytest
from conftest import copies

import engineroom as ort

BERT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "models" / "bert_mini.onnx"   # ../shared/models


@pytest.fixture(scope="module")
def bert_profile(tmp_path_factory):
    if not BERT.exists():
        pytest.skip(f"the model zoo's bert_mini.onnx is absent ({BERT})")
    prefix = str(tmp_path_factory.mktemp("prof") / "bert")
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = prefix
    s = ort.InferenceSession(str(BERT), so, providers=["CPUExecutionProvider"])
    start_ns = s.get_profiling_start_time_ns()
    feed = {i.name: np.ones((2, 8), np.int64) for i in s.get_inputs()}
    runs = 3
    outs = [s.run(None, feed) for _ in range(runs)]
    path = s.end_profiling()
    return s, path, prefix, start_ns, runs, outs, feed


def test_profile_file_and_session_events(bert_profile):
    s, path, prefix, start_ns, runs, outs, feed = bert_profile
    assert re.fullmatch(re.escape(prefix) + r"_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{3}\.json", path), path
    assert abs(start_ns - __import__("time").time_ns()) < 3600e9
    assert s.end_profiling() == ""            # profiling has ended, as in onnxruntime
    events = json.loads(pathlib.Path(path).read_text())
    assert isinstance(events, list) and events
    for e in events:   # Chrome trace "complete" events, onnxruntime's keys
        assert set(e) == {"cat", "pid", "tid", "dur", "ts", "ph", "name", "args"}, e
        assert e["ph"] == "X" and e["pid"] == os.getpid()
        assert isinstance(e["ts"], int) and isinstance(e["dur"], int) and e["ts"] >= 0 and e["dur"] >= 0
    session = [e["name"] for e in events if e["cat"] == "Session"]
    assert session == ["model_loading_uri", "session_initialization"] + ["SequentialExecutor::Execute",
                                                                          "model_run"] * runs
    ts = [e["ts"] for e in events if e["cat"] == "Session"]
    assert ts[0] <= ts[1] <= ts[2]
    # a run after end_profiling is not recorded and still right
    np.testing.assert_array_equal(s.run(None, feed)[0], outs[0][0])
    assert json.loads(pathlib.Path(path).read_text()) == events


def test_profile_node_events_match_the_plan(bert_profile):
    s, path, _, _, runs, _, _ = bert_profile
    events = json.loads(pathlib.Path(path).read_text())
    nodes = [e for e in events if e["cat"] == "Node"]
    # one event per plan step per run: a step per node (nothing is compiled on the CPU provider) and per copy
    steps = sum(len(p.get_nodes()) for p in s.get_provider_graph_assignment_info()) + copies(s)
    assert len(nodes) == runs * steps
    runs_ev = [e for e in events if e["name"] == "model_run"]
    ops = {n.name: n.op_type for p in s.get_provider_graph_assignment_info() for n in p.get_nodes()}
    for k, run in enumerate(runs_ev):
        inside = [e for e in nodes if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]]
        assert len(inside) == steps, f"run {k}: {len(inside)} node events for {steps} steps"
        assert [int(e["args"]["node_index"]) for e in inside] == list(range(steps))
        assert all(a["ts"] <= b["ts"] for a, b in zip(inside, inside[1:]))
    for e in nodes:
        a = e["args"]
        assert e["name"].endswith("_kernel_time")
        assert a["provider"] == "CPUExecutionProvider"
        name = e["name"][: -len("_kernel_time")]
        if name in ops:
            assert a["op_name"] == ops[name]
        else:
            assert a["op_name"] in ("MemcpyFromHost", "MemcpyToHost", "Memcpy"), e
        for shapes in (a["input_type_shape"], a["output_type_shape"]):
            for d in shapes:
                (ty, dims), = d.items()
                assert isinstance(ty, str) and all(isinstance(x, int) for x in dims)
        assert int(a["output_size"]) >= 0 and int(a["activation_size"]) >= 0
    # the node events cover the graph's ops with the shapes of this feed: the embedding Gather gives (2, 8, 256)
    gathers = [e for e in nodes[:steps] if e["args"]["op_name"] == "Gather"]
    assert any(d == {"float": [2, 8, 256]} for e in gathers for d in e["args"]["output_type_shape"])


def test_onnxruntime_reads_the_same_names(bert_profile, tmp_path):
    """onnxruntime's own profile of bert_mini has the same kinds of events, and its node events name the same
    op types (engineroom's after its own fusions)."""
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime (the layout's reference) is not installed")
    s, path, *_ = bert_profile
    so = onnxruntime.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "ort")
    rs = onnxruntime.InferenceSession(str(BERT), so, providers=["CPUExecutionProvider"])
    rs.run(None, {i.name: np.ones((2, 8), np.int64) for i in rs.get_inputs()})
    theirs = json.loads(pathlib.Path(rs.end_profiling()).read_text())
    ours = json.loads(pathlib.Path(path).read_text())
    assert {e["cat"] for e in theirs} == {e["cat"] for e in ours}
    assert {e["name"] for e in theirs if e["cat"] == "Session"} == {e["name"] for e in ours if e["cat"] == "Session"}
    their_node_keys = set().union(*(e["args"] for e in theirs if e["cat"] == "Node"))
    our_node_keys = set().union(*(e["args"] for e in ours if e["cat"] == "Node"))
    assert our_node_keys <= their_node_keys


def test_profiling_off_writes_nothing(tmp_path):
    if not BERT.exists():
        pytest.skip(f"the model zoo's bert_mini.onnx is absent ({BERT})")
    so = ort.SessionOptions()
    so.profile_file_prefix = str(tmp_path / "never")
    s = ort.InferenceSession(str(BERT), so)
    s.run(None, {i.name: np.ones((1, 4), np.int64) for i in s.get_inputs()})
    assert s.end_profiling() == "" and s.get_profiling_start_time_ns() == 0
    assert not list(tmp_path.iterdir())
