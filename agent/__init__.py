"""The touchpoint agent: vehicle state, decisions, store and the daemon that wires them."""

from agent.errors import AgentError, TouchpointError

__all__ = ["AgentError", "TouchpointError"]
