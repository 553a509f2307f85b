"""KUKSA's own example, unchanged: its Model 3 DBC, both forms of its mapping, its recording.

``touchpoint signals`` must take KUKSA's default mapping (``vss_dbc.json``, a VSS 4.0 tree
with 31 mapped paths, most outside touchpoint's catalogue, some gone from VSS 6.0) and
the overlay it is generated from (``dbc_overlay.vspec``) as they are, and print every
path the recording feeds. What "feeds" means is worked out here from the files alone:
the mapping's signal names, the DBC's messages and the IDs in the log. The values are
checked against KUKSA's rules applied here to cantools' own decoding of the recording.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cantools.database.can import Database
from cantools.database.namedsignalvalue import NamedSignalValue

from tests.can_signals.conftest import load_database

LOG = "candump_Manual_SOC_DogMode_CabinTemp.log"
_LINE = re.compile(r"^\((?P<t>[\d.]+)\) (?P<bus>\S+) (?P<id>[0-9A-F]+)#(?P<data>[0-9A-F]*)$")
#: The paths of KUKSA's mapping the recording feeds, as the shared data's README lists them.
FED = {
    "Vehicle.Speed",
    "Vehicle.OBD.Speed",
    "Vehicle.Powertrain.Transmission.CurrentGear",
    "Vehicle.Powertrain.Transmission.IsParkLockEngaged",
    "Vehicle.OBD.EngineLoad",
}
#: KUKSA's ``math`` transforms in its mapping, as Python (the reference decoding below).
MATH: dict[str, Callable[[float], float]] = {
    "floor(abs(x/5))": lambda x: math.floor(abs(x / 5)),
    "floor(x+0.5)": lambda x: math.floor(x + 0.5),
    "floor((x*40)-100)": lambda x: math.floor(x * 40 - 100),
}


@pytest.fixture(scope="module")
def model3_dir(realdata_dir: Path) -> Path:
    path = realdata_dir / "kuksa_model3"
    wanted = ("Model3CAN.dbc", "vss_dbc.json", "dbc_overlay.vspec", LOG)
    missing = [name for name in wanted if not (path / name).is_file()]
    if missing:
        pytest.fail(f"missing from {path}: {', '.join(missing)}", pytrace=False)
    return path


@pytest.fixture(scope="module")
def model3(model3_dir: Path) -> Database:
    return load_database(model3_dir / "Model3CAN.dbc")


def _blocks(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``(path, dbc2vss block)`` of a KUKSA tree or overlay, read independently."""
    if not isinstance(node, dict):
        return
    if "dbc2vss" in node:
        yield path, node["dbc2vss"]
    for name, child in (node.get("children") or {}).items():
        yield from _blocks(child, f"{path}.{name}")


def kuksa_blocks(mapping: Path) -> dict[str, dict[str, Any]]:
    text = mapping.read_text()
    document = json.loads(text) if mapping.suffix == ".json" else yaml.safe_load(text)
    return {p: b for key, node in document.items() for p, b in _blocks(node, key)}


def _frames(log: Path) -> list[tuple[float, int, bytes]]:
    frames = []
    for line in log.read_text().splitlines():
        match = _LINE.match(line)
        assert match, line
        frames.append((float(match["t"]), int(match["id"], 16), bytes.fromhex(match["data"])))
    return frames


def fed_paths(blocks: dict[str, dict[str, Any]], database: Database, log: Path) -> set[str]:
    """The mapped paths whose signal is in a message the recording carries."""
    ids = {frame_id for _, frame_id, _ in _frames(log)}
    carried = {s.name for m in database.messages if m.frame_id in ids for s in m.signals}
    return {path for path, block in blocks.items() if block["signal"] in carried}


def kuksa_updates(
    blocks: dict[str, dict[str, Any]], database: Database, log: Path
) -> list[tuple[str, float, object]]:
    """What KUKSA's provider publishes, by its rules, from cantools' decoding.

    Per frame, per decoded signal: a number outside the DBC range is dropped (before the
    time condition); then per mapping entry the time condition (``interval_ms``), the
    transform (a missing ``mapping`` entry publishes nothing), and ``on_change``.
    """
    last_time: dict[str, float] = {}
    last_value: dict[str, object] = {}
    by_signal: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path, block in blocks.items():
        by_signal.setdefault(block["signal"], []).append((path, block))
    published: list[tuple[str, float, object]] = []
    for t, frame_id, data in _frames(log):
        try:
            message = database.get_message_by_frame_id(frame_id)
        except KeyError:
            continue
        decoded = message.decode(data, decode_choices=True, allow_truncated=True)
        assert isinstance(decoded, dict)
        for name, raw in decoded.items():
            signal = message.get_signal_by_name(name)
            if isinstance(raw, int | float) and not (
                (signal.minimum is None or raw >= signal.minimum)
                and (signal.maximum is None or raw <= signal.maximum)
            ):
                continue
            for path, block in by_signal.get(name, []):
                interval = block.get("interval_ms", 0 if block.get("on_change") else 1000)
                if path in last_time and (t - last_time[path]) * 1000 < interval:
                    continue
                last_time[path] = t
                value = _transform(block.get("transform"), raw)
                if value is None:
                    continue
                if block.get("on_change") and last_value.get(path) == value:
                    continue
                last_value[path] = value
                published.append((path, t, value))
    return published


