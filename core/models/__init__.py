"""Models the project builds itself, deterministically (fixed seeds, no downloads): the CLI's default
model and the text-generation decoders. Each builder writes an ordinary ``.onnx`` file under the cache
folder (``ENGINEROOM_CACHE_DIR``, else ``~/.cache/engineroom``) the first time it is asked for."""
from __future__ import annotations

import os
from pathlib import Path


def cache_folder() -> Path:
    """Where built models are kept: ``ENGINEROOM_CACHE_DIR/models`` (default ``~/.cache/engineroom/models``)."""
    root = os.environ.get("ENGINEROOM_CACHE_DIR") or \
        os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "engineroom")
    return Path(root) / "models"


def default_model_path() -> str:
    """The CLI's default model: MobileNetV2 (1.0, 224x224, 1000 classes) with seeded random weights,
    built on first use (about a second) and reused after."""
    from engineroom.models.mobilenet import ensure_mobilenet_v2

    return str(ensure_mobilenet_v2(cache_folder()))
