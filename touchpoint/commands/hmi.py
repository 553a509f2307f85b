"""``touchpoint hmi``: the reference HMI (:mod:`ui_bridge.reference.hmi_app`), a terminal UI.

Textual is an extra (``touchpoint[hmi]``): the daemon's install does not need it, and
this command says how to get it when it is missing.
"""

from __future__ import annotations

import argparse
import sys

from agent.cards import LOCALES
from touchpoint.extras import HMI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``touchpoint hmi``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--address", help="a D-Bus address, e.g. unix:path=/run/tp/bus")
    where.add_argument("--session", action="store_true", help="use the session bus")
    where.add_argument("--system", action="store_true", help="use the system bus (default)")
    parser.add_argument(
        "--locale", choices=LOCALES, help="set the display language (default: the agent's)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the HMI until the user quits."""
    missing = HMI.missing("touchpoint hmi")
    if missing is not None:
        print(missing, file=sys.stderr)
        return 1
    from ui_bridge.reference.hmi_app import run_app  # noqa: PLC0415 - Textual only here

    address = args.address or ("session" if args.session else "system")
    run_app(address, args.locale)
    return 0
