"""The reference HMI (a terminal UI), its D-Bus client library and a private bus."""
