"""``touchpoint cloud-sim``: the reference cloud (:mod:`cloud_sync.reference.cloud_sim`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from cloud_sync.contract import WireEvent
from cloud_sync.reference.cloud_sim import GROUP, CloudSim, Dedup, Endpoint
from cloud_sync.signing import SigningKey

DEV_KEY_ID = "dev"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options."""
    parser.add_argument("--broker", default="127.0.0.1:8884", metavar="HOST:PORT",
                        help="the broker's cloud listener (default: 127.0.0.1:8884)")  # fmt: skip
    parser.add_argument("--ca", type=Path, help="CA certificate the broker's must chain to")
    parser.add_argument("--cert", type=Path, help="the cloud's client certificate (CN cloud)")
    parser.add_argument("--key", type=Path, help="its private key")
    parser.add_argument("--plain-user", metavar="NAME",
                        help="no TLS: log in on a plain loopback listener as NAME")  # fmt: skip
    parser.add_argument("--signing-key", type=Path, default=Path("cloud-dev-signing.key"),
                        help="the development Ed25519 key, created if missing")  # fmt: skip
    parser.add_argument("--booking", choices=["confirm", "decline", "delay"], default="confirm",
                        help="how booking requests are answered (default: confirm)")  # fmt: skip
    parser.add_argument("--booking-delay", type=float, default=5.0, metavar="S",
                        help="with --booking delay: seconds before confirming")  # fmt: skip
    parser.add_argument("--dedup-db", type=Path,
                        help="an SQLite file of event ids shared by several instances")  # fmt: skip
    parser.add_argument("--instance", default="1", help="this instance's name")
    parser.add_argument("--group", default=GROUP,
                        help="the shared-subscription group the instances share")  # fmt: skip
    parser.add_argument("--no-documents", action="store_true",
                        help="do not publish documents to cars that come online")  # fmt: skip
    parser.add_argument("--print", dest="show", action="store_true",
                        help="print every event received")  # fmt: skip
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument(
        "--stop-rule", action="append", default=[], metavar="RULE_ID",
        help="the kill switch: a signed stop document for this rule on every car that comes "
        "online (repeatable; a later run without it lifts the stop)",
    )  # fmt: skip


def signing_key(path: Path) -> SigningKey:
    """The development key in ``path``, made (mode 0600) if there is none."""
    if path.exists():
        return SigningKey.from_base64(DEV_KEY_ID, path.read_text(encoding="ascii").strip())
    key = SigningKey.generate(DEV_KEY_ID)
    path.touch(mode=0o600)
    path.write_text(key.private_base64() + "\n", encoding="ascii")
    return key


def host_port(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (the last colon splits, so ``::1:8883`` works); ``None`` if malformed."""
    host, _, port = str(text).rpartition(":")
    return (host, int(port)) if host and port.isdigit() else None


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (or ``--duration``); print the counts."""
    address = host_port(args.broker)
    if address is None:
        print(f"--broker must be HOST:PORT, not {args.broker!r}", file=sys.stderr)
        return 2
    host, port = address
    if args.plain_user is None and None in (args.ca, args.cert, args.key):
        print("give --ca, --cert and --key (mutual TLS), or --plain-user", file=sys.stderr)
        return 2
    endpoint = Endpoint(
        host, port,
        ca_file=None if args.plain_user else args.ca,
        cert_file=None if args.plain_user else args.cert,
        key_file=None if args.plain_user else args.key,
        username=args.plain_user,
    )  # fmt: skip
    key = signing_key(args.signing_key)
    print(f"signing key {key.key_id}: public {key.public_base64()}", flush=True)

    def show(vehicle_id: str, event: WireEvent) -> None:
        print(f"{vehicle_id} {event.type} {event.id} {event.payload}", flush=True)

    dedup = Dedup(args.dedup_db)
    sim = CloudSim(
        endpoint, key, instance=args.instance, booking=args.booking,
        booking_delay_s=args.booking_delay, dedup=dedup, documents=not args.no_documents,
        on_event=show if args.show else None, group=args.group,
    )  # fmt: skip
    sim.stopped_rules = list(args.stop_rule)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        sim.start()
    except (OSError, TimeoutError) as err:
        print(f"cloud-sim: {err}", file=sys.stderr)
        return 1
    print(f"cloud-sim {args.instance} consuming from {host}:{port}", flush=True)
    began = time.monotonic()
    try:
        while not stop.wait(1.0):
            if args.duration is not None and time.monotonic() - began >= args.duration:
                break
    finally:
        sim.stop()
        dedup.close()
    stats = sim.snapshot()
    print(f"events {stats.events}, duplicates dropped {stats.duplicates}, "
          f"requests {stats.requests}, answered {stats.answered}, malformed {stats.malformed}, "
          f"vehicles {len(stats.by_vehicle)}, latency p50 {_seconds(stats.latency_p50_s)} "
          f"p99 {_seconds(stats.latency_p99_s)}")  # fmt: skip
    for kind, count in sorted(stats.by_type.items()):
        print(f"  {kind:28} {count}")
    return 0
