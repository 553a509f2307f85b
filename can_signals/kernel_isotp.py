"""ISO-TP in the kernel (``CAN_ISOTP`` sockets), for DTC reads on SocketCAN.

Where the bus is SocketCAN and the kernel has ISO-TP (Linux 5.10 and later, module
``can-isotp``), the kernel segments the request, answers the ECU's flow control, pads
and reassembles the answer: no Python runs per CAN frame and no reader threads hang on
the pipeline's Notifier. Everywhere else (virtual, remote and vendor interfaces, kernels
without the module) the reader falls back to can-isotp's user-space stack.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Final

import can

from can_signals.diag_protocol import ISOTP_PARAMS, EcuAddress
from can_signals.kernel_protocols import kernel_has

_log = logging.getLogger(__name__)

# <linux/can/isotp.h>: SOL_CAN_ISOTP is SOL_CAN_BASE (100) + CAN_ISOTP (6).
_SOL_CAN_ISOTP: Final = 106
_CAN_ISOTP_OPTS: Final = 1
_CAN_ISOTP_RECV_FC: Final = 2
_CAN_ISOTP_TX_PADDING: Final = 0x004
_CAN_EFF_FLAG: Final = 0x8000_0000
#: The longest ISO-TP payload of classic CAN (12-bit length).
_MAX_PAYLOAD: Final = 4095
#: How often a waiting receive looks up to see whether the read was cancelled.
_POLL_INTERVAL: Final = 0.05


def kernel_isotp_channel(bus: can.BusABC) -> str | None:
    """The SocketCAN interface to open kernel ISO-TP sockets on, or ``None`` to fall back.

    ``None`` when ``bus`` is not SocketCAN, or the kernel (or Python) has no ISO-TP.
    """
    from can.interfaces.socketcan import SocketcanBus  # noqa: PLC0415 - Linux only

    if not isinstance(bus, SocketcanBus):
        return None
    channel = getattr(bus, "channel", None)
    if not isinstance(channel, str) or not channel:
        return None
    return channel if kernel_has("CAN_ISOTP", "using the user-space stack") else None


class KernelIsoTpLink:
    """One ECU's kernel ISO-TP socket for the duration of a read.

    Args:
        channel: The SocketCAN interface.
        ecu: The ECU: the socket sends to its request id and receives on its response id.

    Raises:
        OSError: If the socket cannot be opened or bound (an interface that went away).
    """

    def __init__(self, channel: str, ecu: EcuAddress) -> None:
        self.ecu = ecu
        self.problem: str | None = None
        sock = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_ISOTP)
        try:
            # struct can_isotp_options: flags, frame_txtime, ext_address, txpad_content,
            # rxpad_content, rx_ext_address. Padding as the user-space stack pads.
            pad = int(ISOTP_PARAMS["tx_padding"])
            options = struct.pack("=IIBBBB", _CAN_ISOTP_TX_PADDING, 0, 0, pad, 0, 0)
            sock.setsockopt(_SOL_CAN_ISOTP, _CAN_ISOTP_OPTS, options)
            # struct can_isotp_fc_options: the flow control we send (block size, STmin).
            flow = struct.pack(
                "=BBB", int(ISOTP_PARAMS["blocksize"]), int(ISOTP_PARAMS["stmin"]), 0
            )
            sock.setsockopt(_SOL_CAN_ISOTP, _CAN_ISOTP_RECV_FC, flow)
            flag = _CAN_EFF_FLAG if ecu.extended_id else 0
            sock.bind((channel, ecu.response_id | flag, ecu.request_id | flag))
        except OSError:
            sock.close()
            raise
        sock.settimeout(_POLL_INTERVAL)
        self._sock = sock

    def start(self) -> None:
        """Nothing to start: the kernel listens from the bind on."""

    def stop(self) -> None:
        """Close the socket."""
        self._sock.close()

    def send(self, payload: bytes) -> None:
        """Send one request.

        Raises:
            OSError: If the kernel refuses it (interface down, a full queue).
        """
        self._sock.send(payload)

    def receive(self, deadline: float, cancel: threading.Event) -> bytes | None:
        """The next whole answer, or ``None`` at the deadline or on cancelling.

        A reception the kernel had to abandon (a lost consecutive frame: ``ECOMM``,
        a sequence error) is remembered as :attr:`problem` and the wait goes on.
        """
        while not cancel.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(min(remaining, _POLL_INTERVAL))
            try:
                return self._sock.recv(_MAX_PAYLOAD)
            except TimeoutError:
                continue
            except OSError as err:
                self.problem = f"kernel ISO-TP: {err.strerror or err}"
                cancel.wait(_POLL_INTERVAL)
        return None
