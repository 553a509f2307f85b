"""Fixtures shared by every test package: where the repository and the shared data are."""

from __future__ import annotations

from pathlib import Path

import pytest


def _find_repo_root() -> Path:
    """The directory holding ``pyproject.toml``, above this file."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise RuntimeError(f"no pyproject.toml above {here}")


REPO_ROOT = _find_repo_root()
#: In CI the repository is cloned with ``shared/`` beside the checkout.
REALDATA_DIR = REPO_ROOT / ".." / "shared" / "realdata"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the directory holding ``pyproject.toml``)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    """The shared recordings; fails (never skips) when they are not beside the checkout."""
    path = REALDATA_DIR.resolve()
    if not path.is_dir():
        pytest.fail(
            f"the shared real data is missing: expected the directory {path} "
            "(`shared/realdata` beside the repository checkout)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def rav4_dir(realdata_dir: Path) -> Path:
    """The 2016 RAV4 recording (comma2k19) and its opendbc DBC file."""
    path = realdata_dir / "rav4_2016"
    wanted = ("toyota_new_mc_pt.dbc", "drive_seg40.log", "drive_seg40_excerpt.log")
    missing = [name for name in wanted if not (path / name).is_file()]
    if missing:
        pytest.fail(f"missing from {path}: {', '.join(missing)}", pytrace=False)
    return path
