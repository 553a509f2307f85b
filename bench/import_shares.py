"""Where the daemon's memory goes: the resident memory each imported library adds.

The daemon's footprint is mostly code: the libraries it imports. For one set of the
daemon's modules (what ``touchpoint run`` imports for a given configuration), a first
subprocess imports them and lists every module that got loaded; a second imports them
again library by library, in the order the libraries load (the interpreter and the
standard library first), each library with every one of its modules the daemon loaded
(``paho.mqtt.client``, not only ``paho``), and reads ``VmRSS`` after each: the
difference is that library's share. Each library is charged with what it loads first
(pydantic's share includes ``typing_extensions``, say), so the shares add up to the total.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Final

from bench.report import Row

#: The daemon's modules for each configuration the benchmarks run, and whether it loads
#: ``ssl`` (``touchpoint run`` leaves it out when nothing it runs may use TLS:
#: :func:`touchpoint.commands.run.leave_out_tls`).
CONFIGURATIONS: Final[dict[str, tuple[tuple[str, ...], bool]]] = {
    "cloud only (the drain)": (
        ("touchpoint.commands.run", "touchpoint.daemon", "cloud_sync.sync"),
        True,
    ),
    "CAN, no D-Bus, no cloud (the drive)": (
        (
            "touchpoint.commands.run",
            "touchpoint.daemon",
            "can_signals.pipeline",
            "can_signals.yaml_reader",
        ),
        False,
    ),
    "CAN, D-Bus and cloud": (
        (
            "touchpoint.commands.run",
            "touchpoint.daemon",
            "can_signals.pipeline",
            "can_signals.yaml_reader",
            "ui_bridge.bridge",
            "cloud_sync.sync",
        ),
        True,
    ),
}
#: The project's own packages, charged together.
_OURS: Final = ("agent", "can_signals", "ui_bridge", "cloud_sync", "touchpoint")

_LIST = """
import importlib, json, sys
before = set(sys.modules)
if sys.argv[1] == "no-tls":
    sys.modules["ssl"] = None
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps([m for m in sys.modules if m not in before]))
"""

_MEASURE = """
import gc, importlib, json, sys
if sys.argv[2] == "no-tls":
    sys.modules["ssl"] = None
def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
shares = [("interpreter", rss())]
for name in json.loads(sys.argv[1]):
    before = rss()
    for module in name.split("+"):
        try:
            importlib.import_module(module)
        except ImportError:  # an extension only its package can load (nacl's _sodium)
            pass
        except Exception:  # a module its package sets up under another name  # noqa: BLE001, S110
            pass
    gc.collect()
    shares.append((name, rss() - before))
print(json.dumps(shares))
"""


@dataclass(frozen=True, slots=True)
class Share:
    """One library's resident memory."""

    library: str
    mib: float


def shares(modules: tuple[str, ...], *, tls: bool) -> list[Share]:
    """The resident memory each library adds when ``modules`` are imported (without
    ``ssl`` unless ``tls``, as the daemon imports them).
    """
    flag = "tls" if tls else "no-tls"
    listed = subprocess.run(
        [sys.executable, "-c", _LIST, flag, *modules], capture_output=True, text=True, check=True
    )
    loaded: list[str] = json.loads(listed.stdout)
    # Every loaded module under its top-level name, the libraries in the order they load
    # (a parent package enters sys.modules before its submodules).
    libraries: dict[str, list[str]] = {}
    for module in loaded:
        libraries.setdefault(module.partition(".")[0], []).append(module)
    stdlib = [
        m for top, found in libraries.items() if top in sys.stdlib_module_names for m in found
    ]
    third = [
        "+".join(found)
        for top, found in libraries.items()
        if top not in sys.stdlib_module_names and top not in _OURS and not top.startswith("_")
    ]
    ours = [m for top in _OURS for m in libraries.get(top, [])]
    # The standard library as one share, each third-party library as its own, ours last
    # (with the modules named, so that what they load is charged to them).
    groups = ["+".join(stdlib), *third, "+".join(ours + list(modules))]
    measured = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(groups), flag],
        capture_output=True,
        text=True,
        check=True,
    )
    out: list[Share] = []
    for name, size in json.loads(measured.stdout):
        label = name
        if name == groups[0]:
            label = "standard library"
        elif name == groups[-1]:
            label = "touchpoint's own packages"
        else:
            label = name.partition(".")[0].partition("+")[0]
        out.append(Share(label, size / 2**20))
    return out


def rows(configuration: str, minimum_mib: float = 0.3) -> tuple[Row, ...]:
    """The shares of one configuration as table rows (small libraries summed)."""
    modules, tls = CONFIGURATIONS[configuration]
    found = shares(modules, tls=tls)
    total = sum(s.mib for s in found)
    big = [s for s in found if s.mib >= minimum_mib]
    small = total - sum(s.mib for s in big)
    out = [Row(f"{s.library} ({100 * s.mib / total:.0f} %)", s.mib, "MiB", digits=1) for s in big]
    out.append(Row(f"other libraries under {minimum_mib} MiB each", small, "MiB", digits=1))
    out.append(Row("total imported (no data yet)", total, "MiB", digits=1))
    return tuple(out)
