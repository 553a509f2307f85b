"""The agent's root error; the tree's root is :class:`touchpoint.errors.TouchpointError`."""

from __future__ import annotations

from touchpoint.errors import TouchpointError


class AgentError(TouchpointError):
    """An error of the agent core (state, decisions, store)."""


class ActionError(AgentError):
    """A tap the agent cannot carry out; ``code`` names it for the D-Bus error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StoreError(AgentError):
    """The store cannot do what was asked (a full disk that eviction cannot relieve)."""
