"""The benchmarks' subprocesses: stopping them, reading their memory and their logs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Final

from bench.installed import clean_environment

#: ``/proc/PID/status`` reports these in kB (KiB).
_KIB: Final = 1024
MIB: Final = 1024 * 1024


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a daemon commits and closes its store), SIGKILL if it hangs."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def status_bytes(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon`` and ``RssFile`` of ``pid`` in bytes (empty if gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return {}
    figures = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            figures[key] = int(value.split()[0]) * _KIB
    return figures


def wait_for_text(
    path: Path, text: str, process: subprocess.Popen[bytes], timeout: float, poll: float = 0.005
) -> bool:
    """Wait until ``text`` is in the file ``path`` (a process's output); False if the
    process ended or ``timeout`` passed first."""
    deadline = time.monotonic() + timeout
    while True:
        if text in read(path):
            return True
        if process.poll() is not None or time.monotonic() > deadline:
            return text in read(path)
        time.sleep(poll)


def read(path: Path) -> str:
    """A log's text so far ('' before it exists)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def tail(path: Path, lines: int = 20) -> str:
    """The end of a log, for an error message."""
    return "\n".join(read(path).splitlines()[-lines:])


def daemon_environment(notify: Path | None = None) -> dict[str, str]:
    """The environment a measured ``touchpoint run`` gets: nothing of a developer's
    ``TOUCHPOINT_*`` settings, systemd variables or journal, ``$NOTIFY_SOCKET`` if given."""
    env = {
        k: v
        for k, v in clean_environment().items()
        if not k.startswith(("WATCHDOG_", "NOTIFY_", "TOUCHPOINT_"))
    }
    env.pop("JOURNAL_STREAM", None)  # plain log lines, which the benchmarks parse
    if notify is not None:
        env["NOTIFY_SOCKET"] = str(notify)
    return env
