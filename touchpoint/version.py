"""The installed touchpoint's version, as the D-Bus API and the cloud status report it."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    """The version pip installed, or ``unknown`` when run from a bare source tree."""
    try:
        return metadata.version("touchpoint")
    except metadata.PackageNotFoundError:
        return "unknown"
