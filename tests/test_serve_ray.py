"""engineroom on Ray: Ray Data's map_batches with SessionPredictor actors, and a Ray Serve deployment answering
the Open Inference Protocol over HTTP; results checked against a local engineroom run and onnxruntime."""
from __future__ import annotations

import http.client
import json
import os
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (ray missing)")
pytest.importorskip("ray.data", reason="the [ray] extra is not installed (ray[data] missing)")
pytest.importorskip("ray.serve", reason="the [ray] extra is not installed (ray[serve] missing)")
pytest.importorskip("starlette", reason="the [serve] extra is not installed (starlette missing)")

from serve_support import free_port, mlp_model  # noqa: E402

import engineroom  # noqa: E402
from engineroom.serve.ray import SessionPredictor, deployment  # noqa: E402


class PidPredictor(SessionPredictor):
    """Also says which actor process ran each row, to count the actors."""

    def __call__(self, batch):
        out = super().__call__(batch)
        out["pid"] = np.full(len(batch["id"]), os.getpid())
        return out


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # PidPredictor travels by value
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return mlp_model(str(tmp_path_factory.mktemp("ray") / "mlp.onnx"), layers=2)


def test_map_batches_two_actors_equals_local_run(local_ray, model):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the test oracle) is not installed")
    x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    ds = ray.data.from_items([{"id": i, "features": x[i]} for i in range(len(x))])
    out = ds.map_batches(PidPredictor, fn_constructor_kwargs={"model": model, "input_columns": {"x": "features"},
                                                              "keep_columns": True},
                         concurrency=2, batch_size=100, batch_format="numpy", num_cpus=1)
    rows = out.take_all()
    assert len(rows) == 2000
    ids = np.array([r["id"] for r in rows])
    y = np.stack([r["y"] for r in rows])[np.argsort(ids)]
    assert sorted(ids.tolist()) == list(range(2000))
    assert len({r["pid"] for r in rows}) == 2, "map_batches did not run on 2 actors"
    mine = engineroom.InferenceSession(model).run(None, {"x": x})[0]
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, mine, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


def test_serve_deployment_answers_http(local_ray, model):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (the test oracle) is not installed")
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(deployment(model, name="mlp", num_replicas=1, max_batch_size=8, max_queue_delay_microseconds=1000,
                         ray_actor_options={"num_cpus": 0.5}), route_prefix="/mlp", name="mlp")
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    c = http.client.HTTPConnection(f"127.0.0.1:{port}", timeout=60)
    c.request("POST", "/mlp", body=json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [3, 16], "data": x.ravel().tolist()}]}))
    r = c.getresponse()
    body = json.loads(r.read())
    assert r.status == 200, body
    out = body["outputs"][0]
    assert out["name"] == "y" and out["shape"] == [3, 32]
    y = np.array(out["data"], np.float32).reshape(3, 32)
    np.testing.assert_allclose(y, engineroom.InferenceSession(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, ort.InferenceSession(model).run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    c.request("POST", "/mlp", body=json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}))
    r = c.getresponse()
    body = json.loads(r.read())
    assert r.status == 400 and "shape [1, 3]" in body["error"]
    c.close()
