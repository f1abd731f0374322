#!/usr/bin/env python3
"""Calling `engineroom serve` from Python with Triton's client library (pip install "tritonclient[http,grpc]").

usage: python examples/serve/client.py [--http 127.0.0.1:8000] [--grpc 127.0.0.1:8001] [--model NAME]

Reads the model's metadata, feeds random values to every input (free dims as 1) and infers three ways:
REST with JSON data, REST with the binary tensor data extension, and gRPC; prints each output's shape and
whether the three answers agree.
"""
from __future__ import annotations

import argparse

import numpy as np

_NP = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
       "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--http", default="127.0.0.1:8000")
    p.add_argument("--grpc", default="127.0.0.1:8001")
    p.add_argument("--model", default="mlp")
    args = p.parse_args()
    import tritonclient.grpc as tg
    import tritonclient.http as th

    hc, gc = th.InferenceServerClient(args.http), tg.InferenceServerClient(args.grpc)
    print("server:", hc.get_server_metadata())
    meta = hc.get_model_metadata(args.model)
    rng = np.random.default_rng(0)
    feed = {t["name"]: (rng.standard_normal([d if d > 0 else 1 for d in t["shape"]]) * 3).astype(_NP[t["datatype"]])
            for t in meta["inputs"]}
    answers = {}
    for how in ("json", "binary", "grpc"):
        lib = tg if how == "grpc" else th
        inputs = []
        for t in meta["inputs"]:
            i = lib.InferInput(t["name"], list(feed[t["name"]].shape), t["datatype"])
            if how == "grpc":
                i.set_data_from_numpy(feed[t["name"]])
            else:
                i.set_data_from_numpy(feed[t["name"]], binary_data=how == "binary")
            inputs.append(i)
        if how == "grpc":
            r = gc.infer(args.model, inputs)
        else:
            outs = [th.InferRequestedOutput(o["name"], binary_data=how == "binary") for o in meta["outputs"]]
            r = hc.infer(args.model, inputs, outputs=outs)
        answers[how] = {o["name"]: r.as_numpy(o["name"]) for o in meta["outputs"]}
    for o in meta["outputs"]:
        a = [answers[h][o["name"]] for h in answers]
        same = all(np.array_equal(a[0], b) for b in a[1:])
        print(f"{o['name']}: {o['datatype']} {list(a[0].shape)}; REST JSON, REST binary and gRPC agree: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
