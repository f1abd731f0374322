"""The Open Inference Protocol server: a real `engineroom serve` process on free ports, called with tritonclient
(REST JSON, REST binary extension, gRPC), plain HTTP and Node.js; answers checked against a local engineroom run
and onnxruntime on the same models; dynamic batching checked through /metrics; bad requests answered with the
protocol's errors while the server keeps serving."""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

for _mod, _why in (("uvicorn", "uvicorn"), ("starlette", "starlette"), ("grpc", "grpcio"),
                   ("prometheus_client", "prometheus-client")):
    pytest.importorskip(_mod, reason=f"the [serve] extra is not installed ({_why} missing)")

from conftest import ZOO  # noqa: E402 - after the extra's skip
from serve_support import ServerProcess, mlp_model, two_input_model, write_config  # noqa: E402

import engineroom  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_CLIENT = os.path.join(HERE, "..", "examples", "serve", "client.mjs")
LIMIT = 1 << 20                      # --max-request-bytes of the test server
BATCH_DELAY_US = 300_000             # long enough that concurrent requests from threads meet in one batch
ZOO_SERVED = ("mobilenet_v2", "bert_mini")


def _ort():
    return pytest.importorskip("onnxruntime", reason="onnxruntime (the test oracle) is not installed")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("repository"))
    mlp_model(os.path.join(root, "mlp", "1", "model.onnx"))
    write_config(root, "mlp", {"max_batch_size": 8})
    mlp_model(os.path.join(root, "mlp_batched", "1", "model.onnx"))
    write_config(root, "mlp_batched", {"max_batch_size": 8, "dynamic_batching": {
        "preferred_batch_size": [8], "max_queue_delay_microseconds": BATCH_DELAY_US}})
    two_input_model(os.path.join(root, "two_in", "1", "model.onnx"), offset=0.0)
    two_input_model(os.path.join(root, "two_in", "2", "model.onnx"), offset=1.0)
    write_config(root, "two_in", {"version_policy": {"all": {}}, "instance_group": [{"count": 2}]})
    for name in ZOO_SERVED:
        src = os.path.join(ZOO, name + ".onnx")
        if os.path.exists(src):
            os.makedirs(os.path.join(root, name, "1"))
            os.symlink(src, os.path.join(root, name, "1", "model.onnx"))
    return root


@pytest.fixture(scope="module")
def server(repo):
    s = ServerProcess(repo, ["--max-request-bytes", str(LIMIT)])
    yield s
    s.stop()
    assert s.proc.returncode == 0, f"the server did not stop cleanly on SIGTERM:\n{s.log()}"


def _local(repo, name, feed, version="1"):
    path = os.path.join(repo, name, version, "model.onnx")
    mine = engineroom.InferenceSession(path).run(None, feed)
    ref = _ort().InferenceSession(os.path.realpath(path), providers=["CPUExecutionProvider"]).run(None, feed)
    return mine, ref


def _check(got: dict, mine, ref, names, rtol=1e-5, atol=1e-5):
    for n, m, r in zip(names, mine, ref):
        assert got[n].dtype == m.dtype and got[n].shape == m.shape, n
        np.testing.assert_array_equal(got[n], m, err_msg=f"{n}: the server differs from a local run")
        np.testing.assert_allclose(got[n], r, rtol=rtol, atol=atol, err_msg=f"{n}: the server differs from onnxruntime")


def _http(server, method, path, body=b"", headers=None):
    c = http.client.HTTPConnection(server.url, timeout=60)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def _clients(server):
    th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
    tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    return th, tg, th.InferenceServerClient(server.url), tg.InferenceServerClient(server.grpc_url)


