"""The D-Bus adapter between the agent's cards and the HMI: ``org.touchpoint.Agent1``.

The bridge is :class:`ui_bridge.bridge.DbusBridge`; this face imports nothing, so that
reading the bridge's settings or names never loads dbus-fast.
"""

__all__: list[str] = []
