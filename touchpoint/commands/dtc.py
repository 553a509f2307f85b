"""``touchpoint dtc``: read the ECUs' stored DTCs over ISO-TP, now."""

from __future__ import annotations

import argparse
import sys

import can

from can_signals.diag_protocol import DiagnosticError, EcuAddress


def _ecu(text: str) -> EcuAddress:
    """``NAME:REQUEST:RESPONSE[:uds]``, ids in hex, e.g. ``engine:7E0:7E8``."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("obd", "uds")):
        raise argparse.ArgumentTypeError(f"expected NAME:REQUEST:RESPONSE[:obd|uds], got {text!r}")
    try:
        request, response = int(parts[1], 16), int(parts[2], 16)
        protocol = parts[3] if len(parts) == 4 else "obd"
        return EcuAddress(name=parts[0], request_id=request, response_id=response,
                          extended_id=max(request, response) > 0x7FF,
                          protocol=protocol)  # type: ignore[arg-type]  # fmt: skip
    except (ValueError, DiagnosticError) as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("--interface", required=True, help="python-can interface (socketcan, …)")
    parser.add_argument("--channel", required=True, help="the interface's channel, e.g. can0")
    parser.add_argument(
        "--ecu", type=_ecu, action="append", metavar="NAME:REQ:RESP[:uds]",
        help="an ECU to ask (default: the engine, engine:7E0:7E8, OBD service 03). Repeatable.",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per ECU (default 1)")


def run(args: argparse.Namespace) -> int:
    """Read and print the codes; 1 if an ECU did not answer, 2 if the bus cannot open."""
    from can_signals.obd import read_stored_dtcs_sync  # noqa: PLC0415 - only this command

    ecus = tuple(args.ecu or (EcuAddress(),))
    try:
        bus = can.Bus(interface=args.interface, channel=args.channel)
    except (can.CanError, OSError, ValueError, ImportError) as err:
        print(f"error: cannot open {args.interface} {args.channel}: {err}", file=sys.stderr)
        return 2
    try:
        result = read_stored_dtcs_sync(bus, ecus, ecu_timeout=args.timeout)
    except DiagnosticError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        bus.shutdown()
    for ecu in result.ecus:
        if ecu.ok:
            print(f"{ecu.ecu.name}: {' '.join(ecu.codes) or 'no stored DTCs'}")
        else:
            print(f"{ecu.ecu.name}: no answer ({ecu.error})")
    return 0 if result.complete else 1
