"""Regenerates the checked-in gRPC stubs from grpc_predict_v2.proto with grpcio-tools.

usage: python core/serve/proto/generate.py

The stubs are checked in so that the ``[serve]`` extra needs only grpcio at run time; protoc writes
``import grpc_predict_v2_pb2`` in the service stub, which is made package-relative here so the stubs
import as ``engineroom.serve.proto``.
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
    stub = os.path.join(here, "grpc_predict_v2_pb2_grpc.py")
    with open(stub) as f:
        text = f.read()
    text = text.replace("import grpc_predict_v2_pb2 as", "from engineroom.serve.proto import grpc_predict_v2_pb2 as")
    with open(stub, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
