"""Interpreters to run the daemon with: as a head unit installs it, and the development venv.

The systemd unit runs ``/usr/bin/touchpoint``: the package installed from a wheel into
the system's Python (``docs/systemd.md``). The development venv differs in ways that
show in resident memory: this machine's pyenv interpreter links ``libpython`` as a
shared library (its relocated data pages count as resident), the package is an
editable install (an import hook), and the test tools sit beside it. So the daemon's
figures are taken on an installed copy, built here: a venv from the system's
``python3`` with touchpoint installed by pip from a copy of the sources, runtime
dependencies only. The development venv is measured as well, for comparison.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Where the system's interpreter is looked for, in order.
SYSTEM_PYTHONS: Final = (Path("/usr/bin/python3"), Path("/usr/local/bin/python3"))
_REPO_ROOT: Final = Path(__file__).resolve().parents[1]
_INSTALL_TIMEOUT_S: Final = 600


@dataclass(frozen=True, slots=True)
class Interpreter:
    """A Python with touchpoint importable, and the ``touchpoint`` script beside it."""

    python: Path
    label: str

    @property
    def entry(self) -> list[str]:
        """``touchpoint`` as this interpreter runs it: the console script if installed."""
        script = self.python.parent / "touchpoint"
        return [str(script)] if script.is_file() else ["-m", "touchpoint.cli"]


def development() -> Interpreter:
    """The interpreter running the benchmark (``make bench``: the development venv)."""
    version = ".".join(map(str, sys.version_info[:3]))
    return Interpreter(
        Path(sys.executable), f"development venv (Python {version}, editable install)"
    )


def installed(directory: Path) -> Interpreter | str:
    """Install touchpoint into a fresh venv of the system's Python under ``directory``.

    Returns:
        The interpreter, or why it could not be built (no system Python 3.11 or later,
        no ``venv`` module, no package index): the caller measures without it.
    """
    base = next((p for p in SYSTEM_PYTHONS if p.is_file()), None)
    if base is None:
        return f"no system Python at {', '.join(map(str, SYSTEM_PYTHONS))}"
    version = _version(base)
    if version is None or version < (3, 11):
        return f"{base} is Python {version}, touchpoint needs 3.11 or later"
    source, venv = directory / "source", directory / "installed"
    source.mkdir(parents=True)
    for name in _sources():
        path = _REPO_ROOT / name
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    python = venv / "bin" / "python"
    steps = (
        [str(base), "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(source)],
    )  # fmt: skip
    for step in steps:
        try:
            subprocess.run(
                step,
                check=True,
                capture_output=True,
                text=True,
                timeout=_INSTALL_TIMEOUT_S,
                env=clean_environment(),
            )
        except (OSError, subprocess.SubprocessError) as err:
            output = getattr(err, "stderr", None) or str(err)
            return f"{' '.join(step[:4])} failed: {output.strip().splitlines()[-1:]}"
    where = _run_python(python, "import agent, touchpoint.cli; print(agent.__file__)")
    if where is None or not Path(where).is_relative_to(venv):
        return f"the installed copy is not what {python} imports ({where})"
    label = f"installed (system Python {'.'.join(map(str, version))} at {base}, wheel)"
    return Interpreter(python, label)


def _sources() -> list[str]:
    """What a wheel is built from: ``pyproject.toml``, the README and the packages it
    names (read from it, so that a new top-level package cannot be left out).
    """
    project = tomllib.loads((_REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns: list[str] = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({pattern.rstrip("*").partition(".")[0] for pattern in patterns})
    return ["pyproject.toml", "README.md", *packages]


def _version(python: Path) -> tuple[int, ...] | None:
    printed = _run_python(python, "import sys; print(*sys.version_info[:3])")
    return None if printed is None else tuple(int(part) for part in printed.split())


def _run_python(python: Path, code: str) -> str | None:
    """What ``python -c code`` prints, run outside the repository; ``None`` if it fails."""
    try:
        result = subprocess.run(
            [str(python), "-c", code],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=python.anchor,
            env=clean_environment(),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def clean_environment() -> dict[str, str]:
    """This process's environment without what would point Python at the sources."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE")
    return {k: v for k, v in os.environ.items() if k not in drop}