def _infer(server, protocol, model, feed, version=""):
    """Infer through tritonclient: 'json' (REST, JSON data), 'binary' (REST binary extension) or 'grpc'."""
    th, tg, hc, gc = _clients(server)
    dt = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    if protocol == "grpc":
        inputs = []
        for n, a in feed.items():
            i = tg.InferInput(n, list(a.shape), dt[a.dtype])
            i.set_data_from_numpy(a)
            inputs.append(i)
        r = gc.infer(model, inputs, model_version=version)
        names = [o.name for o in r.get_response().outputs]
    else:
        binary = protocol == "binary"
        inputs = []
        for n, a in feed.items():
            i = th.InferInput(n, list(a.shape), dt[a.dtype])
            i.set_data_from_numpy(a, binary_data=binary)
            inputs.append(i)
        meta = hc.get_model_metadata(model)
        outputs = [th.InferRequestedOutput(o["name"], binary_data=binary) for o in meta["outputs"]]
        r = hc.infer(model, inputs, model_version=version, outputs=outputs)
        names = [o["name"] for o in r.get_response()["outputs"]]
    return {n: r.as_numpy(n) for n in names}


def test_health_and_server_metadata(server):
    th, tg, hc, gc = _clients(server)
    assert hc.is_server_live() and hc.is_server_ready()
    assert gc.is_server_live() and gc.is_server_ready()
    for md in (hc.get_server_metadata(), gc.get_server_metadata(as_json=True)):
        assert md["name"] == "engineroom" and md["version"] == engineroom.__version__
        assert "binary_tensor_data" in md["extensions"]


def test_model_metadata(server):
    th, tg, hc, gc = _clients(server)
    want = {"name": "two_in", "versions": ["1", "2"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 4]},
                       {"name": "b", "datatype": "INT64", "shape": [-1, 4]}],
            "outputs": [{"name": "sum", "datatype": "FP32", "shape": [-1, 4]},
                        {"name": "count", "datatype": "INT64", "shape": [-1]}]}
    assert hc.get_model_metadata("two_in") == want
    g = gc.get_model_metadata("two_in", as_json=True)
    # protobuf's JSON writes int64 as strings
    g = json.loads(json.dumps(g).replace('"-1"', "-1").replace('"4"', "4"))
    assert g == want
    assert hc.is_model_ready("two_in") and hc.is_model_ready("two_in", "1") and gc.is_model_ready("mlp")
    assert hc.get_model_metadata("mlp")["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]


@pytest.mark.parametrize("protocol", ["json", "binary", "grpc"])
def test_infer_two_models_matches_local_run_and_onnxruntime(server, repo, protocol):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    mine, ref = _local(repo, "mlp", {"x": x})
    _check(_infer(server, protocol, "mlp", {"x": x}), mine, ref, ["y"])
    feed = {"a": rng.standard_normal((5, 4)).astype(np.float32), "b": rng.integers(-3, 4, (5, 4)).astype(np.int64)}
    mine, ref = _local(repo, "two_in", feed, version="2")       # the newest version is the default
    _check(_infer(server, protocol, "two_in", feed), mine, ref, ["sum", "count"])


@pytest.mark.parametrize("protocol", ["binary", "grpc"])
@pytest.mark.parametrize("name", ZOO_SERVED)
def test_infer_zoo_models(server, repo, name, protocol):
    if not os.path.exists(os.path.join(repo, name)):
        pytest.skip(f"model zoo not found at {ZOO} (../shared/models beside the checkout)")
    import onnx

    z = np.load(os.path.join(ZOO, name + ".io.npz"))
    m = onnx.load(os.path.join(ZOO, name + ".onnx"), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in inits]
    feed = {n: z[f"in_{k}"] for k, n in enumerate(names)}
    mine, ref = _local(repo, name, feed)
    outs = [o.name for o in m.graph.output]
    _check(_infer(server, protocol, name, feed), mine, ref, outs, rtol=1e-3, atol=1e-4)


def test_explicit_version(server, repo):
    rng = np.random.default_rng(2)
    feed = {"a": rng.standard_normal((2, 4)).astype(np.float32), "b": rng.integers(0, 3, (2, 4)).astype(np.int64)}
    for protocol in ("json", "grpc"):
        v1 = _infer(server, protocol, "two_in", feed, version="1")
        mine, ref = _local(repo, "two_in", feed, version="1")
        _check(v1, mine, ref, ["sum", "count"])
        v2 = _infer(server, protocol, "two_in", feed, version="2")
        np.testing.assert_array_equal(v2["sum"], v1["sum"] + 1)


def test_grpc_typed_contents_with_the_checked_in_stubs(server, repo):
    """A client generated from core/serve/proto (as one in another language would be), sending typed contents."""
    import grpc

    from engineroom.serve.proto import grpc_predict_v2_pb2 as pb
    from engineroom.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc

    rng = np.random.default_rng(5)
    feed = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.integers(0, 9, (3, 4)).astype(np.int64)}
    mine, ref = _local(repo, "two_in", feed, version="1")
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        req = pb.ModelInferRequest(model_name="two_in", model_version="1", id="req-7")
        req.inputs.add(name="a", datatype="FP32", shape=[3, 4]).contents.fp32_contents.extend(feed["a"].ravel())
        req.inputs.add(name="b", datatype="INT64", shape=[3, 4]).contents.int64_contents.extend(feed["b"].ravel())
        req.outputs.add(name="count")
        resp = stub.ModelInfer(req)
        assert resp.id == "req-7" and resp.model_version == "1" and [o.name for o in resp.outputs] == ["count"]
        got = np.frombuffer(resp.raw_output_contents[0], np.int64).reshape(resp.outputs[0].shape)
        _check({"count": got}, mine[1:], ref[1:], ["count"])
        bad = pb.ModelInferRequest(model_name="two_in")
        bad.inputs.add(name="a", datatype="FP32", shape=[1, 4])
        bad.inputs.add(name="b", datatype="INT64", shape=[1, 4])
        bad.raw_input_contents.extend([bytes(12), bytes(32)])
        with pytest.raises(grpc.RpcError) as ei:
            stub.ModelInfer(bad)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "12 bytes of data" in ei.value.details()


