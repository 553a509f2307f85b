"""The vehicle simulator: a plug-in hybrid model, scenarios, and frames for the reference DBC.

Typical use::

    scenario = build_scenario("commute", ScenarioOptions(short=True))
    record(scenario, "commute.log")

or, live, ``ScenarioRunner(scenario, FrameEncoder(load_reference_database()),
[BusSink(bus)], speed=1).run()``.
"""

from can_signals.simulator.encoder import EncodedFrame, FrameEncoder
from can_signals.simulator.errors import SimulatorError
from can_signals.simulator.model import (
    DEFAULT_PARAMS,
    Gear,
    Ignition,
    VehicleParams,
    VehicleState,
    step,
)
from can_signals.simulator.reference import (
    ReferenceFiles,
    load_reference_database,
    reference_files,
)
from can_signals.simulator.runner import (
    BusSink,
    FrameSink,
    LogSink,
    RunResult,
    ScenarioRunner,
    Tick,
    chained_timeline,
    record,
    timeline,
)
from can_signals.simulator.scenario import Phase, Scenario, SpeedProfile
from can_signals.simulator.scenarios import (
    SCENARIOS,
    SERVICE_THRESHOLD_KM,
    ScenarioOptions,
    at_rest,
    build_scenario,
)

__all__ = [
    "DEFAULT_PARAMS",
    "SCENARIOS",
    "SERVICE_THRESHOLD_KM",
    "BusSink",
    "EncodedFrame",
    "FrameEncoder",
    "FrameSink",
    "Gear",
    "Ignition",
    "LogSink",
    "Phase",
    "ReferenceFiles",
    "RunResult",
    "Scenario",
    "ScenarioOptions",
    "ScenarioRunner",
    "SimulatorError",
    "SpeedProfile",
    "Tick",
    "VehicleParams",
    "VehicleState",
    "at_rest",
    "build_scenario",
    "chained_timeline",
    "load_reference_database",
    "record",
    "reference_files",
    "step",
    "timeline",
]
