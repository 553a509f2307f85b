"""The daemon's settings: a TOML file, every setting also from the environment.

Environment variables win over the file, key by key: ``TOUCHPOINT_STORE__PATH=/tmp/t.db``
sets ``[store] path`` and leaves the file's other ``[store]`` keys alone; a table or an
array is given as JSON. Both are validated by the same pydantic models. (This loader
replaced pydantic-settings, whose sources for dotenv, CLI and cloud secret stores cost
the daemon about 1 MB of resident memory it never used.)

A file that cannot be read, or values in it that are wrong, are reported one by one;
where a default can stand in, the daemon goes on with it (a head unit should not stop
reminding its driver over a typo), and only a setting with no sane default stops it. A
wrong value in the environment stops it: someone set it on purpose.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.consent import Category
from agent.errors import AgentError

_log = logging.getLogger(__name__)

DEFAULT_STATE_DIR: Final = Path("/var/lib/touchpoint")
#: ``TOUCHPOINT_`` + the key's path joined by ``__``, in upper or lower case.
ENV_PREFIX: Final = "TOUCHPOINT_"
ENV_NESTED_DELIMITER: Final = "__"


class ConfigError(AgentError):
    """Settings the daemon cannot run with."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VehicleSettings(_Section):
    """What car this is."""

    id: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_-]{1,64}$",
            description="The provisioned device identity (not the VIN): the prefix of the "
            "car's MQTT topics and the common name of its certificate. `cloud` is reserved "
            "for the backend.",
        ),
    ] = "dev-vehicle"
    model: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            description="The car model, matched against a card rule's `targeting.models`.",
        ),
    ] = "touchpoint-ref"
    market: Annotated[
        str,
        Field(
            min_length=2,
            max_length=8,
            description="The market the car is sold in, matched against a card rule's "
            "`targeting.markets`.",
        ),
    ] = "CN"

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "cloud":
            raise ValueError("'cloud' is the backend's identity, not a vehicle's")
        return value


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


class StoreSettings(_Section):
    """The SQLite store."""

    path: Annotated[
        Path,
        Field(
            description="The database file (WAL mode: its `-wal` and `-shm` files sit beside it)."
        ),
    ] = DEFAULT_STATE_DIR / "touchpoint.db"
    max_events: Annotated[
        int,
        Field(
            ge=100,
            description="Outbox budget in events: beyond it the lowest-priority, oldest events "
            "are evicted (the driver's requests never are).",
        ),
    ] = 100_000
    max_bytes: Annotated[
        int,
        Field(ge=1024 * 1024, description="Outbox budget in bytes, evicting the same way."),
    ] = 64 * 1024 * 1024


class PolicySettings(_Section):
    """The card policy."""

    max_visible: Annotated[
        int, Field(ge=1, le=10, description="Cards on screen at once, at most.")
    ] = 3
    quiet_hours: Annotated[
        tuple[Annotated[int, Field(ge=0, le=23)], Annotated[int, Field(ge=0, le=23)]] | None,
        Field(
            description="Local hours `[start, end)` in which only critical cards appear "
            "(`[22, 7]` spans midnight)."
        ),
    ] = (22, 7)
    utc_offset_minutes: Annotated[
        int,
        Field(
            ge=-720,
            le=840,
            description="The car's local time zone, in minutes east of UTC: quiet hours, "
            "time-of-day rules and booking times use it.",
        ),
    ] = 480


class DbusSettings(_Section):
    """The HMI bridge on D-Bus (``org.touchpoint.Agent1``)."""

    address: Annotated[
        str,
        Field(
            min_length=1,
            description="`system`, `session`, or a D-Bus address such as `unix:path=/run/dbus/x`.",
        ),
    ] = "system"
    locale: Annotated[
        Literal["zh-CN", "en"],
        Field(description="The initial display language (the HMI can change it)."),
    ] = "zh-CN"


