"""Image decoding: ImageDecoder (Pillow, on the host; an optional extra, imported when a model needs it)."""
from __future__ import annotations

import io

import numpy as np

from engineroom.providers.cpu.registry import kernel


@kernel("ImageDecoder", since=20)
def image_decoder(encoded_stream, *, xp, pixel_format="RGB"):
    # Pillow is an optional extra (engineroom[image]); import it only when a model needs it.
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise RuntimeError("ImageDecoder needs Pillow: pip install engineroom[image]") from e
    channels = 1 if pixel_format == "Grayscale" else 3
    data = np.asarray(encoded_stream, dtype=np.uint8).tobytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - the spec asks for an empty result on any decoding failure
        return xp.zeros((0, 0, channels), dtype=np.uint8)
    if channels == 1:
        arr = arr[..., None]
    elif pixel_format == "BGR":
        arr = arr[..., ::-1]
    return xp.asarray(np.ascontiguousarray(arr))
