"""Bad DBC and mapping files: every problem reported, at once, with its file and line.

Nothing here may crash: each broken input ends in a :class:`ConfigurationError` whose
problems name the file and, where there is one, the line (or the key path).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from can_signals.binding import bind
from can_signals.dbc import load_dbc, load_dbcs
from can_signals.errors import DbcError, MappingError, Problem
from can_signals.mapping import load_mapping, read_mapping
from can_signals.pipeline import SignalPipeline
from tests.can_signals.conftest import TEST_DBC

WriteFile = Callable[[str, str], Path]


def _line_of(text: str, fragment: str, occurrence: int = 1) -> str:
    """``"line N"`` of the ``occurrence``-th line containing ``fragment``."""
    lines = [n for n, line in enumerate(text.splitlines(), 1) if fragment in line]
    assert len(lines) >= occurrence, f"{fragment!r} not in the text"
    return f"line {lines[occurrence - 1]}"


def _problems(mapping: Path, dbc: Path) -> list[Problem]:
    """The problems the pipeline reports for a mapping (it must report some)."""
    with pytest.raises(MappingError) as caught:
        SignalPipeline.from_files(mapping, [(None, dbc)], replay=mapping, speed=0)
    problems = list(caught.value.problems)
    assert problems
    assert all(p.file == str(mapping) for p in problems)
    return problems


def _only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


# --- DBC files -------------------------------------------------------------------------


def test_a_dbc_that_does_not_parse_names_the_file_and_line(write_file: WriteFile) -> None:
    text = TEST_DBC.replace(' SG_ GEAR : 16|3@1+ (1,0) [0|7] "" ECU', " SG_ GEAR : sixteen")
    path = write_file("broken.dbc", text)

    with pytest.raises(DbcError) as caught:
        load_dbc(path)

    problem = _only(list(caught.value.problems))
    assert problem.file == str(path)
    assert problem.where == _line_of(text, "SG_ GEAR")
    assert "not a valid DBC file" in problem.message
    assert str(path) in str(caught.value)


def test_a_real_dbc_cantools_cannot_read_is_reported_not_raised(opendbc_dir: Path) -> None:
    # opendbc's Hyundai/Kia file has a comment cantools' grammar refuses.
    path = opendbc_dir / "hyundai_kia_generic.dbc"

    with pytest.raises(DbcError) as caught:
        load_dbc(path)

    problem = _only(list(caught.value.problems))
    assert problem.file == str(path)
    assert problem.where.startswith("line ")
    line = int(problem.where.split()[1])
    assert path.read_text().splitlines()[line - 1].startswith("CM_")


def test_a_missing_dbc_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.dbc"

    with pytest.raises(DbcError) as caught:
        load_dbc(path)

    problem = _only(list(caught.value.problems))
    assert problem.file == str(path)
    assert "cannot read" in problem.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", "not a valid DBC file"), ('VERSION ""\n', "defines no CAN messages")],
    ids=["empty", "no-messages"],
)
def test_an_empty_dbc_file(write_file: WriteFile, text: str, expected: str) -> None:
    path = write_file("empty.dbc", text)

    with pytest.raises(DbcError) as caught:
        load_dbc(path)

    problem = _only(list(caught.value.problems))
    assert problem.file == str(path)
    assert expected in problem.message


def test_every_broken_dbc_is_reported_at_once(write_file: WriteFile, tmp_path: Path) -> None:
    good = write_file("good.dbc", TEST_DBC)
    empty = write_file("empty.dbc", "")
    missing = tmp_path / "missing.dbc"

    with pytest.raises(DbcError) as caught:
        load_dbcs([(None, good), ("can1", empty), (None, missing)])

    assert [p.file for p in caught.value.problems] == [str(empty), str(missing)]
    assert "2 problems found" in str(caught.value)


# --- mapping files: one kind of problem at a time --------------------------------------


def test_an_unknown_dbc_signal_suggests_the_right_one(
    write_file: WriteFile, test_dbc: Path
) -> None:
    text = "Vehicle.Speed:\n  dbc2vss:\n    signal: SPEEED\n"
    problem = _only(_problems(write_file("m.yaml", text), test_dbc))

    assert problem.where == "line 1"
    assert "unknown DBC signal 'SPEEED'" in problem.message
    assert "did you mean 'SPEED'?" in problem.message


def test_a_signal_pinned_to_the_wrong_message(write_file: WriteFile, test_dbc: Path) -> None:
    text = "Vehicle.Speed:\n  dbc2vss:\n    signal: SPEED\n    message: CLUSTER\n"
    problem = _only(_problems(write_file("m.yaml", text), test_dbc))

    assert "unknown DBC signal 'SPEED' in message 'CLUSTER'" in problem.message


def test_an_unknown_vss_path_suggests_the_right_one(write_file: WriteFile, test_dbc: Path) -> None:
    text = "Vehicle.Sped:\n  dbc2vss:\n    signal: SPEED\n"
    problem = _only(_problems(write_file("m.yaml", text), test_dbc))

    assert "unknown VSS path" in problem.message
    assert "did you mean 'Vehicle.Speed'?" in problem.message


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        # The declared datatype is of another family than the catalogue's.
        ("Vehicle.TraveledDistance:\n  datatype: string\n  dbc2vss: {signal: ODOMETER}",
         "type mismatch: declared 'string', the catalogue has uint32"),
        # A mapping target that is not a value of the path's type.
        (("Vehicle.Powertrain.Transmission.SelectedGear:\n  dbc2vss:\n    signal: GEAR\n"
          "    transform:\n      mapping:\n        - {from: P, to: park}"),
         "mapping target 'park' is not a number"),
        # A string path fed by a number without a value table.
        ("Vehicle.LowVoltageSystemState:\n  dbc2vss: {signal: FUEL}",
         "has no value table; add a 'mapping' transform"),
        # A value table whose labels the catalogue does not allow (CRANK).
        ("Vehicle.LowVoltageSystemState:\n  dbc2vss: {signal: IGN}",
         "labels CRANK are not values of Vehicle.LowVoltageSystemState"),
        # Units of different dimensions.
        ("Vehicle.Service.TimeToService:\n  dbc2vss: {signal: SERVICE_KM}",
         "cannot convert 'km' (length) to 's' (time)"),
        # A boolean out of a mapping target of the wrong kind.
        (("Vehicle.Chassis.ParkingBrake.IsEngaged:\n  dbc2vss:\n    signal: PARK_BRAKE\n"
          "    transform:\n      mapping:\n        - {from: 1, to: engaged}"),
         "mapping target 'engaged'"),
    ],
    ids=["declared-type", "target", "no-table", "labels", "unit", "bool-target"],
)  # fmt: skip
def test_type_mismatches(write_file: WriteFile, test_dbc: Path, node: str, expected: str) -> None:
    problem = _only(_problems(write_file("m.yaml", node + "\n"), test_dbc))

    assert problem.where == "line 1"
    assert "type mismatch" in problem.message
    assert expected in problem.message


def test_a_duplicate_target_between_tree_and_overlay(write_file: WriteFile, test_dbc: Path) -> None:
    document = {
        "Vehicle.Speed": {"dbc2vss": {"signal": "SPEED"}},
        "Vehicle": {"type": "branch", "children": {"Speed": {"dbc2vss": {"signal": "RPM"}}}},
    }
    text = json.dumps(document, indent=2)
    problem = _only(_problems(write_file("m.json", text), test_dbc))

    assert problem.where == _line_of(text, '"Speed"')
    assert "duplicate target 'Vehicle.Speed': already mapped at line 2" in problem.message


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("x +", "not a valid expression"),
        ("x.__class__", "not allowed in a transform: 'x.__class__'"),
        ("__import__('os').system('true')", "not allowed in a transform"),
        ("(lambda: 1)()", "not allowed in a transform"),
        ("[x][0]", "not allowed in a transform"),
        ("foo(x)", "unknown function 'foo'"),
        ("y * 2", "unknown name 'y'"),
        ("ODOMETER * 2", "unknown name 'ODOMETER'"),  # a signal of another message
    ],
)
def test_bad_expressions(
    write_file: WriteFile, test_dbc: Path, expression: str, expected: str
) -> None:
    text = (
        f'Vehicle.Speed:\n  dbc2vss:\n    signal: SPEED\n    transform: {{math: "{expression}"}}\n'
    )
    problem = _only(_problems(write_file("m.yaml", text), test_dbc))

    assert problem.where in ("line 1", "line 4")
    assert "bad expression" in problem.message
    assert expected in problem.message


def test_an_expression_may_read_other_signals_of_its_frame(
    write_file: WriteFile, test_dbc: Path
) -> None:
    text = 'Vehicle.Speed:\n  dbc2vss:\n    signal: SPEED\n    transform: {math: "x + FUEL"}\n'

    pipeline = SignalPipeline.from_files(write_file("m.yaml", text), [(None, test_dbc)],
                                         replay=test_dbc)  # fmt: skip

    (binding,) = pipeline.binding.bindings
    assert binding.reads == frozenset({"FUEL"})


@pytest.mark.parametrize(
    ("block", "key", "expected"),
    [
        ("{signal: SPEED, frequency: 10}", "frequency", "unknown key 'frequency' in 'dbc2vss'"),
        ("{signal: SPEED, interval_ms: -5}", "interval_ms", "'interval_ms' must be a whole"),
        ("{signal: SPEED, interval_ms: '100'}", "interval_ms", "'interval_ms' must be a whole"),
        ("{signal: SPEED, interval_ms: 0.5}", "interval_ms", "'interval_ms' must be a whole"),
        ("{signal: SPEED, interval_ms: true}", "interval_ms", "'interval_ms' must be a whole"),
        ("{signal: SPEED, stale_ms: -1}", "stale_ms", "'stale_ms' must be a whole"),
        ("{signal: SPEED, on_change: 'true'}", "on_change", "'on_change' must be true or false"),
        ("{signal: SPEED, on_change: 1}", "on_change", "'on_change' must be true or false"),
        ("{signal: SPEED, on_change: yes}", "on_change", "'on_change' must be true or false"),
        ("{signal: ''}", "signal", "'signal' (the DBC signal name) is missing or empty"),
        ("{interval_ms: 10}", "signal", "'signal' (the DBC signal name) is missing"),
        ("{signal: SPEED, transform: {math: x, mapping: []}}", "transform", "exactly one of"),
        ("{signal: SPEED, transform: {mapping: []}}", "transform", "non-empty list"),
        ("{signal: SPEED, transform: {mapping: [{from: 1}]}}", "transform", "needs exactly"),
        ("{signal: SPEED, transform: {dtc: maybe}}", "transform", "'dtc' must be true"),
        ("{signal: SPEED, message: 5}", "message", "'message' must be a DBC message name"),
        ("SPEED", "dbc2vss", "'dbc2vss' must be a mapping"),
    ],
)
def test_bad_dbc2vss_blocks(
    write_file: WriteFile, test_dbc: Path, block: str, key: str, expected: str
) -> None:
    text = f"# {key}\nVehicle.Speed:\n  dbc2vss: {block}\n"
    problem = _only(_problems(write_file("m.yaml", text), test_dbc))

    assert problem.where == "line 3"
    assert expected in problem.message
    assert problem.message.startswith("Vehicle.Speed: ")


def test_both_dbc2vss_and_its_synonym(write_file: WriteFile, test_dbc: Path) -> None:
    text = "Vehicle.Speed:\n  dbc2vss: {signal: SPEED}\n  dbc: {signal: SPEED}\n"
    problem = _only(_problems(write_file("m.yaml", text), test_dbc))

    assert "has both 'dbc2vss' and its synonym 'dbc'" in problem.message


def test_a_path_that_is_not_a_vss_path(write_file: WriteFile, test_dbc: Path) -> None:
    text = "Vehicle..Speed:\n  dbc2vss: {signal: SPEED}\n"
    problem = _only(_problems(write_file("m.yaml", text), test_dbc))

    assert "is not a VSS path" in problem.message


def test_invalid_json_reports_its_line(write_file: WriteFile, test_dbc: Path) -> None:
    text = '{\n  "Vehicle.Speed": {\n    "dbc2vss": {"signal": "SPEED",}\n  }\n}\n'
    problem = _only(_problems(write_file("m.json", text), test_dbc))

    assert problem.where == "line 3"
    assert "not valid JSON" in problem.message


def test_invalid_yaml_reports_its_line(write_file: WriteFile, test_dbc: Path) -> None:
    text = "Vehicle.Speed:\n  dbc2vss:\n    signal: SPEED\n   bad: [unclosed\n"
    problem = _only(_problems(write_file("m.yaml", text), test_dbc))

    assert problem.where.startswith("line ")
    assert int(problem.where.split()[1]) >= 4
    assert "not valid YAML" in problem.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]\n", "the top level must be a mapping of VSS paths"),
        ("Vehicle.Speed:\n  datatype: float\n", "maps no signal"),
        ("? [1, 2]\n: x\n", "not valid YAML: found unhashable key"),
        ("", "maps no signal"),
    ],
    ids=["list", "no-dbc2vss", "unhashable-key", "empty"],
)
def test_mappings_of_the_wrong_shape(
    write_file: WriteFile, test_dbc: Path, text: str, expected: str
) -> None:
    problem = _only(_problems(write_file("m.yaml", text), test_dbc))

    assert expected in problem.message


def test_a_missing_mapping_file(tmp_path: Path, test_dbc: Path) -> None:
    problem = _only(_problems(tmp_path / "missing.yaml", test_dbc))

    assert "cannot read the mapping file" in problem.message


def test_duplicate_keys_in_json_are_reported(write_file: WriteFile, test_dbc: Path) -> None:
    text = (
        '{"Vehicle.Speed": {"dbc2vss": {"signal": "SPEED", "signal": "RPM"}},\n'
        ' "Vehicle.Speed": {"dbc2vss": {"signal": "SPEED"}}}\n'
    )
    problems = _problems(write_file("m.json", text), test_dbc)

    assert sorted((p.where, p.message) for p in problems) == [
        ("'Vehicle.Speed'", "duplicate key"),
        ("'signal'", "duplicate key"),
    ]


def test_duplicate_keys_in_yaml_are_reported_with_the_other_problems(
    write_file: WriteFile, test_dbc: Path
) -> None:
    text = (
        "Vehicle.Speed:\n  dbc2vss: {signal: SPEED}\n"
        "Vehicle.Speed:\n  dbc2vss: {signal: SPEED, interval_ms: fast}\n"
    )
    problems = _problems(write_file("m.yaml", text), test_dbc)

    assert sorted(p.where for p in problems) == ["line 3", "line 4"]
    assert any("duplicate key 'Vehicle.Speed'" in p.message for p in problems)
    assert any("'interval_ms' must be a whole number" in p.message for p in problems)


def test_dtc_count_and_dtc_list_rules(write_file: WriteFile, test_dbc: Path) -> None:
    text = (
        "Vehicle.Diagnostics.DTCList:\n  dbc2vss: {signal: DTC}\n"
        "Vehicle.Diagnostics.DTCCount:\n  dbc2vss: {signal: FUEL}\n"
        "Vehicle.Diagnostics.Lamp.ABS:\n  dbc2vss: {signal: MIL}\n"
        "Vehicle.Speed:\n  dbc2vss: {signal: SPEED, transform: {dtc: true}}\n"
    )
    problems = _problems(write_file("m.yaml", text), test_dbc)

    assert [(p.where, p.message.split(": ", 1)[1][:40]) for p in problems] == [
        ("line 1", "DTCList is fed one code per frame: use '"),
        ("line 3", "duplicate target: DTCCount is derived fr"),
        ("line 7", "the 'dtc' transform feeds Vehicle.Diagno"),
    ]


# --- every problem of a file at once ---------------------------------------------------

EVERYTHING_WRONG = """\
# A mapping with one of each problem: all must be reported by one run.
Vehicle.Speed:
  dbc2vss:
    signal: SPEEED
