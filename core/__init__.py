"""engineroom: an ONNX inference engine with the onnxruntime Python API."""
