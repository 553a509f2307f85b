"""What the demo and the lab both set up: the development car's settings, as TOML too.

The demo hands them to the daemon it runs inside itself; the lab writes them
to a ``touchpoint.toml`` for ``touchpoint run``. One builder for both, so the car a
developer runs by hand is the car the demo shows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from agent.consent import CONSENTABLE
from agent.settings import ConsentSettings, PolicySettings, StoreSettings, VehicleSettings
from can_signals.settings import BusSettings, CanSettings, DbcSettings
from can_signals.simulator import reference_files
from cloud_sync.reference.private_broker import PrivateBroker
from cloud_sync.settings import CloudSettings
from cloud_sync.signing import SigningKey
from touchpoint.settings import DaemonSettings
from ui_bridge.settings import DbusSettings

#: Quiet hours of one empty span (``[start, end)`` with start = end): a development car
#: shows its cards at any hour. TOML has no null to say "none".
NO_QUIET_HOURS: Final = (0, 0)
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def car_settings(
    directory: Path,
    *,
    vehicle_id: str,
    bus: BusSettings,
    bus_address: str,
    broker: PrivateBroker,
    key: SigningKey,
) -> DaemonSettings:
    """The development car: the reference car's DBC and mapping, everything private.

    Args:
        directory: Where the store goes.
        vehicle_id: The car's identity (its certificate, issued here if needed).
        bus: The CAN bus the car's frames come on.
        bus_address: The D-Bus the agent serves on.
        broker: The private broker, whose CA issues the car's certificate.
        key: The key the cloud signs its documents with.
    """
    files = reference_files()
    cert, private_key = broker.credentials(vehicle_id)
    return DaemonSettings(
        vehicle=VehicleSettings(id=vehicle_id),
        store=StoreSettings(path=directory / "touchpoint.db"),
        can=CanSettings(mapping=files.mapping, dbc=[DbcSettings(file=files.dbc)], buses=[bus]),
        policy=PolicySettings(quiet_hours=NO_QUIET_HOURS),
        # A development car has every consent, so every event reaches the cloud.
        consent=ConsentSettings(defaults=dict.fromkeys(CONSENTABLE, True)),
        dbus=DbusSettings(address=bus_address, locale="en"),
        cloud=CloudSettings(
            host=broker.host,
            port=broker.port,
            ca_file=broker.pki.ca_cert,
            cert_file=cert,
            key_file=private_key,
            signing_keys={key.key_id: key.public_base64()},
            reconnect_min_s=0.2,
            reconnect_max_s=2.0,
        ),
    )


def settings_toml(settings: DaemonSettings, header: Sequence[str] = ()) -> str:
    """``settings`` as a TOML file ``touchpoint run --config`` reads back equal.

    Only what differs from the defaults is written.

    Args:
        settings: What to write.
        header: Comment lines for the top of the file.

    Raises:
        ValueError: If a setting is ``None`` where its default is not (TOML has no null).
    """
    data = settings.model_dump(mode="json", exclude_defaults=True)
    lines = [f"# {line}".rstrip() for line in header]
    _write_table(lines, (), data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    values = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (values or not tables):
        lines.extend(("", f"[{'.'.join(_key(p) for p in path)}]"))
    lines.extend(f"{_key(k)} = {_value((*path, k), v)}" for k, v in values.items())
    for name, sub in tables.items():
        _write_table(lines, (*path, name), sub)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _value(path: tuple[str, ...], value: Any) -> str:
    if value is None:
        raise ValueError(f"{'.'.join(path)}: TOML cannot say 'none'")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # A JSON string is a TOML basic string, given the characters as they are.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(path, item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)} = {_value((*path, k), v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"{'.'.join(path)}: no TOML for {type(value).__name__}")
