"""The MQTT adapter between the agent and the OEM cloud (built by the cloud sync issue)."""

__all__: list[str] = []
