"""Cloud sync's errors: :class:`SyncError` is the package's root."""

from __future__ import annotations

from touchpoint.errors import TouchpointError


class SyncError(TouchpointError):
    """Cloud sync cannot do what was asked (a key, a certificate, the broker)."""


class SignatureError(SyncError):
    """A signature does not verify, or a key is unknown or malformed."""