def test_gzip_request_body(server, repo):
    import gzip

    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    body = gzip.compress(json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 16], "data": x.ravel().tolist()}]}).encode())
    status, body = _post(server, "/v2/models/mlp/infer", body=body, headers={"Content-Encoding": "gzip"})
    assert status == 200, body
    mine, ref = _local(repo, "mlp", {"x": x})
    y = np.array(body["outputs"][0]["data"], np.float32).reshape(2, 32)
    _check({"y": y}, mine, ref, ["y"])


def _post(server, path, doc=None, body=None, headers=None):
    if body is None:
        body = json.dumps(doc).encode()
    status, hdrs, data = _http(server, "POST", path, body, headers)
    return status, json.loads(data) if hdrs.get("content-type", "").startswith("application/json") else data


def _x_input(shape=(1, 16), name="x", datatype="FP32"):
    n = int(np.prod(shape))
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": [0.5] * n}


def test_bad_requests_get_protocol_errors_and_server_keeps_serving(server):
    cases = [
        ("/v2/models/nope/infer", {"inputs": [_x_input()]}, 404, "unknown model 'nope'"),
        ("/v2/models/mlp/versions/7/infer", {"inputs": [_x_input()]}, 404, "no version '7'"),
        ("/v2/models/mlp/infer", {"inputs": [_x_input(name="z")]}, 400, "no input named 'z'"),
        ("/v2/models/mlp/infer", {"inputs": [_x_input(datatype="INT64")]}, 400, "datatype INT64"),
        ("/v2/models/mlp/infer", {"inputs": [_x_input(shape=(1, 15))]}, 400, "shape [1, 15]"),
        ("/v2/models/mlp/infer", {"inputs": [_x_input(shape=(9, 16))]}, 400, "batch size 9"),
        ("/v2/models/mlp/infer", {"inputs": [dict(_x_input(), data=[1.0])]}, 400, "1 values in 'data'"),
        ("/v2/models/mlp/infer", {"inputs": [_x_input()], "outputs": [{"name": "q"}]}, 400, "no output named 'q'"),
        ("/v2/models/mlp/infer", {"inputs": [dict(_x_input(), datatype="FP99")]}, 400, "unknown datatype 'FP99'"),
    ]
    for path, doc, status, text in cases:
        got, body = _post(server, path, doc)
        assert got == status and text in body["error"], (path, doc, got, body)
    got, body = _post(server, "/v2/models/mlp/infer", body=b'{"inputs": [')
    assert got == 400 and "malformed JSON" in body["error"]
    got, body = _post(server, "/v2/models/mlp/infer", body=b" " * (LIMIT + 10))
    assert got == 400 and "over the server's limit" in body["error"]
    # binary extension: the header says the JSON is 40 bytes long / the payload is shorter than declared
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                   "parameters": {"binary_data_size": 64}}]}).encode()
    for blob, text in ((np.zeros(15, np.float32).tobytes(), "runs past"),
                       (np.zeros(17, np.float32).tobytes(), "add up to 64")):
        got, body = _post(server, "/v2/models/mlp/infer", body=head + blob,
                          headers={"Inference-Header-Content-Length": str(len(head))})
        assert got == 400 and text in body["error"], body
    got, body = _post(server, "/v2/models/mlp/infer", body=head + bytes(64),
                      headers={"Inference-Header-Content-Length": str(len(head) + 100)})
    assert got == 400 and "Inference-Header-Content-Length" in body["error"]
    status, _, data = _http(server, "GET", "/v2/models/nope")
    assert status == 404 and "unknown model" in json.loads(data)["error"]
    # gRPC: NOT_FOUND / INVALID_ARGUMENT naming what is wrong
    th, tg, hc, gc = _clients(server)
    import grpc

    x = np.zeros((1, 16), np.float32)
    for model, name, dtype, arr, code, text in (
            ("nope", "x", "FP32", x, grpc.StatusCode.NOT_FOUND, "unknown model"),
            ("mlp", "z", "FP32", x, grpc.StatusCode.INVALID_ARGUMENT, "no input named 'z'"),
            ("mlp", "x", "FP64", x.astype(np.float64), grpc.StatusCode.INVALID_ARGUMENT, "datatype FP64"),
            ("mlp", "x", "FP32", np.zeros((1, 3), np.float32), grpc.StatusCode.INVALID_ARGUMENT, "shape [1, 3]")):
        i = tg.InferInput(name, list(arr.shape), dtype)
        i.set_data_from_numpy(arr)
        with pytest.raises(Exception) as ei:
            gc.infer(model, [i])
        assert ei.value.status() == str(code) and text in ei.value.message(), ei.value
    with pytest.raises(Exception) as ei:
        gc.get_model_metadata("mlp", model_version="9")
    assert ei.value.status() == str(grpc.StatusCode.NOT_FOUND)
    # still serving
    got, body = _post(server, "/v2/models/mlp/infer", {"inputs": [_x_input()]})
    assert got == 200 and body["outputs"][0]["shape"] == [1, 32]


