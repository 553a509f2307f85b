"""The CAN signal layer: CAN frames from any car, decoded through a DBC and a mapping to VSS."""

__all__: list[str] = []
