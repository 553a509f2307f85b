"""The daemon's settings: a TOML file, every setting also from the environment.

Environment variables win over the file, key by key: ``TOUCHPOINT_STORE__PATH=/tmp/t.db``
sets ``[store] path`` and leaves the file's other ``[store]`` keys alone; a table or an
array is given as JSON. Both are validated by the same pydantic models. (This loader
replaced pydantic-settings, whose sources for dotenv, CLI and cloud secret stores cost
the daemon about 1 MB of resident memory it never used.)

A configuration someone wrote and the daemon cannot read or validate stops it: a file
that cannot be read, is not TOML, or holds a wrong value raises :class:`ConfigError`
naming the file and line of every problem (or the environment variable), and
``touchpoint run`` exits 2 (the unit's ``RestartPreventExitStatus=2`` keeps systemd from
looping). Running on built-in defaults instead would look healthy while it wrote to
another database, with no CAN, no D-Bus and no cloud.
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
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from agent.settings import (
    ConsentSettings,
    PolicySettings,
    RequestSettings,
    StoreSettings,
    TimeSettings,
    VehicleSettings,
)
from can_signals.settings import CanSettings
from cloud_sync.settings import CloudSettings
from touchpoint.errors import TouchpointError
from ui_bridge.settings import DbusSettings

_log = logging.getLogger(__name__)

#: ``TOUCHPOINT_`` + the key's path joined by ``__``, in upper or lower case.
ENV_PREFIX: Final = "TOUCHPOINT_"
ENV_NESTED_DELIMITER: Final = "__"


class ConfigError(TouchpointError):
    """Settings the daemon cannot run with."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    time: Annotated[TimeSettings, Field(description="Every key has a default.")] = TimeSettings()
    requests: Annotated[RequestSettings, Field(description="Every key has a default.")] = (
        RequestSettings()
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


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> DaemonSettings:
    """Read the TOML file (if any) and the environment (``os.environ`` unless given).

    Raises:
        ConfigError: If the file cannot be read or is not TOML, or a value in it or in
            the environment is wrong: every problem, each with its file and line (or
            its variable).
    """
    data: dict[str, Any] = {}
    text = ""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err
    overrides = environment_overrides(os.environ if environ is None else environ)
    try:
        return DaemonSettings.model_validate(_merged(data, overrides))
    except ValidationError as err:
        problems: list[tuple[int, str]] = []  # by line: the order the operator reads
        for error in err.errors():
            location = tuple(str(p) for p in error["loc"])
            where = ".".join(location)
            variable = _variable_for(overrides, location)
            line = line_of(text, location) if path is not None and variable is None else None
            if variable is not None:
                problems.append((0, f"{variable} ({where}): {error['msg']}"))
            elif line is not None:
                problems.append((line, f"{path}:{line}: {where}: {error['msg']}"))
            else:
                problems.append((0, f"{path or 'settings'}: {where}: {error['msg']}"))
        raise ConfigError("\n".join(message for _, message in sorted(problems))) from err


def line_of(text: str, location: Sequence[str]) -> int | None:
    """The line of a TOML text where the key at ``location`` (or its table) is written.

    A plain reading of headers and ``key =`` lines, enough to point an operator at the
    value: the first line whose key path is the longest prefix of ``location``.
    """
    table: tuple[str, ...] = ()
    best: tuple[int, int] | None = None  # (depth matched, line)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name = line.strip("[]").split("#")[0].strip().strip("[]")
            table = tuple(_key_parts(name))
            keys = table
        elif "=" in line:
            keys = (*table, *_key_parts(line.split("=", 1)[0]))
        else:
            continue
        depth = 0
        while depth < min(len(keys), len(location)) and keys[depth] == location[depth]:
            depth += 1
        if depth == len(keys) and depth and (best is None or depth > best[0]):
            best = (depth, number)
    return best[1] if best else None


def _key_parts(key: str) -> list[str]:
    return [part.strip().strip('"').strip("'") for part in key.split(".") if part.strip()]


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
