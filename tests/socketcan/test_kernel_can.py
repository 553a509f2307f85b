"""The guest's kernel CAN is there: raw sockets on vcan0, both ID widths."""

from __future__ import annotations

import can


def test_a_frame_sent_on_vcan0_is_received_by_another_socket() -> None:
    with (
        can.Bus(interface="socketcan", channel="vcan0") as rx,
        can.Bus(interface="socketcan", channel="vcan0") as tx,
    ):
        tx.send(can.Message(arbitration_id=0x123, data=b"\x01\x02", is_extended_id=False))
        tx.send(can.Message(arbitration_id=0x1ABCDE0, data=b"\x03", is_extended_id=True))
        first, second = rx.recv(5.0), rx.recv(5.0)
    assert first is not None
    assert second is not None
    assert (first.arbitration_id, bytes(first.data)) == (0x123, b"\x01\x02")
    assert (second.arbitration_id, second.is_extended_id) == (0x1ABCDE0, True)
