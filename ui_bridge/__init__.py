"""The D-Bus adapter between the agent's cards and the HMI: ``org.touchpoint.Agent1``."""

from ui_bridge.bridge import BridgeError, DbusBridge
from ui_bridge.names import BUS_NAME, CARD_INTERFACE, MANAGER_INTERFACE, ROOT_PATH

__all__ = [
    "BUS_NAME",
    "CARD_INTERFACE",
    "MANAGER_INTERFACE",
    "ROOT_PATH",
    "BridgeError",
    "DbusBridge",
]
