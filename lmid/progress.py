"""When long steps draw progress bars (tqdm)."""

from __future__ import annotations

import os
import sys


def progress_disabled() -> bool:
    """Progress bars off when not on a terminal (logs of cluster jobs) unless LMID_PROGRESS=1."""
    if os.environ.get("LMID_PROGRESS") == "1":
        return False
    return not sys.stderr.isatty()