class CloudSettings(_Section):
    """Cloud sync over MQTT 5 (the contract: ``docs/asyncapi.yaml``)."""

    host: Annotated[str, Field(min_length=1, description="The MQTT broker's host name.")] = (
        "localhost"
    )
    port: Annotated[int, Field(ge=1, le=65535, description="The broker's port.")] = 8883
    # Mutual TLS: the CA the broker's certificate must chain to (pinned), and the car's
    # own certificate and key.
    tls: Annotated[
        bool,
        Field(
            description="Mutual TLS; `false` only for a broker on loopback during development. "
            "With TLS, `ca_file`, `cert_file` and `key_file` are all required."
        ),
    ] = True
    ca_file: Annotated[
        Path | None,
        Field(
            description="The CA the broker's certificate must chain to (pinned: the system's "
            "CAs are not used)."
        ),
    ] = None
    cert_file: Annotated[
        Path | None,
        Field(description="The car's certificate (its common name is `[vehicle] id`)."),
    ] = None
    key_file: Annotated[Path | None, Field(description="The car's private key.")] = None
    keepalive_s: Annotated[
        int, Field(ge=5, le=3600, description="MQTT keep-alive interval, in seconds.")
    ] = 60
    session_expiry_s: Annotated[
        int,
        Field(
            ge=0,
            le=0xFFFFFFFF,
            description="How long the broker keeps the car's session (subscriptions, queued "
            "downlink) while it is offline: garages and tunnels last hours, a holiday weeks.",
        ),
    ] = 14 * 86_400
    reconnect_min_s: Annotated[
        float,
        Field(
            gt=0,
            le=60,
            description="The reconnect back-off after a first failure; it doubles with "
            "each failure, and each wait is a random part of it (full jitter).",
        ),
    ] = 1.0
    reconnect_max_s: Annotated[
        float,
        Field(gt=0, le=3600, description="The back-off's ceiling (not below `reconnect_min_s`)."),
    ] = 120.0
    batch_events: Annotated[
        int, Field(ge=1, le=1000, description="Events per uplink message, at most.")
    ] = 200
    batch_bytes: Annotated[
        int,
        Field(ge=1024, le=256 * 1024, description="Bytes of events per uplink message, at most."),
    ] = 128 * 1024
    window: Annotated[
        int,
        Field(ge=1, le=1000, description="Messages published and not yet acknowledged, at most."),
    ] = 16
    max_attempts: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description="Attempts before an event the broker keeps refusing goes to the "
            "dead-letter table.",
        ),
    ] = 5
    signing_keys: Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=64)], str],
        Field(
            description="The cloud's Ed25519 public keys: key id = base64 of the 32 raw bytes. "
            "Several let a key be rotated; a document signed by any other key is refused."
        ),
    ] = {}
    request_expiry_s: Annotated[
        int,
        Field(
            ge=10,
            le=30 * 86_400,
            description="Requests (booking slots, booking, redemption) expire from the broker "
            "after this long, in seconds.",
        ),
    ] = 7 * 86_400

    @model_validator(mode="after")
    def _tls_files(self) -> Self:
        if self.tls and None in (self.ca_file, self.cert_file, self.key_file):
            raise ValueError("with tls, ca_file, cert_file and key_file are all needed")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self


class ConsentSettings(_Section):
    """Consent granted at the very first start (before the driver has chosen)."""

    defaults: Annotated[
        dict[Category, bool],
        Field(
            description="Category = granted, applied at the first start (a store with no consent "
            "yet); the driver's later choices win. Absent categories stay refused; "
            "`service_requests` needs no consent and is ignored here."
        ),
    ] = {}


class DaemonSettings(_Section):
    """Everything ``touchpoint run`` reads."""

    vehicle: Annotated[VehicleSettings, Field(description="Every key has a default.")] = (
        VehicleSettings()
    )
    can: Annotated[
        CanSettings | None,
        Field(description="Absent: the agent runs without CAN signals."),
    ] = None
    store: Annotated[StoreSettings, Field(description="Every key has a default.")] = StoreSettings()
    policy: Annotated[PolicySettings, Field(description="Every key has a default.")] = (
        PolicySettings()
    )
    consent: Annotated[ConsentSettings, Field(description="Absent: nothing is granted.")] = (
        ConsentSettings()
    )
    dbus: Annotated[
        DbusSettings | None,
        Field(description="Absent: no D-Bus (the agent still decides and records)."),
    ] = None
    cloud: Annotated[
        CloudSettings | None,
        Field(description="Absent: events stay in the outbox (up to its budget)."),
    ] = None
    tick_seconds: Annotated[
        float,
        Field(
            gt=0,
            le=60,
            description="How often time-based decisions run (expiry, snooze, reminders), "
            "in seconds.",
        ),
    ] = 1.0


