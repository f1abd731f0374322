"""CuPy's shim for the shared kernel set (``engineroom.providers.cpu.array_module``): what kernels written
against ``xp`` ask of CuPy beyond the NumPy API it mirrors. The provider registers it when it starts."""
from __future__ import annotations

from typing import Any

from engineroom.providers.cpu.array_module import ArrayModule


def cupy_arrays(cp: Any) -> ArrayModule:
    """The shim of the CuPy module ``cp``: device arrays (no host-only fast paths, no compiled loops),
    ``cupyx.scipy.special`` for erf/erfc/expit/ndtri."""
    return ArrayModule(cp, host=False, special="cupyx.scipy.special")
