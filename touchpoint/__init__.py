"""The touchpoint application: the daemon that wires the packages, its CLI and its tools.

This package's face is kept empty on purpose: the leaf modules that every package may
import (:mod:`touchpoint.errors`, :mod:`touchpoint.version`, :mod:`touchpoint.tasks`,
:mod:`touchpoint.ratelimit`) must not drag the application in with them.
"""

__all__: list[str] = []
