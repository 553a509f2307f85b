"""The exception hierarchy: one base for touchpoint, one subclass per package."""

from __future__ import annotations


class TouchpointError(Exception):
    """Base of every error touchpoint raises on purpose."""


class AgentError(TouchpointError):
    """An error of the agent core (state, decisions, store, daemon)."""