def _metric(text: str, name: str, model: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line:
            key = line.split("{")[0] + (re.search(r'le="([^"]+)"', line).group(1) if "le=" in line else "")
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_dynamic_batching_merges_concurrent_requests(server, repo):
    """16 concurrent 1-row requests (plus 4 bad ones) reach mlp_batched within its queue delay: they run as
    batches of up to 8 rows, each client gets its own row back, and each bad one its 400."""
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(16)]
    before = _metric(_http(server, "GET", "/metrics")[2].decode(), "engineroom_inference_batch_size", "mlp_batched")

    def good(x):
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]}
        return _post(server, "/v2/models/mlp_batched/infer", doc)

    def bad(k):
        return _post(server, "/v2/models/mlp_batched/infer", {"inputs": [_x_input(shape=(1, 8 + k))]})

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        goods = [ex.submit(good, x) for x in xs]
        bads = [ex.submit(bad, k) for k in range(4)]
        goods = [f.result() for f in goods]
        bads = [f.result() for f in bads]
    x_all = np.concatenate(xs)
    mine, ref = _local(repo, "mlp_batched", {"x": x_all})
    for k, (status, body) in enumerate(goods):
        assert status == 200, body
        y = np.array(body["outputs"][0]["data"], np.float32).reshape(body["outputs"][0]["shape"])
        np.testing.assert_allclose(y, mine[0][k:k + 1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, ref[0][k:k + 1], rtol=1e-5, atol=1e-5)
    for status, body in bads:
        assert status == 400 and "does not match" in body["error"]
    after = _metric(_http(server, "GET", "/metrics")[2].decode(), "engineroom_inference_batch_size", "mlp_batched")
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    runs, rows = d["engineroom_inference_batch_size_count"], d["engineroom_inference_batch_size_sum"]
    assert rows == 16, d
    assert runs < 16, f"16 concurrent requests ran as {runs} runs: nothing was batched ({d})"
    assert d["engineroom_inference_batch_size_bucket1.0"] < runs, d   # some run had more than one row


def test_metrics_count_requests_failures_latency_and_queue(server):
    _post(server, "/v2/models/mlp/infer", {"inputs": [_x_input()]})
    _post(server, "/v2/models/mlp/infer", {"inputs": [_x_input(name="z")]})
    status, hdrs, data = _http(server, "GET", "/metrics")
    text = data.decode()
    assert status == 200 and hdrs["content-type"].startswith("text/plain")
    m = _metric(text, "engineroom_inference", "mlp")
    assert m["engineroom_inference_requests_total"] >= 2
    assert m["engineroom_inference_failures_total"] >= 1
    assert m["engineroom_inference_request_duration_seconds_count"] >= 1
    assert m["engineroom_inference_queue_duration_seconds_count"] >= 1
    assert 'reason="bad_request"' in text


def test_nodejs_client(server, repo, tmp_path):
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed (Debian's nodejs)")
    if int(subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip("v\n").split(".")[0]) < 18:
        pytest.skip("node older than 18 has no built-in fetch")
    rng = np.random.default_rng(4)
    feed = {"a": rng.standard_normal((2, 4)).astype(np.float32), "b": rng.integers(0, 5, (2, 4)).astype(np.int64)}
    mine, ref = _local(repo, "two_in", feed, version="2")
    (tmp_path / "in.json").write_text(json.dumps({"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 4], "data": feed["a"].ravel().tolist()},
        {"name": "b", "datatype": "INT64", "shape": [2, 4], "data": feed["b"].ravel().tolist()}]}))
    (tmp_path / "want.json").write_text(json.dumps({"sum": ref[0].ravel().tolist(), "count": ref[1].tolist()}))
    r = subprocess.run([node, NODE_CLIENT, "--url", f"http://{server.url}", "--model", "two_in",
                        "--input", str(tmp_path / "in.json"), "--expect", str(tmp_path / "want.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "answer checked: ok" in r.stdout, r.stdout + r.stderr
    # and wrong expectations fail: the script really checks
    (tmp_path / "want.json").write_text(json.dumps({"sum": (ref[0].ravel() + 1).tolist()}))
    r = subprocess.run([node, NODE_CLIENT, "--url", f"http://{server.url}", "--model", "two_in",
                        "--input", str(tmp_path / "in.json"), "--expect", str(tmp_path / "want.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "differs" in r.stderr


def test_repository_config_errors_name_the_field(tmp_path):
    from engineroom.serve.errors import ConfigError
    from engineroom.serve.repository import scan

    mlp_model(str(tmp_path / "m" / "1" / "model.onnx"))
    for cfg, text in (({"max_batch_sise": 4}, "max_batch_sise"),
                      ({"dynamic_batching": {}}, "needs 'max_batch_size' >= 1"),
                      ({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [8]}},
                       "preferred_batch_size"),
                      ({"instance_group": [{"count": 2, "gpus": [0]}]}, "instance_group"),
                      ({"version_policy": {"specific": {"versions": [3]}}}, "version(s) [3]")):
        write_config(str(tmp_path), "m", cfg)
        with pytest.raises(ConfigError, match=re.escape(text)):
            scan(str(tmp_path))
    write_config(str(tmp_path), "m", {"max_batch_size": 4, "session_options": {"intra_op_threads": 1}})
    r = subprocess.run([os.sys.executable, "-m", "engineroom", "serve", "--model-repository", str(tmp_path),
                        "--http-port", "0", "--grpc-port", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "unknown session option 'intra_op_threads'" in r.stderr, r.stderr
