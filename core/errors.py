"""engineroom's error kinds (``engineroom.errors``): the classes are defined in the plugin SDK
(``engineroom.plugin_sdk.errors``), so that providers, which import only the SDK, raise the very
classes the core raises and users catch."""
from __future__ import annotations

from engineroom.plugin_sdk.errors import *  # noqa: F403 - re-exported: this is the public module
from engineroom.plugin_sdk.errors import __all__  # noqa: F401 - the same names
