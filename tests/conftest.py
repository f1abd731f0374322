"""Shared fixtures: the test providers registered as a plugin, and the model zoo's location."""
from __future__ import annotations

import os
import sys

import pytest

# Tests must know which kernel path runs: compiled loops are built in the foreground here, not in the
# background as for a user's first command (providers/cpu/compiled/jit.py).
os.environ.setdefault("ENGINEROOM_JIT", "wait")

HERE = os.path.dirname(os.path.abspath(__file__))
ZOO = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "models"))
ZOO_MODELS = ["resnet18", "mobilenet_v2", "bert_mini", "gpt2_tiny", "vae_decoder"]

_ENTRY_POINTS = """[engineroom.providers]
AddMulExecutionProvider = fake_providers:AddMulExecutionProvider
NegExecutionProvider = fake_providers:NegExecutionProvider
BrokenExecutionProvider = fake_providers:BrokenExecutionProvider
OldSdkExecutionProvider = fake_providers:OldSdkExecutionProvider
MissingExecutionProvider = fake_providers_missing_module:Nothing
"""


@pytest.fixture(scope="session")
def test_plugins(tmp_path_factory):
    """Register tests/plugins/fake_providers.py through an entry point, as an installed wheel would."""
    from engineroom import discovery

    site = tmp_path_factory.mktemp("site")
    dist = site / "engineroom_test_plugins-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: engineroom-test-plugins\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(_ENTRY_POINTS)
    sys.path.insert(0, str(site))
    sys.path.insert(0, os.path.join(HERE, "plugins"))
    discovery.refresh()
    yield
    sys.path.remove(str(site))
    sys.path.remove(os.path.join(HERE, "plugins"))
    discovery.refresh()


def zoo_path(name: str) -> str:
    path = os.path.join(ZOO, name + ".onnx")
    if not os.path.exists(path):
        pytest.skip(f"model zoo not found at {ZOO} (../shared/models beside the checkout)")
    return path


def run_zoo(name: str, providers=None, **kw):
    """Run zoo model ``name`` on its io.npz inputs: (session, outputs, PyTorch's outputs)."""
    import numpy as np

    import engineroom as ort

    path = zoo_path(name)
    z = np.load(path[:-5] + ".io.npz")
    s = ort.InferenceSession(path, providers=providers, **kw)
    feed = {a.name: z[f"in_{k}"] for k, a in enumerate(s.get_inputs())}
    outs = s.run(None, feed)
    refs = [z[f"out_{k}"] for k in range(len(outs)) if f"out_{k}" in z]
    return s, outs, refs


def assert_matches_pytorch(name: str, outs, refs, rel: float) -> None:
    """Every output has PyTorch's shape and dtype, and max abs error <= rel * max |reference|."""
    import numpy as np

    assert refs, f"{name}.io.npz has no reference outputs"
    for k, (out, ref) in enumerate(zip(outs, refs)):
        assert out.shape == ref.shape and out.dtype == ref.dtype
        err = float(np.max(np.abs(out.astype(np.float64) - ref)))
        assert err <= rel * float(np.max(np.abs(ref))), f"{name} output {k}: max abs error {err:.3g}"
