"""MobileNetV2 (Sandler et al., 2018) written with ``onnx.helper``: the architecture as inference
exports have it (batch norms folded into the convolutions, ReLU6 as Clip, opset 18), with weights
drawn from a fixed seed. It is the model ``python -m engineroom run`` runs when given none: a real
CNN of 3.5 M parameters (14 MB) that the project builds itself instead of carrying or downloading."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

FILE_NAME = "mobilenet_v2_seed0.onnx"
# (expansion t, output channels c, repeats n, first stride s), from the paper's table 2
_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))


def build_mobilenet_v2(seed: int = 0, num_classes: int = 1000):
    """The model proto; the same bytes for the same seed."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def conv(x: str, cin: int, cout: int, k: int, stride: int, groups: int = 1, relu6: bool = True) -> str:
        n = name("conv")
        fan_in = cin // groups * k * k
        # He init scaled down a little so activations neither vanish nor saturate ReLU6 through 52 convs
        w = (rng.standard_normal((cout, cin // groups, k, k)) * np.sqrt(1.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{n}.weight"), numpy_helper.from_array(b, f"{n}.bias")])
        out = f"{n}.out"
        nodes.append(helper.make_node("Conv", [x, f"{n}.weight", f"{n}.bias"], [out], name=n, group=groups,
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if not relu6:
            return out
        nodes.append(helper.make_node("Clip", [out, "relu6.min", "relu6.max"], [f"{n}.relu6"], name=f"{n}_relu6"))
        return f"{n}.relu6"

    inits.extend([numpy_helper.from_array(np.array(0.0, np.float32), "relu6.min"),
                  numpy_helper.from_array(np.array(6.0, np.float32), "relu6.max")])
    x, cin = conv("input", 3, 32, 3, 2), 32
    for t, c, n, s in _BLOCKS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = conv(x, cin, hidden, 1, 1) if t != 1 else x
            h = conv(h, hidden, hidden, 3, stride, groups=hidden)
            h = conv(h, hidden, c, 1, 1, relu6=False)
            if stride == 1 and cin == c:
                out = name("add")
                nodes.append(helper.make_node("Add", [x, h], [out], name=out))
                h = out
            x, cin = h, c
    x = conv(x, cin, 1280, 1, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
    w = (rng.standard_normal((num_classes, 1280)) * np.sqrt(1.0 / 1280)).astype(np.float32)
    inits.extend([numpy_helper.from_array(w, "classifier.weight"),
                  numpy_helper.from_array(np.zeros(num_classes, np.float32), "classifier.bias")])
    nodes.append(helper.make_node("Gemm", ["features", "classifier.weight", "classifier.bias"], ["logits"],
                                  name="classifier", transB=1))
    graph = helper.make_graph(
        nodes, "mobilenet_v2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="engineroom",
                              doc_string=f"MobileNetV2 1.0 224, random weights (seed {seed}), built by "
                                         "engineroom.models.mobilenet")
    model.ir_version = 8
    return model


def ensure_mobilenet_v2(folder: Path) -> Path:
    """The model's file in ``folder``, written there first if absent (atomically: concurrent callers
    never see half a file)."""
    path = Path(folder) / FILE_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        data = build_mobilenet_v2().SerializeToString()
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)        # mkstemp makes it private; it is an ordinary shared cache file
        os.replace(tmp, path)
    return path


if __name__ == "__main__":      # python -m engineroom.models.mobilenet [FOLDER]: build and print the path
    import sys

    from engineroom.models import cache_folder

    print(ensure_mobilenet_v2(Path(sys.argv[1]) if len(sys.argv) > 1 else cache_folder()))
