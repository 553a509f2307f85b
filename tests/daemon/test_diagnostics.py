"""On-demand DTC reads from the daemon and the CLI, answered by the ECU emulator.

Everything runs on python-can's virtual bus: the car (frames encoded with the
reference DBC), the ECU emulator on its own Bus instance, and the daemon's pipeline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import can
import pytest

from agent.consent import Category
from agent.settings import ConsentSettings, PolicySettings, StoreSettings
from can_signals.settings import BusSettings, CanSettings, DbcSettings, DiagnosticsSettings
from can_signals.simulator import load_reference_database, reference_files
from can_signals.simulator.ecu_emulator import EcuEmulator
from tests.daemon.conftest import RecordingSink
from touchpoint.cli import main
from touchpoint.daemon import Daemon
from touchpoint.settings import DaemonSettings


def _settings(tmp_path: Path, channel: str) -> DaemonSettings:
    files = reference_files()
    return DaemonSettings(
        store=StoreSettings(path=tmp_path / "t.db"),
        can=CanSettings(
            mapping=files.mapping,
            dbc=[DbcSettings(file=files.dbc)],
            buses=[BusSettings(name="can0", interface="virtual", channel=channel)],
            diagnostics=DiagnosticsSettings(bus="can0", timeout_s=0.5),
        ),
        policy=PolicySettings(quiet_hours=None),
        consent=ConsentSettings(defaults={Category.VEHICLE_HEALTH: True}),
    )


def _ignition_frame(state: str) -> can.Message:
    message = load_reference_database().get_message_by_name("POWER_MODE")
    data = message.encode({"IGNITION_STATE": state})
    return can.Message(arbitration_id=message.frame_id, data=data, is_extended_id=False,
                       timestamp=time.time())  # fmt: skip


def test_ignition_on_reads_the_stored_codes_into_dtclist(tmp_path: Path) -> None:
    channel = f"diag-{uuid.uuid4().hex}"

    async def scenario() -> tuple[tuple[str, ...], int]:
        daemon = Daemon(_settings(tmp_path, channel))
        daemon.sinks.append(RecordingSink())
        await daemon.start()
        car = can.Bus(interface="virtual", channel=channel)
        ecu_bus = can.Bus(interface="virtual", channel=channel)
        try:
            with EcuEmulator(ecu_bus, dtcs=["P0420", "P0171"]):
                car.send(_ignition_frame("OFF"))
                car.send(_ignition_frame("ON"))
                deadline = asyncio.get_running_loop().time() + 10
                while daemon.agent.vehicle.faults != ("P0171", "P0420"):
                    assert asyncio.get_running_loop().time() < deadline, daemon.agent.vehicle.faults
                    await asyncio.sleep(0.05)
                await daemon.settle()
                assert daemon.dtc_poller is not None
                return daemon.agent.vehicle.faults, daemon.dtc_poller.reads
        finally:
            await daemon.stop()
            car.shutdown()
            ecu_bus.shutdown()

    faults, reads = asyncio.run(scenario())
    assert faults == ("P0171", "P0420")
    assert reads == 1


def test_the_dtc_command_prints_each_ecus_codes(capsys: pytest.CaptureFixture[str]) -> None:
    channel = f"diag-{uuid.uuid4().hex}"
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    try:
        with EcuEmulator(ecu_bus, dtcs=["P0301"]):
            status = main(["dtc", "--interface", "virtual", "--channel", channel,
                           "--ecu", "engine:7E0:7E8", "--ecu", "gearbox:7E1:7E9",
                           "--timeout", "0.3"])  # fmt: skip
    finally:
        ecu_bus.shutdown()
    out = capsys.readouterr().out
    assert "engine: P0301" in out
    assert "gearbox: no answer" in out
    assert status == 1  # one ECU did not answer


def test_a_bad_ecu_argument_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["dtc", "--interface", "virtual", "--channel", "x", "--ecu", "engine:zz:7E8"])
    error = capsys.readouterr().err
    assert "argument --ecu" in error
    assert "engine:zz:7E8" in error
