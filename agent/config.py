"""The daemon's settings: a TOML file, every setting also from the environment.

Environment variables win over the file: ``TOUCHPOINT_STORE__PATH=/tmp/t.db`` sets
``[store] path``. A file that cannot be read, or values that are wrong, are reported
one by one; where a default can stand in, the daemon goes on with it (a head unit
should not stop reminding its driver over a typo), and only a setting with no sane
default stops it.
"""

from __future__ import annotations

import logging
import tomllib
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
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.consent import Category
from agent.errors import AgentError

_log = logging.getLogger(__name__)

DEFAULT_STATE_DIR: Final = Path("/var/lib/touchpoint")


class ConfigError(AgentError):
    """Settings the daemon cannot run with."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VehicleSettings(_Section):
    """What car this is."""

    #: The provisioned device identity (not the VIN): the cloud topic prefix uses it,
    #: and it is the common name of the car's certificate. ``cloud`` is the backend's.
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "dev-vehicle"
    model: Annotated[str, Field(min_length=1, max_length=64)] = "touchpoint-ref"
    market: Annotated[str, Field(min_length=2, max_length=8)] = "CN"

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "cloud":
            raise ValueError("'cloud' is the backend's identity, not a vehicle's")
        return value


class DbcSettings(_Section):
    """A DBC file, for one bus or (without ``bus``) every bus."""

    file: Path
    bus: str | None = None


class BusSettings(_Section):
    """A live CAN bus."""

    name: Annotated[str, Field(min_length=1, max_length=32)]
    interface: Annotated[str, Field(min_length=1)]
    channel: Annotated[str, Field(min_length=1)]
    options: dict[str, Any] = {}


class EcuSettings(_Section):
    """An ECU to ask for its stored DTCs (physical ISO-TP addressing)."""

    name: Annotated[str, Field(min_length=1, max_length=32)] = "engine"
    request_id: Annotated[int, Field(ge=0, le=0x1FFFFFFF)] = 0x7E0
    response_id: Annotated[int, Field(ge=0, le=0x1FFFFFFF)] = 0x7E8
    extended_id: bool = False
    protocol: Literal["obd", "uds"] = "obd"


class DiagnosticsSettings(_Section):
    """On-demand reads of stored DTCs over ISO-TP (OBD-II service 03 or UDS 0x19 0x02)."""

    #: The live bus to talk on (a name from ``[can] buses``).
    bus: Annotated[str, Field(min_length=1)]
    ecus: Annotated[list[EcuSettings], Field(min_length=1, max_length=16)] = [EcuSettings()]
    #: Read when the ignition comes on, and when the check-engine lamp lights.
    on_drive_cycle: bool = True
    on_lamp: bool = True
    #: Never more often than this.
    min_interval_s: Annotated[float, Field(ge=0)] = 60.0
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0


class CanSettings(_Section):
    """Where signals come from: DBC files, a mapping, and live buses or a replay."""

    mapping: Path
    dbc: Annotated[list[DbcSettings], Field(min_length=1)]
    buses: list[BusSettings] = []
    replay: Path | None = None
    replay_speed: Annotated[float, Field(ge=0)] = 1.0
    queue_capacity: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000
    diagnostics: DiagnosticsSettings | None = None


class StoreSettings(_Section):
    """The SQLite store."""

    path: Path = DEFAULT_STATE_DIR / "touchpoint.db"
    max_events: Annotated[int, Field(ge=100)] = 100_000
    max_bytes: Annotated[int, Field(ge=1024 * 1024)] = 64 * 1024 * 1024


class PolicySettings(_Section):
    """The card policy."""

    max_visible: Annotated[int, Field(ge=1, le=10)] = 3
    quiet_hours: (
        tuple[Annotated[int, Field(ge=0, le=23)], Annotated[int, Field(ge=0, le=23)]] | None
    ) = (22, 7)
    utc_offset_minutes: Annotated[int, Field(ge=-720, le=840)] = 480


class DbusSettings(_Section):
    """The HMI bridge on D-Bus (``org.touchpoint.Agent1``)."""

    #: ``system``, ``session``, or a D-Bus address such as ``unix:path=/run/dbus/x``.
    address: Annotated[str, Field(min_length=1)] = "system"
    locale: Literal["zh-CN", "en"] = "zh-CN"


class CloudSettings(_Section):
    """Cloud sync over MQTT 5 (see the README's MQTT contract)."""

    host: Annotated[str, Field(min_length=1)] = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    #: Mutual TLS: the CA the broker's certificate must chain to (pinned: the system's
    #: CAs are not used), and the car's own certificate and key. ``tls = false`` only
    #: for a broker on loopback during development.
    tls: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 60
    #: How long the broker keeps the car's session (subscriptions, queued downlink)
    #: while it is offline: garages and tunnels last hours, a holiday weeks.
    session_expiry_s: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = 14 * 86_400
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    #: Events per message and bytes per message (events up are batched).
    batch_events: Annotated[int, Field(ge=1, le=1000)] = 200
    batch_bytes: Annotated[int, Field(ge=1024, le=256 * 1024)] = 128 * 1024
    #: Messages published and not yet acknowledged, at most.
    window: Annotated[int, Field(ge=1, le=1000)] = 16
    #: Attempts before an event the broker keeps refusing goes to the dead-letter table.
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 5
    #: The cloud's Ed25519 public keys (key id -> base64 of the 32 raw bytes).
    signing_keys: dict[Annotated[str, Field(min_length=1, max_length=64)], str] = {}
    #: Requests (slots, booking, redemption) expire from the broker after this long.
    request_expiry_s: Annotated[int, Field(ge=10, le=30 * 86_400)] = 7 * 86_400

    @model_validator(mode="after")
    def _tls_files(self) -> Self:
        if self.tls and None in (self.ca_file, self.cert_file, self.key_file):
            raise ValueError("with tls, ca_file, cert_file and key_file are all needed")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self


class ConsentSettings(_Section):
    """Consent granted at the very first start (before the driver has chosen)."""

    defaults: dict[Category, bool] = {}


class DaemonSettings(BaseSettings):
    """Everything ``touchpoint run`` reads."""

    model_config = SettingsConfigDict(
        env_prefix="TOUCHPOINT_", env_nested_delimiter="__", extra="forbid"
    )

    vehicle: VehicleSettings = VehicleSettings()
    can: CanSettings | None = None
    store: StoreSettings = StoreSettings()
    policy: PolicySettings = PolicySettings()
    consent: ConsentSettings = ConsentSettings()
    #: The D-Bus HMI bridge; absent: no D-Bus (the agent still decides and records).
    dbus: DbusSettings | None = None
    #: Cloud sync; absent: events stay in the outbox (up to its budget).
    cloud: CloudSettings | None = None
    #: How often time-based decisions run (expiry, snooze, reminders), in seconds.
    tick_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment overrides the file (passed as init values)."""
        return env_settings, init_settings


def load_settings(path: Path | None) -> tuple[DaemonSettings, list[str]]:
    """Read the TOML file (if any) and the environment.

    Returns:
        The settings and the problems found (each one line, for the log); a value
        that was wrong has been replaced by its default.

    Raises:
        ConfigError: If the settings cannot be made valid by falling back to defaults.
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
    for _ in range(50):  # each round drops at least one bad value
        try:
            return DaemonSettings(**data), problems
        except ValidationError as err:
            dropped = False
            for error in err.errors():
                location = tuple(str(p) for p in error["loc"])
                where = ".".join(location)
                if _drop(data, location):
                    problems.append(
                        f"{path or 'environment'}: {where}: {error['msg']}; using the default"
                    )
                    dropped = True
                else:
                    raise ConfigError(
                        f"{where}: {error['msg']} (set in the environment, or required)"
                    ) from err
            if not dropped:
                raise ConfigError(str(err)) from err
    raise ConfigError("the settings do not converge to valid values")


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
