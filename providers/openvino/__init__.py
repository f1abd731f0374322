"""OpenVINOExecutionProvider: groups of ONNX nodes compiled by the ``openvino`` package.

The provider asks OpenVINO which nodes it can run (the ONNX frontend's partial conversion, then
``Core.query_model`` for the device), claims maximal cycle-free groups of them, and compiles each
group once per session into one callable. ``openvino`` itself is imported lazily: importing this
package costs nothing where it is not installed.
"""
from __future__ import annotations

from engineroom.providers.openvino.provider import OpenVINOExecutionProvider

__all__ = ["OpenVINOExecutionProvider"]
