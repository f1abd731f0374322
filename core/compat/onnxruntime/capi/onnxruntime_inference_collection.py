"""``onnxruntime.capi.onnxruntime_inference_collection``: the Python-level classes onnxruntime defines there."""
from engineroom import IOBinding, OrtDevice, OrtValue  # noqa: F401
from engineroom.session import InferenceSession  # noqa: F401

Session = InferenceSession   # onnxruntime's base class of InferenceSession
