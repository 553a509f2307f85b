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
