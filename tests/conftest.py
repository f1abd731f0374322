"""Shared fixtures: the test providers registered as a plugin, and the model zoo's location."""
from __future__ import annotations

import os
import sys

import pytest

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
