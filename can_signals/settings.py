"""The CAN layer's settings (``[can]`` of the daemon's configuration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DbcSettings(_Section):
    """A DBC file, for one bus or (without ``bus``) every bus."""

    file: Annotated[Path, Field(description="The DBC file.")]
    bus: Annotated[
        str | None,
        Field(
            description="The bus (a `name` from `[[can.buses]]`, or the replay log's "
            "interface name) it describes; absent: every bus."
        ),
    ] = None


class BusSettings(_Section):
    """A live CAN bus."""

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=32,
            description="The bus's name, as `[[can.dbc]] bus` and `[can.diagnostics] bus` "
            "refer to it.",
        ),
    ]
    interface: Annotated[
        str,
        Field(
            min_length=1,
            description="The python-can interface: `socketcan` on a head unit, `virtual` or "
            "`remote` in development.",
        ),
    ]
    channel: Annotated[
        str, Field(min_length=1, description="The interface's channel, e.g. `can0` or `vcan0`.")
    ]
    options: Annotated[
        dict[str, Any],
        Field(description="Further keyword arguments for python-can's `can.Bus`."),
    ] = {}
    bcm: Annotated[
        bool,
        Field(
            description="On `socketcan`: let the kernel's broadcast manager (`CAN_BCM`) hold "
            "back the mapped frames touchpoint would not use: those whose mapped bits did "
            "not change (`on_change` routes) and those inside a route's `interval_ms` "
            "(touchpoint falls back to reading every mapped frame where the kernel has no "
            "`CAN_BCM`); `false`: read every mapped frame. Ignored by other interfaces."
        ),
    ] = True


class EcuSettings(_Section):
    """An ECU to ask for its stored DTCs (physical ISO-TP addressing)."""

    name: Annotated[
        str,
        Field(min_length=1, max_length=32, description="A name for logs and the DTC source."),
    ] = "engine"
    request_id: Annotated[
        int, Field(ge=0, le=0x1FFFFFFF, description="The CAN id requests are sent to.")
    ] = 0x7E0
    response_id: Annotated[
        int, Field(ge=0, le=0x1FFFFFFF, description="The CAN id the ECU answers on.")
    ] = 0x7E8
    extended_id: Annotated[
        bool, Field(description="Whether the two ids are 29-bit (extended) CAN ids.")
    ] = False
    protocol: Annotated[
        Literal["obd", "uds"],
        Field(description="`obd`: OBD-II service 03; `uds`: UDS ReadDTCInformation 0x19 0x02."),
    ] = "obd"


class DiagnosticsSettings(_Section):
    """On-demand reads of stored DTCs over ISO-TP (OBD-II service 03 or UDS 0x19 0x02)."""

    bus: Annotated[
        str,
        Field(
            min_length=1,
            description="The live bus to talk on (a `name` from `[[can.buses]]`). Not used "
            "with a replay.",
        ),
    ]
    ecus: Annotated[
        list[EcuSettings],
        Field(min_length=1, max_length=16, description="Default: the engine ECU alone."),
    ] = [EcuSettings()]
    on_drive_cycle: Annotated[
        bool, Field(description="Read when the ignition comes on (a drive cycle starts).")
    ] = True
    on_lamp: Annotated[bool, Field(description="Read when the check-engine lamp (MIL) lights.")] = (
        True
    )
    min_interval_s: Annotated[
        float, Field(ge=0, description="Never read more often than this, in seconds.")
    ] = 60.0
    timeout_s: Annotated[
        float, Field(gt=0, le=30, description="How long to wait for each ECU's answer, in seconds.")
    ] = 1.0


class CanSettings(_Section):
    """Where signals come from: DBC files, a mapping, and live buses or a replay."""

    mapping: Annotated[
        Path,
        Field(
            description="The VSS mapping file (KUKSA `dbc2vss` format, JSON or YAML; see "
            "docs/new-car.md)."
        ),
    ]
    dbc: Annotated[
        list[DbcSettings],
        Field(min_length=1, description="At least one."),
    ]
    vss: Annotated[
        Path | None,
        Field(
            description="A VSS release's JSON export (as the KUKSA databroker's `--vss` "
            "takes it), for the types and units of mapped paths outside touchpoint's own "
            "catalogue that the mapping does not declare. Absent: the mapping's "
            "declarations alone."
        ),
    ] = None
    buses: Annotated[
        list[BusSettings],
        Field(description="The buses to read; ignored when `replay` is set."),
    ] = []
    replay: Annotated[
        Path | None,
        Field(
            description="A recorded log (candump `.log`, `.asc`, `.blf`, `.trc`) to play "
            "instead of the live buses, for development."
        ),
    ] = None
    replay_speed: Annotated[
        float,
        Field(ge=0, description="Replay pace: 1 real time, 10 ten times faster, 0 at once."),
    ] = 1.0
    queue_capacity: Annotated[
        int,
        Field(
            ge=10,
            le=1_000_000,
            description="Decoded signal updates waiting for the agent, at most; beyond it a "
            "live bus drops the oldest (counted), a replay waits.",
        ),
    ] = 10_000
    diagnostics: Annotated[
        DiagnosticsSettings | None,
        Field(description="Absent: no DTC reads."),
    ] = None
