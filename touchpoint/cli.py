"""The ``touchpoint`` command: one entry point, a subcommand per job.

Subcommands import their implementation only when run, so ``touchpoint run`` (the
daemon) does not pay for the simulator or the reference HMI.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Final

# subcommand: (module, help). Each module has `add_arguments(parser)` and `run(args) -> int`.
SUBCOMMANDS: Final[dict[str, tuple[str, str]]] = {
    "run": ("touchpoint.commands.run", "run the agent daemon"),
    "demo": ("touchpoint.commands.demo", "the whole loop: a simulated car through the real agent"),
    "signals": (
        "touchpoint.commands.signals",
        "decode CAN (live or a recorded log) to VSS signals",
    ),
    "dtc": ("touchpoint.commands.dtc", "read the ECUs' stored DTCs over ISO-TP"),
    "sim": ("touchpoint.commands.sim", "run the vehicle simulator on a CAN bus or into a log"),
    "hmi": (
        "touchpoint.commands.hmi",
        "the reference HMI: follow and tap the cards over D-Bus",
    ),
    "cloud-sim": (
        "touchpoint.commands.cloud_sim",
        "the reference cloud: consume events, answer, sign",
    ),
    "fleet-sim": (
        "touchpoint.commands.fleet_sim",
        "many simulated cars' cloud sync against one broker",
    ),
    "doctor": (
        "touchpoint.commands.doctor",
        "check a head unit's set-up: settings, D-Bus, CAN, cloud, store",
    ),
    "rules": (
        "touchpoint.commands.rules",
        "check rule documents against a car and the card policy before they ship",
    ),
    "explain": (
        "touchpoint.commands.explain",
        "why a card is there: its rule, trigger and facts, from the car's store",
    ),
    "outbox": ("touchpoint.commands.outbox", "what waits to be sent to the cloud, read-only"),
    "lab": (
        "touchpoint.commands.lab",
        "the pieces around the agent on loopback (D-Bus, CAN, broker, cloud), to run it yourself",
    ),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="touchpoint",
        description="touchpoint: in-car cards from CAN signals, synced with the OEM cloud.",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level for messages on stderr (default: WARNING)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if only in (None, name):
            importlib.import_module(module_name).add_arguments(sub)
        sub.set_defaults(module=module_name)
    return parser


def _chosen_subcommand(argv: Sequence[str]) -> str | None:
    # The first word that names a subcommand is it: the top-level options' values
    # (``--log-level INFO``) never do, and a subcommand's own come after it.
    if argv[:1] in (["-h"], ["--help"]):
        return None
    return next((word for word in argv if word in SUBCOMMANDS), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``touchpoint`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_chosen_subcommand(argv)).parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    run: Callable[[argparse.Namespace], int] = importlib.import_module(args.module).run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
