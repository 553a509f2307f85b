"""``touchpoint run``: the daemon."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Final

from touchpoint.logsetup import configure
from touchpoint.settings import ConfigError, DaemonSettings, load_settings

_log = logging.getLogger("touchpoint")

#: python-can interfaces that never speak TLS (``remote`` may: a ``wss://`` server).
PLAIN_CAN_INTERFACES: Final = frozenset({"socketcan", "virtual"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML settings (every setting can also come from TOUCHPOINT_* environment variables)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT; 2 for settings it cannot run with."""
    configure(args.log_level if args.log_level != "WARNING" else "INFO")
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        # The operator's file, not ours to guess at: stop, and say where (exit 2 keeps
        # systemd from restarting into the same error: RestartPreventExitStatus=2).
        _log.critical("cannot run with these settings:\n%s", err)
        print(f"touchpoint: cannot run with these settings:\n{err}", file=sys.stderr)
        return 2
    leave_out_tls(settings)
    import asyncio  # noqa: PLC0415 - after leave_out_tls: asyncio imports ssl

    from agent.errors import StoreError  # noqa: PLC0415
    from touchpoint.daemon import Daemon  # noqa: PLC0415 - after the settings are known good

    try:
        asyncio.run(Daemon(settings).run())
    except StoreError as err:
        _log.critical("cannot open the store: %s", err)
        return 1
    return 0


def uses_tls(settings: DaemonSettings) -> bool:
    """Whether anything these settings run may open a TLS connection.

    The cloud link does; so may a CAN bus on an interface not known to be plain. D-Bus
    and the store are local.
    """
    if settings.cloud is not None:
        return True
    buses = settings.can.buses if settings.can is not None else []
    return any(bus.interface not in PLAIN_CAN_INTERFACES for bus in buses)


def leave_out_tls(settings: DaemonSettings) -> None:
    """Keep ``ssl`` from loading in a daemon that will never use TLS.

    asyncio imports ``ssl`` in case a connection wants it, and with it OpenSSL's TLS
    library: 1.4 MB resident on a head unit (measured after a long drive without the
    cloud), against a 50 MB budget. asyncio, python-can and http.client each take
    ``ssl`` as optional; marking it absent (``None`` in ``sys.modules``) makes their
    ``import ssl`` fail cleanly instead of loading it. A daemon with ``[cloud]`` or a
    bus that may speak TLS loads it as before.
    """
    if not uses_tls(settings) and "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]
