"""What the guest's kernel and can-utils say about vcan0 (helpers of the SocketCAN suite)."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KernelFilter:
    """One entry of /proc/net/can/rcvlist_fil: a socket's can_filter on a device."""

    device: str
    can_id: int
    mask: int
    matches: int


def kernel_filters(device: str) -> list[KernelFilter]:
    """The CAN_RAW filters the kernel holds for ``device``, with how many frames each took."""
    found = []
    for line in Path("/proc/net/can/rcvlist_fil").read_text(encoding="ascii").splitlines():
        words = line.split()
        # "  vcan0  000000a5  000007ff  <function>  <userdata>  <matches>  <ident>"
        if len(words) >= 6 and words[0] == device:
            found.append(KernelFilter(device, int(words[1], 16), int(words[2], 16), int(words[5])))
    return found


def wait_for(condition: str, check: object, timeout: float) -> None:
    """Poll ``check()`` every 50 ms until it is true; fail naming ``condition``."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {condition}")
        time.sleep(0.05)


def wait_idle(pid: int, timeout: float) -> None:
    """Wait until process ``pid`` sleeps, having used under 20 ms of CPU in half a second.

    The kernel counts a frame as matched when it queues it to the socket; the process
    may still be reading its backlog (slowly, under emulation) until it goes idle. A
    process starved of CPU on a loaded host uses none either, but it is runnable ("R"),
    not sleeping ("S"): its main thread (the event loop reading the socket) is checked.
    """

    def sample() -> tuple[str, int]:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        fields = text.rsplit(")", 1)[1].split()
        return fields[0], int(fields[11]) + int(fields[12])  # state, utime + stime

    deadline = time.monotonic() + timeout
    _, before = sample()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        state, now = sample()
        if state == "S" and now - before < 2:  # 2 ticks of 10 ms
            return
        before = now
    raise AssertionError(f"process {pid} still busy after {timeout:.0f} s")


class Candump:
    """``candump -L`` on an interface, into a file, until stopped (a client nobody here wrote)."""

    def __init__(self, device: str, log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self._proc = subprocess.Popen(["candump", "-L", device], stdout=self._out)
        # candump binds a filterless socket (the kernel's rx_all list): wait until it has.
        wait_for("candump to listen", lambda: _listening_all(device), 30)

    def stop(self) -> list[tuple[str, str]]:
        """Stop it; the frames it saw, as (id, data) in candump's spelling."""
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(10)
        self._out.close()
        return candump_frames(self.log)


def _listening_all(device: str) -> bool:
    text = Path("/proc/net/can/rcvlist_all").read_text(encoding="ascii")
    return any(line.split()[:1] == [device] for line in text.splitlines())


def candump_frames(log: Path) -> list[tuple[str, str]]:
    """(id, data) of every frame of a candump log, in order: ``(t) dev ID#DATA``."""
    frames = []
    for line in log.read_text(encoding="ascii").splitlines():
        words = line.split()
        if len(words) == 3 and words[0].startswith("("):
            ident, _, data = words[2].partition("#")
            frames.append((ident.upper(), data.upper()))
    return frames


def ip_link(*args: str) -> None:
    """``ip link ...`` (the guest runs as root)."""
    subprocess.run(["ip", "link", *args], check=True)
