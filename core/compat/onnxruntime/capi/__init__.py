"""``onnxruntime.capi`` as engineroom presents it: the binding modules code imports classes and exceptions from."""
from engineroom.compat.onnxruntime.capi import (
    _pybind_state,  # noqa: F401
    onnxruntime_inference_collection,  # noqa: F401
    onnxruntime_pybind11_state,  # noqa: F401
)
