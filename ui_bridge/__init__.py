"""The D-Bus adapter between the agent's cards and the HMI (built by the HMI bridge issue)."""

__all__: list[str] = []
