"""``touchpoint run``: the daemon."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from touchpoint.logsetup import configure
from touchpoint.settings import ConfigError, load_settings

_log = logging.getLogger("touchpoint")


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
    from agent.errors import StoreError  # noqa: PLC0415
    from touchpoint.daemon import Daemon  # noqa: PLC0415 - after the settings are known good

    try:
        asyncio.run(Daemon(settings).run())
    except StoreError as err:
        _log.critical("cannot open the store: %s", err)
        return 1
    return 0
