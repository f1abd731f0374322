"""The Open Inference Protocol's REST API on Starlette, with Triton's binary tensor data extension.

Binary extension: a request whose ``Inference-Header-Content-Length`` header is N carries its JSON in
the first N bytes of the body and, after it, the raw data of each input whose ``parameters`` hold
``binary_data_size``, in the order of ``inputs``. Outputs asked for with ``"binary_data": true`` (or
every output, with the request parameter ``"binary_data_output": true``) come back the same way.
"""
from __future__ import annotations

import json
import zlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engineroom.serve import tensors
from engineroom.serve.errors import BadRequest, ServeError
from engineroom.serve.registry import ModelRegistry

HEADER_LENGTH = "inference-header-content-length"
_REQUEST_PARAMS = {"binary_data_output"}
_OUTPUT_PARAMS = {"binary_data"}
_INPUT_PARAMS = {"binary_data_size"}


def _error(e: ServeError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, status_code=e.http_status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes (before or after gzip/deflate decoding)."""
    chunks, size = [], 0
    # An oversized body is read to its end and dropped (never kept) so that the client, still sending,
    # gets the error answer rather than a reset connection.
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        else:
            chunks.clear()
    if size > limit:
        raise BadRequest(f"request body of {size} bytes is over the server's limit of {limit} bytes")
    body = b"".join(chunks)
    enc = request.headers.get("content-encoding", "identity").lower()
    if enc in ("gzip", "deflate"):
        d = zlib.decompressobj(zlib.MAX_WBITS | 16 if enc == "gzip" else zlib.MAX_WBITS)
        try:
            body = d.decompress(body, limit + 1)
        except zlib.error as e:
            raise BadRequest(f"the {enc} body does not decode: {e}") from None
        if len(body) > limit:
            raise BadRequest(f"the decoded request body is over the server's limit of {limit} bytes")
    elif enc != "identity":
        raise BadRequest(f"Content-Encoding {enc!r} is not supported (gzip, deflate)")
    return body


def _params(obj: dict, allowed: set, where: str) -> dict:
    p = obj.get("parameters", {})
    if not isinstance(p, dict):
        raise BadRequest(f"{where}: 'parameters' must be an object")
    bad = sorted(set(p) - allowed)
    if bad:
        raise BadRequest(f"{where}: parameter(s) {', '.join(bad)} are not supported here")
    return p


def parse_infer_request(body: bytes, header_length: str | None):
    """Split and check a REST infer body: ``(doc, inputs-decoder, output names, binary flags)``."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
        if n < 0 or n > len(body):
            raise BadRequest(f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes")
        head, binary = body[:n], memoryview(body)[n:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON in the request: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise BadRequest("the request must be a JSON object with an 'inputs' list")
    params = _params(doc, _REQUEST_PARAMS, "request")
    all_binary = bool(params.get("binary_data_output", False))
    arrays = {}
    offset = 0
    for i, t in enumerate(doc["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise BadRequest(f"inputs[{i}] must be an object with a 'name'")
        name = t["name"]
        if not isinstance(t.get("datatype"), str) or not isinstance(t.get("shape"), list):
            raise BadRequest(f"input '{name}' needs a 'datatype' string and a 'shape' list")
        if name in arrays:
            raise BadRequest(f"input '{name}' is given twice")
        p = _params(t, _INPUT_PARAMS, f"input '{name}'")
        if "binary_data_size" in p:
            size = p["binary_data_size"]
            if not isinstance(size, int) or size < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise BadRequest(f"input '{name}': binary_data_size {size} runs past the {len(binary)} binary "
                                 f"bytes after the JSON header (from offset {offset})")
            if "data" in t:
                raise BadRequest(f"input '{name}' has both 'data' and binary_data_size")
            arrays[name] = tensors.from_bytes(name, t["datatype"], t["shape"], binary[offset:offset + size])
            offset += size
        elif "data" in t:
            arrays[name] = tensors.from_json(name, t["datatype"], t["shape"], t["data"])
        else:
            raise BadRequest(f"input '{name}' has neither 'data' nor binary_data_size")
    if offset != len(binary):
        raise BadRequest(f"the body has {len(binary)} binary bytes after the JSON header but the inputs' "
                         f"binary_data_size add up to {offset}")
    outputs, binary_out = [], {}
    req_outputs = doc.get("outputs", [])
    if not isinstance(req_outputs, list):
        raise BadRequest("'outputs' must be a list")
    for i, o in enumerate(req_outputs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest(f"outputs[{i}] must be an object with a 'name'")
        p = _params(o, _OUTPUT_PARAMS, f"output '{o['name']}'")
        outputs.append(o["name"])
        binary_out[o["name"]] = bool(p.get("binary_data", all_binary))
    return doc, arrays, outputs, binary_out, all_binary


def encode_infer_response(model, doc: dict, names, outs, binary_out: dict, all_binary: bool) -> Response:
    result = {"model_name": model.name, "model_version": model.version, "outputs": []}
    if isinstance(doc.get("id"), str):
        result["id"] = doc["id"]
    blobs = []
    for n, a in zip(names, outs):
        t = {"name": n, "datatype": tensors.datatype_of_array(a), "shape": list(a.shape)}
        if binary_out.get(n, all_binary):
            b = tensors.to_bytes(a)
            t["parameters"] = {"binary_data_size": len(b)}
            blobs.append(b)
        else:
            t["data"] = tensors.to_json_data(a)
        result["outputs"].append(t)
    head = json.dumps(result, separators=(",", ":")).encode()
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(b"".join([head, *blobs]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def build_app(registry: ModelRegistry, metrics=None, max_request_bytes: int = 64 << 20) -> Starlette:
    async def live(request: Request):
        return JSONResponse({"live": True})

    async def ready(request: Request):
        ok = registry.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(request: Request):
        return JSONResponse(registry.server_metadata())

    async def model_metadata(request: Request):
        try:
            p = request.path_params
            return JSONResponse(registry.model_metadata(p["name"], p.get("version", "")))
        except ServeError as e:
            return _error(e)

    async def model_ready(request: Request):
        try:
            p = request.path_params
            ok = registry.model_ready(p["name"], p.get("version", ""))
            return JSONResponse({"name": p["name"], "ready": ok}, status_code=200 if ok else 503)
        except ServeError as e:
            return _error(e)

    async def infer(request: Request):
        p = request.path_params
        parsed = {}

        def decode(model):
            doc, arrays, outputs, binary_out, all_binary = parse_infer_request(
                parsed["body"], request.headers.get(HEADER_LENGTH))
            parsed.update(doc=doc, binary_out=binary_out, all_binary=all_binary)
            return arrays, outputs

        async def read():
            parsed["body"] = await read_body(request, max_request_bytes)

        try:
            m, names, outs = await registry.infer("http", p["name"], p.get("version", ""), decode, read)
            return encode_infer_response(m, parsed["doc"], names, outs, parsed["binary_out"], parsed["all_binary"])
        except ServeError as e:
            return _error(e)

    async def metrics_text(request: Request):
        if metrics is None:
            return JSONResponse({"error": "metrics are off"}, status_code=404)
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/metrics", metrics_text, methods=["GET"]),
    ]
    return Starlette(routes=routes)
