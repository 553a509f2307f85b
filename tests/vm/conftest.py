"""The VM for the SocketCAN suite: prepared once per session, a fresh guest per run.

Where neither KVM nor QEMU can run (or the kernel package cannot be had) the tests here
skip, loudly; under ``CI=true`` that is a failure: CI must run the SocketCAN suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.image import PrepareError, prepare
from tests.vm.machine import Machine, accelerator

PROJECT = Path(__file__).resolve().parents[2]


def _not_here(reason: str) -> None:
    message = f"THE VCAN SUITE DID NOT RUN: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a skipped VM suite is a failure)", pytrace=False)
    sys.stderr.write(f"\n*** {message} ***\n")
    pytest.skip(message)


@pytest.fixture(scope="session")
def machine() -> Iterator[Machine]:
    """A recipe for guests; reports how many it booted at the end of the session."""
    accel = accelerator()
    if accel is None:
        _not_here("neither KVM nor QEMU can run here (apt-get install qemu-system-x86)")
    assert accel is not None
    try:
        image = prepare()
    except PrepareError as err:
        _not_here(str(err))
        raise
    # The guest reads the project's bytecode from the host; write it here, where it is
    # kept, rather than have the guest compile (slowly, under emulation) and forget it.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0",
         *(str(PROJECT / p) for p in ("can_signals", "agent", "ui_bridge", "cloud_sync",
                                      "touchpoint", "tests"))],
        check=False, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    vm = Machine(image=image, accel=accel)
    yield vm
    sys.stderr.write(f"\nvcan vm: {vm.boots} guest boot(s), accel={vm.accel}\n")
