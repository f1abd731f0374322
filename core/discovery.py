"""Finds execution providers through the ``engineroom.providers`` entry-point group: the SDK's
``engineroom.plugin_sdk.discovery`` (one module, one cache of what was found), named here for the core."""
from __future__ import annotations

from engineroom.plugin_sdk.discovery import (  # noqa: F401 - re-exported: the core's name for it
    available_provider_names,
    is_available,
    load_failure,
    provider_class,
    provider_names,
    refresh,
    unavailable_reason,
)
