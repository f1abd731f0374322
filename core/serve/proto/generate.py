"""Regenerates the checked-in gRPC stubs from grpc_predict_v2.proto with grpcio-tools.

usage: python core/serve/proto/generate.py

The stubs are checked in so that the ``[serve]`` extra needs only grpcio at run time. Two edits follow
protoc: the service stub's ``import grpc_predict_v2_pb2`` is made package-relative (the stubs import as
``engineroom.serve.proto``), and the messages are built in a private descriptor pool rather than
protobuf's default one, where Triton's ``grpc_service.proto`` (imported by ``tritonclient.grpc``) defines
the same ``inference.*`` names: with the default pool the two could not be imported in one process.
"""
from __future__ import annotations

import os
import sys


def main() -> int:
    from grpc_tools import protoc

    here = os.path.dirname(os.path.abspath(__file__))
    rc = protoc.main(["grpc_tools.protoc", f"-I{here}", f"--python_out={here}", f"--pyi_out={here}",
                      f"--grpc_python_out={here}", os.path.join(here, "grpc_predict_v2.proto")])
    if rc:
        return rc
    _edit(os.path.join(here, "grpc_predict_v2_pb2_grpc.py"),
          "import grpc_predict_v2_pb2 as", "from engineroom.serve.proto import grpc_predict_v2_pb2 as")
    _edit(os.path.join(here, "grpc_predict_v2_pb2.py"), "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
          "_POOL = _descriptor_pool.DescriptorPool()  # private: see core/serve/proto/generate.py\n"
          "DESCRIPTOR = _POOL.AddSerializedFile(")
    return 0


def _edit(path: str, old: str, new: str) -> None:
    with open(path) as f:
        text = f.read()
    if text.count(old) != 1:
        raise SystemExit(f"{path}: expected one {old!r} in protoc's output")
    with open(path, "w") as f:
        f.write(text.replace(old, new))


if __name__ == "__main__":
    sys.exit(main())