def _transform(transform: dict[str, Any] | None, raw: object) -> object:
    if transform is None:
        return raw.value if isinstance(raw, NamedSignalValue) else raw
    if "mapping" in transform:
        return next((item["to"] for item in transform["mapping"] if item["from"] == raw), None)
    number = raw.value if isinstance(raw, NamedSignalValue) else raw
    assert isinstance(number, int | float)
    return MATH[transform["math"]](number)


def run_signals(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
    """``touchpoint signals`` as a user runs it."""
    command = [sys.executable, "-m", "touchpoint.cli", "signals", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module", params=["vss_dbc.json", "dbc_overlay.vspec"])
def kuksa_mapping(request: pytest.FixtureRequest, model3_dir: Path) -> Path:
    return model3_dir / str(request.param)


@pytest.fixture(scope="module")
def cli(kuksa_mapping: Path, model3_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_signals(
        "--dbc", model3_dir / "Model3CAN.dbc", "--mapping", kuksa_mapping,
        "--replay", model3_dir / LOG, "--speed", "0", "--json",
    )  # fmt: skip


def _printed(cli: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cli.stdout.splitlines()]


def test_kuksa_mapping_loads_unchanged_and_prints_every_fed_path(
    cli: subprocess.CompletedProcess[str], kuksa_mapping: Path, model3: Database, model3_dir: Path
) -> None:
    blocks = kuksa_blocks(kuksa_mapping)
    fed = fed_paths(blocks, model3, model3_dir / LOG)

    assert cli.returncode == 0, cli.stderr
    assert len(blocks) == 32
    assert fed == FED
    assert {u["path"] for u in _printed(cli)} == fed


def test_outside_the_catalogue_is_one_warning_line_and_vss2dbc_another(
    cli: subprocess.CompletedProcess[str],
) -> None:
    warnings = [line for line in cli.stderr.splitlines() if line.startswith("warning:")]
    uncatalogued = [w for w in warnings if "not in touchpoint's signal catalogue" in w]
    writes = [w for w in warnings if "vss2dbc" in w]

    assert len(uncatalogued) == 1
    assert "28 paths" in uncatalogued[0]
    assert "no VSS release is given (--vss)" in uncatalogued[0]
    assert len(writes) == 1
    assert "3 'vss2dbc' blocks ignored" in writes[0]
    assert "never writes to the car" in writes[0]


def test_every_update_is_what_kuksa_publishes(
    cli: subprocess.CompletedProcess[str], kuksa_mapping: Path, model3: Database, model3_dir: Path
) -> None:
    expected = kuksa_updates(kuksa_blocks(kuksa_mapping), model3, model3_dir / LOG)
    printed = [(u["path"], u["timestamp"], u["value"]) for u in _printed(cli)]

    assert len(expected) > 500
    assert printed == expected


def test_the_tree_declares_units_the_overlay_leaves_to_vss(model3_dir: Path, vss6: Path) -> None:
    tree = _printed(
        run_signals(
            "--dbc", model3_dir / "Model3CAN.dbc", "--mapping", model3_dir / "vss_dbc.json",
            "--replay", model3_dir / LOG, "--speed", "0", "--json", "--no-progress",
        )
    )  # fmt: skip
    overlay_run = run_signals(
        "--dbc", model3_dir / "Model3CAN.dbc", "--mapping", model3_dir / "dbc_overlay.vspec",
        "--vss", vss6,
        "--replay", model3_dir / LOG, "--speed", "0", "--json", "--no-progress",
    )  # fmt: skip
    overlay = _printed(overlay_run)

    def units(updates: list[dict[str, Any]]) -> dict[str, str | None]:
        return {u["path"]: u["unit"] for u in updates}

    assert units(tree)["Vehicle.OBD.Speed"] == "km/h"  # the VSS 4.0 tree says so
    assert units(tree)["Vehicle.OBD.EngineLoad"] == "percent"
    # The overlay declares no unit, and VSS 6.0 has no Vehicle.OBD: published without one.
    assert units(overlay)["Vehicle.OBD.Speed"] is None
    assert units(overlay)["Vehicle.Speed"] == "km/h"  # touchpoint's catalogue

    # The same updates; within one frame in the order of each file's entries.
    def same(updates: list[dict[str, Any]]) -> list[tuple[float, str, object]]:
        return sorted((u["timestamp"], u["path"], u["value"]) for u in updates)

    assert same(overlay) == same(tree)
    (line,) = [w for w in overlay_run.stderr.splitlines() if "signal catalogue" in w]
    assert "4 paths are not in touchpoint's signal catalogue nor in" in line
    assert "Vehicle.OBD." in line