Vehicle.Sped:
  dbc2vss:
    signal: SPEED
Vehicle.TraveledDistance:
  datatype: string
  dbc2vss: {signal: ODOMETER}
Vehicle.Powertrain.Transmission.SelectedGear:
  dbc2vss:
    signal: GEAR
    transform:
      mapping:
        - {from: P, to: park}
Vehicle.LowVoltageSystemState:
  dbc2vss: {signal: IGN}
Vehicle.Powertrain.CombustionEngine.Speed:
  dbc2vss:
    signal: RPM
    frequency: 3
Vehicle.Powertrain.CombustionEngine.IsRunning:
  dbc2vss: {signal: RPM, on_change: maybe, interval_ms: -1}
Vehicle.Powertrain.FuelSystem.RelativeLevel:
  dbc2vss: {signal: FUEL, transform: {math: "x.real"}}
Vehicle.Service.DistanceToService:
  dbc2vss: {signal: SERVICE_KM, transform: {math: "nope(x)"}}
Vehicle.Service.TimeToService:
  dbc2vss: {signal: SERVICE_KM, transform: {math: "x * y"}}
Vehicle.Service.IsServiceDue:
  dbc2vss: {signal: FUEL}
Vehicle.Service.IsServiceDue:
  dbc2vss: {signal: FUEL}
