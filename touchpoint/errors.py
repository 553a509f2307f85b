"""The root of touchpoint's exception tree; each package derives its own root from it.

A leaf module: it imports nothing of the project, so that every package (the CAN layer
included, which knows nothing of the agent) can derive from it.
"""

from __future__ import annotations


class TouchpointError(Exception):
    """Base of every error touchpoint raises on purpose."""
