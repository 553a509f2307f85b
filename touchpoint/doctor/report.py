"""The doctor's findings: one line each, OK, WARN or FAIL, with a fix for the last two."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

_log = logging.getLogger(__name__)


class Status(StrEnum):
    """How a check came out."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One finding.

    Attributes:
        name: What was checked (``store``, ``dbus.name``, ``tls.cert``, ...).
        status: OK, WARN (works, but not as a car should) or FAIL (does not work).
        message: What was found, on one line.
        fix: What to do about it, on one line (WARN and FAIL).
    """

    name: str
    status: Status
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "name": self.name,
            "status": self.status.value,
            "message": self.message,
            "fix": self.fix,
        }


def ok(name: str, message: str) -> Check:
    """A check that passed."""
    return Check(name, Status.OK, message)


def warn(name: str, message: str, fix: str) -> Check:
    """Works, but not as it should on a car."""
    return Check(name, Status.WARN, message, fix)


def fail(name: str, message: str, fix: str) -> Check:
    """Does not work."""
    return Check(name, Status.FAIL, message, fix)


def guarded(name: str, check: Callable[[], Iterable[Check]]) -> list[Check]:
    """Run a check; whatever it raises becomes a FAIL of its own, never a crash.

    Each check catches the errors it expects and explains them; this is the net for
    what nobody expected (a broken file of a kind no check foresaw, a library's bug).
    """
    found: list[Check] = []
    try:
        found.extend(check())  # what a generator yielded before it raised is kept
    except Exception as err:  # noqa: BLE001 - the doctor must report, never crash
        _log.debug("check %s raised", name, exc_info=True)
        found.append(
            fail(
                name,
                f"the check could not finish: {type(err).__name__}: {err}",
                "fix what the message names; if it makes no sense, report it with "
                "`touchpoint --log-level DEBUG doctor` output",
            )
        )
    return found


def exit_status(checks: Sequence[Check]) -> int:
    """0 if nothing failed, 1 otherwise."""
    return 1 if any(c.status is Status.FAIL for c in checks) else 0


#: The name column's width, so that findings printed one by one line up.
NAME_WIDTH: Final = 16


def render_check(check: Check, width: int = NAME_WIDTH) -> str:
    """One finding: status, name, message; the fix on the next line (no final newline)."""
    line = f"{check.status.value:<4}  {check.name:<{width}}  {check.message}"
    if check.fix and check.status is not Status.OK:
        line += f"\n{'':<4}  {'':<{width}}  fix: {check.fix}"
    return line


def tally(checks: Sequence[Check]) -> str:
    """``9 OK, 2 WARN, 1 FAIL``."""
    return ", ".join(f"{sum(1 for c in checks if c.status is s)} {s.value}" for s in Status)


def shorten(items: Sequence[str], limit: int = 3) -> str:
    """The first ``limit`` items joined by ``; ``, and how many more there are."""
    shown = "; ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}; and {len(items) - limit} more"
