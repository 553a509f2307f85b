"""``touchpoint doctor``: is this head unit set up to run the agent? OK, WARN or FAIL each.

Reads the settings as ``touchpoint run --config FILE`` does, then checks the store, the
CAN set-up, D-Bus and the cloud, printing each finding as it is made. Exit status 0 if
nothing failed, 1 otherwise. Read-only, apart from asking the bus for the agent's name
when nobody owns it (see :mod:`touchpoint.doctor.dbus_checks`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from touchpoint.doctor import Check, diagnose, exit_status
from touchpoint.doctor.report import render_check, tally


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "--config", type=Path, metavar="FILE",
        help="the daemon's TOML settings (TOUCHPOINT_* environment variables apply too)",
    )  # fmt: skip
    parser.add_argument(
        "--listen", type=float, default=0.0, metavar="S",
        help="listen S seconds on each live CAN bus for the frames the mapping reads",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=3.0, metavar="S",
        help="seconds to wait for the D-Bus daemon and the broker (default: 3)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="the findings as one JSON document")


def run(args: argparse.Namespace) -> int:
    """Run every check; 0 if none failed, 1 if any did, 2 for unusable options."""
    if args.listen < 0 or args.timeout <= 0:
        print("touchpoint doctor: --listen must be 0 or more, --timeout more than 0",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.json:
        checks = diagnose(args.config, listen=args.listen, timeout=args.timeout)
        document = {
            "config": None if args.config is None else str(args.config),
            "ok": exit_status(checks) == 0,
            "checks": [c.to_json() for c in checks],
        }
        print(json.dumps(document, ensure_ascii=False, indent=2))
        return exit_status(checks)
    print(f"touchpoint doctor: {args.config or 'no --config: defaults and the environment'}")
    if args.listen:
        print(f"(listening {args.listen:g} s on each live CAN bus)", flush=True)

    def show(check: Check) -> None:
        print(render_check(check), flush=True)

    checks = diagnose(args.config, listen=args.listen, timeout=args.timeout, progress=show)
    print(tally(checks))
    return exit_status(checks)
