"""``python -m tests.vm prepare|shell|run CMD...``: the test VM from the command line.

``prepare`` downloads and builds what the VM needs (once; cached). ``shell`` opens an
interactive shell inside a fresh guest, in the project with its ``.venv`` first on PATH
and vcan0 up; the project directory is shared read-write, the rest of the host read-only
(writes elsewhere vanish at power-off). ``run`` runs one command and exits with its status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tests.vm.image import PrepareError, cache_dir, prepare
from tests.vm.machine import NO_STATUS, Machine, accelerator

PROJECT = Path(__file__).resolve().parents[2]


def _machine(vcans: int, writable: list[Path]) -> Machine:
    accel = accelerator()
    if accel is None:
        raise PrepareError("QEMU is not installed: as root, apt-get install qemu-system-x86")
    steps: list[str] = []
    image = prepare(steps)
    for step in steps:
        print(f"vcan vm: {step}", file=sys.stderr)
    return Machine(image=image, accel=accel, vcans=vcans, writable=writable)


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit status of the command run in the guest."""
    parser = argparse.ArgumentParser(prog="python -m tests.vm", description=__doc__)
    parser.add_argument("--vcans", type=int, default=1, help="vcan interfaces up at start")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="download and build the VM (cached)")
    sub.add_parser("shell", help="an interactive shell in the VM")
    run = sub.add_parser("run", help="run a command in the VM")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.action == "prepare":
            steps: list[str] = []
            image = prepare(steps)
            for step in steps:
                print(f"vcan vm: {step}")
            print(f"vcan vm: ready in {cache_dir()} (kernel {image.version})")
            return 0
        if args.action == "shell":
            machine = _machine(args.vcans, [PROJECT])
            env = dict(os.environ)
            env["PATH"] = f"{PROJECT / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
            env.setdefault("TERM", "linux")
            if sys.stdin.isatty():
                print("vcan vm: booting; `exit` (or Ctrl-D) powers it off", file=sys.stderr)
                # The serial console does not know this terminal's size: tell it.
                size = shutil.get_terminal_size()
                shell = (
                    f"stty rows {size.lines} cols {size.columns} 2>/dev/null; "
                    # A non-interactive bash (this one) drops PS1: set it again.
                    "export PS1='vm:\\w# '; exec bash --norc --noprofile -i"
                )
                result = machine.run(
                    ["bash", "--norc", "--noprofile", "-c", shell], cwd=PROJECT, env=env,
                    tty=True, timeout=24 * 3600,
                )  # fmt: skip
            else:
                # A script on stdin (make vcan-shell < script): run it as bash would, with
                # its output on our stdout and stderr.
                result = machine.run(
                    ["bash", "--norc", "--noprofile", "-s"], cwd=PROJECT, env=env,
                    stdin=sys.stdin.buffer.read(), timeout=3600,
                )  # fmt: skip
            return result.returncode
        if not args.command:
            parser.error("run: which command?")
        machine = _machine(args.vcans, [])
        result = machine.run(args.command, cwd=Path.cwd())
    except PrepareError as err:
        print(f"vcan vm: {err}", file=sys.stderr)
        return 3
    if result.returncode == NO_STATUS and result.console_tail:
        print("vcan vm: the guest gave no exit status; its console:", file=sys.stderr)
        print(result.console_tail, file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
