"""A private ``dbus-daemon``: for the demo, the tests and the benchmarks.

It listens on a unix socket in a directory of its own and allows everything (a session
bus's policy), or runs with the configuration given. Nothing here touches the
machine's system or session bus.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from ui_bridge.errors import BridgeError

#: A session bus's configuration; ``{listen}`` is the address to listen on.
SESSION_CONFIG: Final = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>{listen}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">{any_user}
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class PrivateBusError(BridgeError):
    """The dbus-daemon is not installed or did not start."""


def start_dbus_daemon(
    config: Path, *, preexec_fn: Callable[[], None] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``dbus-daemon`` with ``config``; return it and the address it listens on.

    Args:
        config: The configuration file.
        preexec_fn: Run in the child before ``dbus-daemon`` starts (see :mod:`subprocess`).

    Raises:
        PrivateBusError: If ``dbus-daemon`` is missing or exits without an address.
    """
    binary = shutil.which("dbus-daemon")
    if binary is None:
        raise PrivateBusError("dbus-daemon is not installed (Debian package: dbus-daemon)")
    log = config.with_suffix(".log")  # a file, not a pipe nobody reads that could fill
    with log.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(  # noqa: S603 - our argv, no shell
            [binary, f"--config-file={config}", "--nofork", "--print-address"],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - given only by a single-threaded caller
        )  # fmt: skip
    assert process.stdout is not None
    address = process.stdout.readline().strip()
    if not address:
        stop_dbus_daemon(process)
        why = log.read_text(encoding="utf-8").strip() or "no message"
        raise PrivateBusError(f"dbus-daemon did not start with {config}: {why}")
    return process, address


def stop_dbus_daemon(process: subprocess.Popen[str]) -> None:
    """Stop a daemon from :func:`start_dbus_daemon` and close its pipes."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


#: Lets every local user connect, not only the bus's owner: for a development bus that
#: processes of other users (a daemon run as its own user, a root shell) share.
ANY_USER: Final = """
    <allow user="*"/>"""


def session_config(listen: str, *, any_user: bool = False) -> str:
    """A session bus's configuration listening on ``listen`` (``unix:path=...``).

    Args:
        listen: The address to listen on.
        any_user: Let every local user connect (development only); by default only
            the bus's owner may, as on a session bus.
    """
    return SESSION_CONFIG.format(listen=listen, any_user=ANY_USER if any_user else "")


@contextlib.contextmanager
def private_bus(config_text: str | None = None) -> Iterator[str]:
    """A running private bus for the block; yields its address.

    Args:
        config_text: A configuration with ``{directory}`` where the bus's directory
            goes; by default a session bus listening in that directory.
    """
    directory = Path(tempfile.mkdtemp(prefix="tp-dbus-"))
    try:
        text = (
            session_config(f"unix:dir={directory}")
            if config_text is None
            else config_text.format(directory=directory)
        )
        config = directory / "bus.conf"
        config.write_text(text, encoding="utf-8")
        process, address = start_dbus_daemon(config)
        try:
            yield address
        finally:
            stop_dbus_daemon(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