def load_settings(
    path: Path | None, environ: Mapping[str, str] | None = None
) -> tuple[DaemonSettings, list[str]]:
    """Read the TOML file (if any) and the environment (``os.environ`` unless given).

    Returns:
        The settings and the problems found (each one line, for the log); a value
        that was wrong has been replaced by its default.

    Raises:
        ConfigError: If the settings cannot be made valid by falling back to defaults
            (a wrong value in the environment is one: it was set on purpose).
    """
    problems: list[str] = []
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            problems.append(f"{path}: cannot read the config file ({err.strerror}); using defaults")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            problems.append(f"{path}: not valid TOML ({err}); using defaults")
    overrides = environment_overrides(os.environ if environ is None else environ)
    for _ in range(50):  # each round drops at least one bad value
        try:
            return DaemonSettings.model_validate(_merged(data, overrides)), problems
        except ValidationError as err:
            dropped = False
            for error in err.errors():
                location = tuple(str(p) for p in error["loc"])
                where = ".".join(location)
                variable = _variable_for(overrides, location)
                if variable is not None:
                    raise ConfigError(f"{variable} ({where}): {error['msg']}") from err
                if _drop(data, location):
                    problems.append(
                        f"{path or 'environment'}: {where}: {error['msg']}; using the default"
                    )
                    dropped = True
                else:
                    raise ConfigError(f"{where}: {error['msg']} (no default can stand in)") from err
            if not dropped:
                raise ConfigError(str(err)) from err
    raise ConfigError("the settings do not converge to valid values")


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``TOUCHPOINT_*`` variables, as nested TOML-like data.

    A variable whose first part names no section or top-level key is someone else's
    (the test suite's ``TOUCHPOINT_KILL_SEED``, say) and is left alone; an unknown key
    inside a known section is kept, for validation to reject.

    Raises:
        ConfigError: If a table or array is not valid JSON.
    """
    found: list[tuple[list[str], Any]] = []
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
        if keys[0] not in DaemonSettings.model_fields:
            continue
        found.append((keys, _env_value(name, keys, raw)))
    overrides: dict[str, Any] = {}
    for keys, value in sorted(found, key=lambda item: len(item[0])):  # tables, then their keys
        node = overrides
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
    return overrides


def _env_value(name: str, keys: list[str], raw: str) -> Any:
    """``raw`` as the key at ``keys`` takes it: JSON for a table or array, else the string."""
    annotation: Any = DaemonSettings
    for key in keys:
        model = _model_in(annotation)
        if model is None or key not in model.model_fields:
            return raw  # validation names what is wrong with it
        annotation = model.model_fields[key].annotation
    if raw.strip() == "null" and type(None) in _members(annotation):
        return None
    if takes_json(annotation):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{name}: a table or an array is written as JSON ({err})") from err
    return raw


def env_variable(path: Sequence[str]) -> str:
    """The variable for the key at ``path``: ``TOUCHPOINT_STORE__PATH`` for store, path."""
    return (ENV_PREFIX + ENV_NESTED_DELIMITER.join(path)).upper()


def takes_json(annotation: Any) -> bool:
    """Whether a variable for a key of this type is read as JSON (a table or an array)."""
    return any(_is_structured(member) for member in _members(annotation))


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types a value of ``annotation`` may have (the members of a union)."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(m for a in typing.get_args(annotation) for m in _members(a))
    return (annotation,)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _is_structured(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return isinstance(origin, type) and (
        issubclass(origin, (list, tuple, dict, set, frozenset, BaseModel))
    )


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, table by table."""
    merged = dict(base)
    for key, value in overrides.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key] = _merged(below, value)
        else:
            merged[key] = value
    return merged


def _variable_for(overrides: dict[str, Any], location: tuple[str, ...]) -> str | None:
    """The variable that set the value at ``location`` (or the table or array holding it)."""
    node: Any = overrides
    depth = 0
    while depth < len(location) and isinstance(node, dict):
        if location[depth] not in node:
            return None
        node = node[location[depth]]
        depth += 1
    return env_variable(location[:depth])


def _drop(data: dict[str, Any], location: tuple[str, ...]) -> bool:
    """Remove the value at ``location`` (or its nearest droppable parent) from ``data``."""
    for depth in range(len(location), 0, -1):
        node: Any = data
        for key in location[: depth - 1]:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                node = None
                break
        key = location[depth - 1]
        if isinstance(node, dict) and key in node:
            del node[key]
            return True
    return False
