"""The MQTT adapter between the agent and the OEM cloud: events up, documents and answers down."""

__all__: list[str] = []
