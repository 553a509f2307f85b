"""The D-Bus bridge's settings (``[dbus]`` of the daemon's configuration)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
