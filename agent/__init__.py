"""The touchpoint agent: the domain (vehicle state, decisions, cards) and its store."""

from agent.errors import AgentError

__all__ = ["AgentError"]
