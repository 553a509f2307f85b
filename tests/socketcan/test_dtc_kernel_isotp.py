"""Stored-DTC reads over the kernel's ISO-TP socket, against the (user-space) ECU emulator.

The reader and the emulator use different ISO-TP implementations on a real vcan0: the
kernel's (segmenting, flow control, padding) on the tester's side, can-isotp's on the ECU's.
"""

from __future__ import annotations

import can
import pytest

from can_signals.diag_protocol import EcuAddress
from can_signals.obd import DtcReader
from can_signals.simulator.ecu_emulator import EcuEmulator

# Enough codes for a multi-frame answer: the kernel has to send flow control.
CODES = ("P0301", "P0420", "C0035", "B1000", "U0100", "P0171")
ECUS = {
    "11-bit OBD": EcuAddress(name="engine", request_id=0x7E0, response_id=0x7E8),
    "29-bit UDS": EcuAddress(
        name="gearbox", request_id=0x18DA18F1, response_id=0x18DAF118, extended_id=True,
        protocol="uds",
    ),
}  # fmt: skip


@pytest.mark.parametrize("ecu", ECUS.values(), ids=ECUS.keys())
def test_stored_dtcs_come_over_the_kernels_isotp(ecu: EcuAddress) -> None:
    with (
        can.Bus(interface="socketcan", channel="vcan0") as ecu_bus,
        can.Bus(interface="socketcan", channel="vcan0") as tester_bus,
        EcuEmulator(ecu_bus, ecu, CODES) as emulator,
    ):
        reader = DtcReader(tester_bus, [ecu], ecu_timeout=10.0)
        assert reader.transport == "kernel"
        result = reader.read()
        assert emulator.requests_received == 1
    assert result.complete, result.ecus[0].error
    assert result.ecus[0].codes == tuple(sorted(CODES))


def test_a_silent_ecu_times_out_over_the_kernels_isotp() -> None:
    ecu = ECUS["11-bit OBD"]
    with (
        can.Bus(interface="socketcan", channel="vcan0") as ecu_bus,
        can.Bus(interface="socketcan", channel="vcan0") as tester_bus,
        EcuEmulator(ecu_bus, ecu, CODES, silent=True),
    ):
        result = DtcReader(tester_bus, [ecu], ecu_timeout=0.5).read()
    assert not result.complete
    assert "no answer" in str(result.ecus[0].error)


def test_a_virtual_bus_falls_back_to_the_user_space_stack() -> None:
    with can.Bus(interface="virtual", channel="tp-fallback") as bus:
        assert DtcReader(bus, [ECUS["11-bit OBD"]]).transport == "user-space"