"""


def test_all_problems_of_a_file_are_reported_at_once(write_file: WriteFile, test_dbc: Path) -> None:
    text = EVERYTHING_WRONG
    problems = _problems(write_file("everything.yaml", text), test_dbc)
    found = {(p.where, p.message) for p in problems}

    def has(fragment: str, where: str) -> bool:
        return any(w == where and fragment in m for w, m in found)

    expected = [
        ("did you mean 'SPEED'?", _line_of(text, "Vehicle.Speed:")),
        ("did you mean 'Vehicle.Speed'?", _line_of(text, "Vehicle.Sped:")),
        ("declared 'string'", _line_of(text, "Vehicle.TraveledDistance:")),
        ("mapping target 'park' is not a number", _line_of(text, "SelectedGear:")),
        ("labels CRANK", _line_of(text, "LowVoltageSystemState:")),
        ("unknown key 'frequency'", _line_of(text, "frequency")),
        ("'on_change' must be true or false", _line_of(text, "on_change: maybe")),
        ("'interval_ms' must be a whole number", _line_of(text, "on_change: maybe")),
        ("not allowed in a transform: 'x.real'", _line_of(text, "x.real")),
        ("unknown function 'nope'", _line_of(text, "nope(x)")),
        ("unknown name 'y'", _line_of(text, "TimeToService:")),
        ("duplicate key 'Vehicle.Service.IsServiceDue'", _line_of(text, "IsServiceDue:", 2)),
    ]
    missing = [item for item in expected if not has(*item)]
    assert not missing, f"not reported: {missing}\nreported: {sorted(found)}"
    assert len(problems) == len(expected)
    assert f"{len(expected)} problems found" in str(_error_text(write_file, test_dbc, text))


def _error_text(write_file: WriteFile, test_dbc: Path, text: str) -> str:
    with pytest.raises(MappingError) as caught:
        SignalPipeline.from_files(write_file("again.yaml", text), [(None, test_dbc)],
                                  replay=test_dbc)  # fmt: skip
    return str(caught.value)


def test_read_mapping_keeps_the_good_entries_next_to_the_problems(
    write_file: WriteFile, test_dbc: Path
) -> None:
    text = "Vehicle.Speed:\n  dbc2vss: {signal: SPEED}\nVehicle.Sped:\n  dbc2vss: {signl: X}\n"

    document, problems = read_mapping(write_file("m.yaml", text))

    assert [e.path for e in document.entries] == ["Vehicle.Speed"]
    assert {p.where for p in problems} == {"line 4"}  # unknown key, no signal
    with pytest.raises(MappingError):
        load_mapping(write_file("m2.yaml", text))
    binding = bind(document, [load_dbc(test_dbc)])
    assert [b.entry.path for b in binding.bindings] == ["Vehicle.Speed"]


# --- YAML 1.1 traps ----------------------------------------------------------------------


def test_yaml_on_and_off_are_labels_not_booleans(write_file: WriteFile, test_dbc: Path) -> None:
    # YAML 1.1 reads ON/OFF/YES/NO as booleans; DBC value tables are full of them.
    text = (
        "Vehicle.LowVoltageSystemState:\n  dbc2vss:\n    signal: IGN\n    transform:\n"
        "      mapping:\n        - {from: OFF, to: OFF}\n        - {from: ACC, to: ACC}\n"
        "        - {from: ON, to: ON}\n        - {from: CRANK, to: START}\n"
    )
    document = load_mapping(write_file("m.yaml", text))
    (entry,) = document.entries
    assert entry.transform is not None
    assert entry.transform.table == (("OFF", "OFF"), ("ACC", "ACC"), ("ON", "ON"),
                                     ("CRANK", "START"))  # fmt: skip
    (binding,) = bind(document, [load_dbc(test_dbc)]).bindings
    # IGN: 0 OFF, 1 ACC, 2 ON, 4 CRANK.
    assert [binding.convert(raw, {}) for raw in (0, 1, 2, 4)] == ["OFF", "ACC", "ON", "START"]


def test_an_ambiguous_signal_is_a_warning_and_message_picks_one(
    write_file: WriteFile, rav4_dir: Path
) -> None:
    dbc = load_dbc(rav4_dir / "toyota_new_mc_pt.dbc")
    loose = "Vehicle.Powertrain.Transmission.CurrentGear:\n  dbc2vss: {signal: GEAR}\n"
    pinned = loose.replace("GEAR}", "GEAR, message: GEAR_PACKET}")

    ambiguous = bind(load_mapping(write_file("a.yaml", loose)), [dbc])
    chosen = bind(load_mapping(write_file("b.yaml", pinned)), [dbc])

    (warning,) = ambiguous.warnings
    assert "GEAR_PACKET" in warning.message
    assert "GEAR_PACKET_HYBRID" in warning.message
    assert sorted(b.message.name for b in ambiguous.bindings) == [
        "GEAR_PACKET", "GEAR_PACKET_HYBRID",
    ]  # fmt: skip
    assert [b.message.name for b in chosen.bindings] == ["GEAR_PACKET"]
    assert chosen.warnings == ()
