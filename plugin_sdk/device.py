"""Where a value lives: a device type and an index, as providers and the partitioner see it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """A device a provider computes on. ``type`` is lower-case ("cpu", "cuda", "opencl", ...)."""

    type: str
    id: int = 0

    @property
    def is_host(self) -> bool:
        return self.type == "cpu"

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


CPU = Device("cpu", 0)
