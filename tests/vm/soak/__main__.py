"""``python -m tests.vm.soak``: the network-fault soak, then the power-loss loop, in the VM.

Prints a summary of both; exits 0 only if every check held. ``--only net|power`` runs
one of them; ``--scale`` shortens (or lengthens) the net soak's phases (1.0: the
tunnel lasts 90 s); ``--kills`` sets the number of power cuts (at least 30 for the
issue's count). ``--keep DIR`` keeps the logs, the store's disk image and the
observer's files there.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.vm.image import PrepareError, prepare
from tests.vm.machine import Machine, accelerator
from tests.vm.soak.powerloss import PROJECT, run_loop, summary


def _compile() -> None:
    # The guest reads the project's bytecode from the host: write it here, once.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0",
         *(str(PROJECT / p) for p in ("can_signals", "agent", "ui_bridge", "cloud_sync",
                                      "touchpoint", "tests"))],
        check=False, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def net_summary(result: dict[str, Any], status: int) -> list[str]:
    """The lines for the net soak."""
    lines = ["network faults (netem on the broker's port, inside the VM):"]
    lines.append(f"  {'phase':<24} {'fault':<46} {'wall s':>7} {'cpu s':>6} {'cpu %':>6} "
                 f"{'events':>6} {'cloud':>6}")  # fmt: skip
    for p in result["phases"]:
        lines.append(f"  {p['name']:<24} {p['fault']:<46} {p['wall_s']:>7.0f} "
                     f"{p['cpu_s']:>6.1f} {p['cpu_pct'] or 0:>6.1f} {p['committed']:>6} "
                     f"{p['at_cloud']:>6}")  # fmt: skip
        lines += [f"      {note}" for note in p["notes"]]
    b = result["backoff"]
    lines.append(
        f"  reconnect back-off: {b['failed_attempts']} failed attempts, {b['connections']} "
        f"connections, {b['drops']} drops; gap between attempts max {b['max_gap_s']} s, mean "
        f"{b['mean_gap_s']} s (bound {b['bound_s']} s): {'bounded' if b['bounded'] else 'NOT'}"
    )
    lines += [f"    {line}" for line in result["reconnects"]]
    r = result["requests"]
    lines.append("  requests: " + ", ".join(f"{k} {v}" for k, v in r.items()))
    lines.append(
        f"  cloud: {result['committed']} events committed, {result['at_cloud']} at the cloud, "
        f"{result['missing_count']} missing, {result['handed_on_more_than_once']} handed on "
        "more than once"
    )
    lines.append(
        "  checks: " + ", ".join(f"{n} x {k}" for k, n in sorted(result["checks"].items()))
    )
    for violation in result["violations"][:20]:
        lines.append(f"  VIOLATION {violation}")
    lines += [f"  missing: {e}" for e in result["missing_at_cloud"][:10]]
    lines.append(f"  result: {'every check held' if status == 0 else 'FAILED'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.vm.soak", description=__doc__)
    parser.add_argument("--only", choices=("net", "power"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"vcan soak: seed {seed}", flush=True)
    accel = accelerator()
    if accel is None:
        print("vcan soak: QEMU is not installed (apt-get install qemu-system-x86)")
        return 3
    try:
        image = prepare()
    except PrepareError as err:
        print(f"vcan soak: {err}")
        return 3
    _compile()
    lines: list[str] = []
    status = 0
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="touchpoint-vsoak-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        python = str(PROJECT / ".venv" / "bin" / "python")
        if args.only in (None, "net"):
            share = work / "net"
            share.mkdir(exist_ok=True)
            machine = Machine(image=image, accel=accel, writable=[share])
            print(f"vcan soak: network faults (scale {args.scale}) ...", flush=True)
            with (work / "net-guest.log").open("wb") as log:
                ran = machine.run(
                    [python, "-m", "tests.vm.soak.guest", "net", str(share / "result.json"),
                     "--scale", str(args.scale), "--seed", str(seed)],
                    cwd=PROJECT, stdout=log, stderr=log, timeout=3600,
                )  # fmt: skip
            result_file = share / "result.json"
            if result_file.exists():
                lines += net_summary(json.loads(result_file.read_text()), ran.returncode)
            else:
                lines.append(f"network faults: no result (status {ran.returncode}); the guest's "
                             f"log ends:")  # fmt: skip
                tail = (work / "net-guest.log").read_text(errors="replace").splitlines()[-30:]
                lines += [f"  {line}" for line in tail]
            status |= ran.returncode != 0
        if args.only in (None, "power"):
            machine = Machine(image=image, accel=accel)
            print(f"vcan soak: power loss ({args.kills} cuts) ...", flush=True)
            result = run_loop(machine, work / "power", args.kills, seed, sys.stdout)
            lines += summary(result, args.kills)
            status |= not result.ok or result.cuts < args.kills
        print(f"\n=== make vcan-soak: {time.monotonic() - began:.0f} s, seed {seed}, "
              f"accel {accel} ===")  # fmt: skip
        for line in lines:
            print(line)
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
