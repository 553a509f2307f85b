"""Network faults on one TCP port of the guest's loopback, with tc and netem.

Everything in the guest talks over ``lo``: the D-Bus daemon, the CAN server, the
cloud's own connection to the broker. Only the car's link to the broker may suffer,
so ``lo`` gets a ``prio`` root qdisc whose every packet goes to band 1 by default, and
two ``u32`` filters send the packets to and from the broker's car port to band 4,
where netem sits. Each direction crosses netem once: a delay of 150 ms there is a
round trip of 300 ms.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Final

#: No fault.
CLEAN: Final = "delay 0ms"
#: A tunnel or an underground car park: nothing gets through.
TUNNEL: Final = "loss 100%"
#: A weak cellular link: 150 +/- 50 ms and 1 % loss each way, so a round trip of
#: 300 +/- ~70 ms that loses about 2 % of exchanges.
WEAK_CELLULAR: Final = "delay 150ms 50ms distribution normal loss 1%"
_BAND: Final = "1:4"


def _tc(*args: str) -> None:
    done = subprocess.run(["tc", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {done.stderr.strip()}")


@dataclass(slots=True)
class PortFaults:
    """netem on the traffic of one loopback TCP port (both directions)."""

    port: int
    device: str = "lo"
    current: str = CLEAN

    def install(self) -> None:
        """The qdiscs and filters; the link starts clean."""
        _tc("qdisc", "add", "dev", self.device, "root", "handle", "1:", "prio", "bands", "4",
            "priomap", *["0"] * 16)  # fmt: skip
        _tc("qdisc", "add", "dev", self.device, "parent", _BAND, "handle", "40:", "netem",
            *CLEAN.split())  # fmt: skip
        for direction in ("dport", "sport"):
            _tc("filter", "add", "dev", self.device, "parent", "1:", "protocol", "ip", "prio",
                "1", "u32", "match", "ip", direction, str(self.port), "0xffff",
                "flowid", _BAND)  # fmt: skip

    def set(self, spec: str) -> None:
        """Replace the fault (one of this module's constants, or any netem arguments)."""
        _tc("qdisc", "change", "dev", self.device, "parent", _BAND, "handle", "40:", "netem",
            *spec.split())  # fmt: skip
        self.current = spec

    def remove(self) -> None:
        """Back to a plain loopback."""
        _tc("qdisc", "del", "dev", self.device, "root")
