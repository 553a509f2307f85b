"""The interfaces' introspection XML, published in ``ui_bridge/interfaces/``.

The D-Bus convention installs one file per interface in
``/usr/share/dbus-1/interfaces/<interface>.xml`` for code generators and documentation.
They are generated from the service classes (``python -m ui_bridge.introspection``)
and a test compares them with what a running service really exports.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from agent.cards import Card, CardKind, Display, Text, Urgency
from agent.consent import Category
from ui_bridge.card_object import CardObject
from ui_bridge.manager import ConsentInterface, ManagerInterface

DIRECTORY: Final = Path(__file__).resolve().parent / "interfaces"
_HEADER: Final = (
    '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
    ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
)


class _Stub:
    """Enough of the bridge for the interfaces to be built (only their shape is read)."""

    locale = "en"
    version = "1"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        raise AttributeError(name)


def _interfaces() -> list[Any]:
    stub: Any = _Stub()
    card = Card(
        id="00000000-0000-7000-8000-000000000000", key="k", kind=CardKind.MAINTENANCE,
        urgency=Urgency.NORMAL, display=Display.PARKED_ONLY, title=Text("", ""),
        body=Text("", ""), template="", created=0.0, category=Category.USAGE_ANALYTICS,
    )  # fmt: skip
    return [CardObject(card, stub), ManagerInterface(stub), ConsentInterface(stub)]


def render(interface: Any) -> str:
    """The introspection XML of one interface, as a standalone document."""
    node = ET.Element("node")
    node.append(interface.introspect().to_xml())
    ET.indent(node)
    return _HEADER + ET.tostring(node, encoding="unicode") + "\n"


def files() -> dict[str, str]:
    """``{file name: XML}`` for every interface touchpoint serves."""
    return {f"{i.name}.xml": render(i) for i in _interfaces()}


def main() -> int:
    """Rewrite the files in ``ui_bridge/interfaces/``."""
    DIRECTORY.mkdir(exist_ok=True)
    for name, text in files().items():
        (DIRECTORY / name).write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote ui_bridge/interfaces/{name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
