"""Scratch directories on a real disk, for the benchmarks that measure fsync and files.

``tempfile`` puts its files in ``$TMPDIR`` or ``/tmp``, which is a tmpfs on many
systems: an fsync there costs nothing, so an SQLite commit would look many times
cheaper than on the head unit's flash. This module picks the first candidate that is
not memory-backed: the temp directory, ``/var/tmp``, then ``build/`` in the checkout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

#: Filesystems that live in memory: an fsync on them is free.
_MEMORY_FS: Final = frozenset({"tmpfs", "ramfs", "devtmpfs", "overlay-tmpfs"})
_REPO_ROOT: Final = Path(__file__).resolve().parents[1]


def filesystem_type(path: Path) -> str:
    """The type of the filesystem ``path`` lives on (``ext4``, ``tmpfs``...), from /proc/mounts.

    The longest mount point that is a prefix of the resolved path wins; ``unknown``
    when /proc/mounts cannot be read.
    """
    resolved = str(path.resolve())
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return kind
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes spaces in mount points as \040.
        mount = fields[1].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind


def disk_base() -> Path:
    """The first writable candidate directory that is on a real disk.

    Raises:
        RuntimeError: If every candidate is memory-backed or unwritable (the figures
            would be meaningless, so the benchmark refuses rather than prints them).
    """
    candidates = [Path(tempfile.gettempdir()), Path("/var/tmp"), _REPO_ROOT / "build"]
    for candidate in candidates:
        with contextlib.suppress(OSError):
            candidate.mkdir(parents=True, exist_ok=True)
        if not os.access(candidate, os.W_OK):
            continue
        if filesystem_type(candidate) not in _MEMORY_FS:
            return candidate
    tried = ", ".join(f"{c} ({filesystem_type(c)})" for c in candidates)
    raise RuntimeError(f"no disk-backed scratch directory: tried {tried}")


@contextlib.contextmanager
def disk_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory on a real disk, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"touchpoint-bench-{prefix}-", dir=disk_base()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
