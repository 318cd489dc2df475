"""How a user-facing error ends: one clear line, for the CLI and the DVC stages alike."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_reporting(label: str, job: Callable[[], int | None], debug: bool = False) -> int:
    """Run ``job``; a user-facing error (bad input, missing file) ends in one clear line,
    ``LABEL: error: MESSAGE``, and exit code 1 instead of a traceback (``debug`` re-raises).
    Used by the CLI and by the DVC stage entry points."""
    try:
        return int(job() or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        if debug:
            raise
        print(f"{label}: error: {e}", file=sys.stderr)
        return 1
