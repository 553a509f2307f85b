"""The D-Bus bridge's errors: :class:`BridgeError` is the package's root."""

from __future__ import annotations

from touchpoint.errors import TouchpointError


class BridgeError(TouchpointError):
    """The bridge cannot serve (the bus is unreachable, the name is taken or refused)."""
