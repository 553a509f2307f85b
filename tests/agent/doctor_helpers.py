"""Shared pieces of the doctor's and the outbox command's tests: configs, stores, events."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

from agent.consent import Category
from agent.events import Event, Priority
from agent.store.store import Store
from can_signals.simulator import reference_files
from touchpoint.doctor import Check, Status

_seq = itertools.count(1)


def event(
    kind: str = "card.shown",
    priority: Priority = Priority.NORMAL,
    *,
    time: float,
    category: Category = Category.USAGE_ANALYTICS,
) -> Event:
    """An event as the agent stamps it."""
    seq = next(_seq)
    return Event(
        id=f"ev-{seq:08d}",
        type=kind,
        category=category,
        time=time,
        time_trusted=True,
        boot_id="boot",
        seq=seq,
        priority=priority,
        expires=None,
        payload={"n": seq},
        request_id=f"rq-{seq}" if kind.startswith("request.") else None,
    )


def make_store(
    path: Path,
    events: Sequence[Event] = (),
    *,
    last_trusted: float | None = None,
    readings: dict[str, list[float]] | None = None,
) -> Path:
    """A real store at ``path`` with ``events`` committed, closed again.

    ``readings``: each time source's last reading (system time, source minus system);
    by default the cloud's, right on the system clock at ``last_trusted``.
    """
    store, _ = Store.open(path)
    try:
        if readings is None and last_trusted is not None:
            readings = {"cloud": [last_trusted, 0.2]}
        clock = {"last_trusted": last_trusted, "readings": readings or {}}
        sections = {} if last_trusted is None else {"clock": json.dumps(clock)}
        store.commit(list(events), sections, now=last_trusted)
    finally:
        store.close()
    return path


def toml_config(path: Path, *sections: str, store: Path, vehicle_id: str = "veh-doctor") -> Path:
    """A settings file: the vehicle, the reference car's CAN files, the store, and more."""
    files = reference_files()
    text = "\n".join(
        [
            f'[vehicle]\nid = "{vehicle_id}"\n',
            f'[can]\nmapping = "{files.mapping}"\ndbc = [{{file = "{files.dbc}"}}]',
            'buses = [{name = "can0", interface = "virtual", channel = "doctor-test"}]\n',
            f'[store]\npath = "{store}"\n',
            *sections,
        ]
    )
    path.write_text(text, encoding="utf-8")
    return path


def by_name(checks: Sequence[Check]) -> dict[str, list[Check]]:
    """The findings grouped by name, in order."""
    found: dict[str, list[Check]] = {}
    for check in checks:
        found.setdefault(check.name, []).append(check)
    return found


def only(checks: Sequence[Check], name: str) -> Check:
    """The single finding called ``name``."""
    found = by_name(checks).get(name, [])
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def statuses(checks: Sequence[Check]) -> dict[str, Status]:
    """The worst status of each name."""
    order = [Status.OK, Status.WARN, Status.FAIL]
    return {
        name: max((c.status for c in found), key=order.index)
        for name, found in by_name(checks).items()
    }
