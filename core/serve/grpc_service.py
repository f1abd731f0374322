"""The Open Inference Protocol's ``GRPCInferenceService`` on grpcio's asyncio server.

Inputs come as typed ``contents`` or as ``raw_input_contents``; outputs always go back as
``raw_output_contents`` (what Triton does, and the only form FP16 has in the protocol).
"""
from __future__ import annotations

import grpc

from engineroom.serve import tensors
from engineroom.serve.errors import BadRequest, ServeError
from engineroom.serve.proto import grpc_predict_v2_pb2 as pb
from engineroom.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from engineroom.serve.registry import ModelRegistry


async def _abort(context, e: ServeError):
    await context.abort(getattr(grpc.StatusCode, e.grpc_code), str(e))


def _decode_inputs(request) -> dict:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    arrays = {}
    for i, t in enumerate(request.inputs):
        if t.name in arrays:
            raise BadRequest(f"input '{t.name}' is given twice")
        if t.parameters:
            raise BadRequest(f"input '{t.name}': parameter(s) {', '.join(sorted(t.parameters))} are not supported")
        if raw:
            if t.HasField("contents"):
                raise BadRequest(f"input '{t.name}' has both contents and raw_input_contents")
            arrays[t.name] = tensors.from_bytes(t.name, t.datatype, t.shape, raw[i])
            continue
        field = tensors.CONTENTS_FIELD.get(t.datatype)
        if field is None:
            tensors.np_dtype(t.datatype)          # an unknown name is reported as such
            raise BadRequest(f"input '{t.name}': {t.datatype} travels only in raw_input_contents")
        data = getattr(t.contents, field)
        arrays[t.name] = tensors.from_json(t.name, t.datatype, t.shape, list(data))
    return arrays


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.registry.ready)

    async def ModelReady(self, request, context):
        try:
            return pb.ModelReadyResponse(ready=self.registry.model_ready(request.name, request.version))
        except ServeError as e:
            await _abort(context, e)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**self.registry.server_metadata())

    async def ModelMetadata(self, request, context):
        try:
            md = self.registry.model_metadata(request.name, request.version)
        except ServeError as e:
            await _abort(context, e)
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=md["name"], versions=md["versions"], platform=md["platform"],
            inputs=[T(**t) for t in md["inputs"]], outputs=[T(**t) for t in md["outputs"]])

    async def ModelInfer(self, request, context):
        def decode(model):
            if request.parameters:
                raise BadRequest(f"request parameter(s) {', '.join(sorted(request.parameters))} are not supported")
            for o in request.outputs:
                if o.parameters:
                    raise BadRequest(f"output '{o.name}': parameters are not supported")
            return _decode_inputs(request), [o.name for o in request.outputs]

        try:
            m, names, outs = await self.registry.infer("grpc", request.model_name, request.model_version, decode)
        except ServeError as e:
            await _abort(context, e)
        resp = pb.ModelInferResponse(model_name=m.name, model_version=m.version, id=request.id)
        for n, a in zip(names, outs):
            resp.outputs.add(name=n, datatype=tensors.datatype_of_array(a), shape=list(a.shape))
            resp.raw_output_contents.append(tensors.to_bytes(a))
        return resp


def build_server(registry: ModelRegistry, address: str, max_request_bytes: int) -> tuple[grpc.aio.Server, int]:
    """The asyncio gRPC server bound to ``address``; returns it with the bound port."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_request_bytes),
                                      ("grpc.max_send_message_length", -1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(registry), server)
    port = server.add_insecure_port(address)
    return server, port
