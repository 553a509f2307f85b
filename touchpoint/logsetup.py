"""Logging to stderr in a form journald reads well.

Under systemd (``$JOURNAL_STREAM`` set), each line starts with the syslog priority in
angle brackets (``<4>``), which journald turns into the entry's priority, and carries no
timestamp (journald adds its own). Elsewhere: a timestamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

_PRIORITIES: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``."""

    def format(self, record: logging.LogRecord) -> str:
        """Format with the syslog priority prefix."""
        priority = _PRIORITIES.get(record.levelno, 6)
        text = super().format(record)
        # Multi-line messages (tracebacks) keep the priority on every line.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def configure(level: str = "INFO") -> None:
    """Send the root logger's records to stderr, in the journal's form under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
