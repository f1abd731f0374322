"""The user's view from DESIGN.md, verbatim but for the import and the model path: prints (1, 1000)."""
import numpy as np

import engineroom as ort  # same names as onnxruntime

x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession("../shared/models/resnet18.onnx", so,
        providers=[("OpenCLExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"])
out = s.run(None, {s.get_inputs()[0].name: x})
print(s.get_providers())                   # what is really in use, in priority order
print(s.get_provider_graph_assignment_info())  # ORT's name: subgraphs, each with .ep_name and .get_nodes()
print(out[0].shape)
