"""The harness itself: what a command inside the guest sees, and what it gives back."""

from __future__ import annotations

import io
import os
from pathlib import Path

from tests.vm.machine import Machine

PROJECT = Path(__file__).resolve().parents[2]

_PROBE = r"""
set -u
echo "kernel $(uname -r)"
echo "nets $(ls /sys/class/net | tr '\n' ' ')"
echo "in-vm ${TOUCHPOINT_IN_VM:-no} marker ${HARNESS_MARKER:-none}"
echo "cwd $PWD"
echo "lo $(cat /sys/class/net/lo/operstate) vcan0 $(cat /sys/class/net/vcan0/flags)"
echo "venv $(test -x .venv/bin/python && echo yes)"
echo "to stderr" >&2
echo scribble > guest-scribble.txt && echo "wrote $(cat guest-scribble.txt)"
exit 7
"""


def test_a_command_runs_in_the_project_with_vcan0_and_no_network(
    machine: Machine, tmp_path: Path
) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    env = dict(os.environ, HARNESS_MARKER="m-42")
    result = machine.run(["bash", "-c", _PROBE], cwd=PROJECT, env=env, stdout=out, stderr=err,
                         timeout=120)  # fmt: skip
    lines = out.getvalue().decode().splitlines()
    facts = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines}
    assert result.returncode == 7, (lines, result.console_tail)
    # Only loopback and the vcan: no network device, no way out.
    assert facts["nets"].split() == ["lo", "vcan0"]
    assert facts["in-vm"] == "1 marker m-42"
    assert facts["cwd"] == str(PROJECT)
    # vcan0 is up: IFF_UP is bit 0 of its flags.
    assert int(facts["lo"].split()[2], 16) & 1
    assert facts["venv"] == "yes"
    assert err.getvalue() == b"to stderr\n"
    # The guest writes into a throwaway overlay: the host's tree is untouched.
    assert facts["wrote"] == "scribble"
    assert not (PROJECT / "guest-scribble.txt").exists()
    assert result.boot_s is not None
    assert result.boot_s < 60
