"""Which CAN protocols this kernel (and Python) offers beside raw sockets."""

from __future__ import annotations

import logging
import socket

_log = logging.getLogger(__name__)


def kernel_has(protocol: str, without: str) -> bool:
    """Whether a ``socket.<protocol>`` CAN socket can be opened here (``CAN_BCM``, ...).

    ``without`` says, for the debug log, what happens instead when it cannot.
    """
    number = getattr(socket, protocol, None)
    if number is None:
        return False
    try:
        probe = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, number)
    except OSError as err:  # EPROTONOSUPPORT: the kernel module is not there
        _log.debug("no %s (%s): %s", protocol, err, without)
        return False
    probe.close()
    return True
