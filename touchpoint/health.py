"""The daemon's health file: what its loops and parts are doing, for ``touchpoint doctor``.

The running daemon writes ``health.json`` beside its database (atomically, mode 0600)
on every watchdog round and whenever a loop crashes: each supervised loop's state,
crashes and last error, the loops found stuck, the parts that are off and why, and its
status line. The doctor, a separate process, reads it; a file older than
:data:`STALE_AFTER_S` says the daemon is not running (or not writing).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from touchpoint.tasks import LoopRecord

_log = logging.getLogger(__name__)

FILE_NAME: Final = "health.json"
#: Older than this, the health file is not the word of a running daemon.
STALE_AFTER_S: Final = 120.0


class HealthFile:
    """Where the daemon writes its health."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._complained = False

    @classmethod
    def beside(cls, database: Path) -> HealthFile:
        """The health file in the database's directory."""
        return cls(database.parent / FILE_NAME)

    def write(
        self,
        loops: Mapping[str, LoopRecord],
        *,
        stalled: Sequence[str],
        status: str,
        wall: float,
        problems: Mapping[str, str | None],
        counters: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """Replace the file; a failure (a full or read-only disk) is logged once.

        ``counters`` are a part's figures by part (``dbus``: the bridge's reconnections
        and what its per-peer limits refused).
        """
        document = {
            "written_at": wall,
            "pid": os.getpid(),
            "status": status,
            "loops": {name: record.as_json() for name, record in sorted(loops.items())},
            "stalled": list(stalled),
            "problems": {k: v for k, v in problems.items() if v},
            "counters": {part: dict(figures) for part, figures in (counters or {}).items()},
        }
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=1)
            temporary.replace(self.path)
        except OSError as err:
            if not self._complained:
                _log.warning("cannot write the health file %s: %s", self.path, err)
                self._complained = True
        else:
            self._complained = False


@dataclass(frozen=True)
class Health:
    """A health file as the doctor reads it."""

    written_at: float
    status: str
    loops: Mapping[str, Mapping[str, Any]]
    stalled: Sequence[str]
    problems: Mapping[str, str]
    counters: Mapping[str, Mapping[str, int]]


def read_health(path: Path) -> Health | None:
    """The health file at ``path``, or ``None`` when there is none or it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Health(
            written_at=float(data["written_at"]),
            status=str(data.get("status", "")),
            loops=dict(data.get("loops", {})),
            stalled=list(data.get("stalled", [])),
            problems={str(k): str(v) for k, v in dict(data.get("problems", {})).items()},
            counters={
                str(part): {str(k): int(v) for k, v in dict(figures).items()}
                for part, figures in dict(data.get("counters", {})).items()
            },
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cloud_problem_text(err: BaseException, settings: Any) -> str:
    """Why the cloud link cannot start, naming the file and the fix."""
    files = ", ".join(
        str(p) for p in (settings.ca_file, settings.cert_file, settings.key_file) if p is not None
    )
    import ssl  # noqa: PLC0415 - only with [cloud]: a daemon without leaves ssl out

    if isinstance(err, ssl.SSLError):
        return (
            f"the TLS files ({files}) are not a usable CA, certificate and key: {err}; "
            "fix: install the car's provisioned certificate and its key (touchpoint doctor "
            "checks them)"
        )
    if isinstance(err, OSError):
        name = err.filename or files
        return (
            f"cannot read {name}: {err.strerror or err}; fix: install the file and make it "
            "readable by the touchpoint user (touchpoint doctor checks it)"
        )
    return f"{err}; fix: correct [cloud] in the configuration (touchpoint doctor checks it)"
