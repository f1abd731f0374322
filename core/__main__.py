"""``python -m engineroom`` runs the command line."""
from __future__ import annotations

import sys

from engineroom.cli import main

sys.exit(main())
