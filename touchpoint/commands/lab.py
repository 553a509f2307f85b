"""``touchpoint lab``: the pieces around the agent, for running it yourself (:mod:`touchpoint.lab`).

It starts a private D-Bus bus, a shared CAN bus, a development PKI, Mosquitto and the
reference cloud on loopback, writes ``DIR/touchpoint.toml`` and then ``DIR/env``, prints
``ready`` and the commands that start the agent, the HMI and the simulator against
them, and runs until Ctrl-C, SIGTERM or SIGHUP, when it stops everything it started.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Final, TextIO

from touchpoint.errors import TouchpointError
from touchpoint.lab import Lab, LabInfo

DEFAULT_DIR: Final = Path("touchpoint-lab")
#: How often the lab looks whether a service stopped on its own.
WATCH_S: Final = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, metavar="DIR",
        help=f"where the lab keeps its files: the configuration, env, the store, the PKI, "
        f"every service's log (default: ./{DEFAULT_DIR})",
    )  # fmt: skip
    parser.add_argument(
        "--booking", choices=["confirm", "decline", "delay"], default="confirm",
        help="how the cloud answers booking requests (default: confirm)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the lab until Ctrl-C or SIGTERM: 0 then, 1 if a service failed."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # SIGHUP too: a closed terminal would otherwise end the lab without its cleanup,
    # and mosquitto and dbus-daemon take SIGHUP as "reload", not "stop".
    stopping = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in stopping}
    lab = Lab(args.dir, booking=args.booking, should_stop=stop.is_set)
    try:
        try:
            info = lab.start()
        except (TouchpointError, OSError) as err:  # a service missing or failing at start
            print(f"touchpoint lab: {err}", file=sys.stderr)
            return 0 if stop.is_set() else 1
        print_ready(info, sys.stdout)
        while not stop.wait(WATCH_S):
            failure = lab.exited()
            if failure is not None:
                print(f"touchpoint lab: {failure}\nstopping the lab", file=sys.stderr)
                return 1
        print("touchpoint lab: stopping", flush=True)
        return 0
    finally:
        lab.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def print_ready(info: LabInfo, out: TextIO) -> None:
    """Where everything is, ``ready``, and the commands to run against the lab."""
    out.write(
        f"touchpoint lab in {info.directory}, on loopback only (development only):\n"
        f"  D-Bus     {info.dbus_address} (any local peer may connect)\n"
        f"  CAN       {info.can_interface} {info.can_channel} (python-can-remote, shared)\n"
        f"  MQTT      Mosquitto 127.0.0.1:{info.broker_port} (cars), :{info.cloud_port} "
        f"(cloud), mutual TLS and the per-vehicle ACL\n"
        f"  cloud     touchpoint cloud-sim; what it receives: {info.directory}/cloud-sim.log\n"
        f"  settings  {info.config}\n"
        f"  env       {info.env} (source it: {', '.join(info.environment())})\n"
        "ready\n"
        "Start the pieces, each in a terminal of its own:\n"
    )
    out.writelines(f"  # {what}\n  {command}\n" for what, command in info.commands().items())
    out.write("Ctrl-C (or SIGTERM) stops the lab.\n")
    out.flush()
