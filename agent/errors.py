"""The agent's root error; the tree's root is :class:`touchpoint.errors.TouchpointError`."""

from __future__ import annotations

from touchpoint.errors import TouchpointError


class AgentError(TouchpointError):
    """An error of the agent core (state, decisions, store)."""
