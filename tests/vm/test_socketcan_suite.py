"""The SocketCAN suite (tests/socketcan), run inside one guest with real kernel CAN."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.vm.machine import Machine

PROJECT = Path(__file__).resolve().parents[2]
#: The whole suite's budget inside the guest (emulated CPUs are about 20x slower).
SUITE_TIMEOUT_S = 300


def test_the_socketcan_suite_passes_on_kernel_can(
    machine: Machine, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(PROJECT / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-ra",
            "-p", "no:cacheprovider", "tests/socketcan"]  # fmt: skip
    extra = os.environ.get("VCAN_PYTEST_ARGS", "").split()
    with capsys.disabled():
        sys.stderr.write("\n--- inside the VM: pytest tests/socketcan ---\n")
        # No plugin autoloading: importing hypothesis and the rest costs about 40 s under
        # emulation, and the suite uses none of them.
        env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        result = machine.run([*argv, *extra], cwd=PROJECT, env=env, timeout=SUITE_TIMEOUT_S)
        sys.stderr.write(
            f"--- the VM: boot {result.boot_s or float('nan'):.1f} s, "
            f"total {result.total_s:.1f} s, exit status {result.returncode} ---\n"
        )
    assert result.returncode == 0, result.console_tail or "the suite failed inside the VM"
