"""The agent's persistent state as JSON sections, one per part that changes on its own.

Only the sections an input dirtied are written with its batch. Reading is forgiving of
what a previous version did not write (a missing section is the default), and strict
about what is malformed: a section that does not decode is reported and reset, so one
bad section never stops the daemon.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any, Final

from agent import maintenance as mnt
from agent.benefits import Wallet
from agent.booking import Booking, BookingStatus, Redemption, Slot
from agent.cards import (
    Action,
    ArgValue,
    Card,
    CardKind,
    CardState,
    CloseReason,
    Display,
    Text,
    Urgency,
)
from agent.clock import ClockState, TimeSource
from agent.consent import Category, ConsentState
from agent.core import Agent, AgentState
from agent.documents import ConsentText
from agent.fault_engine import DtcCatalogue
from agent.plan import ServicePlan, ServiceRecord
from agent.policy import ManagerSnapshot
from agent.rule_model import RuleSetDocument, RuleStops
from agent.sections import Section

_log = logging.getLogger(__name__)

#: Every section, in the order they are written.
SECTIONS: Final = tuple(Section)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _number(value: Any) -> float | None:
    """A number (or ``None``) read back; anything else makes the section malformed.

    Sections are checked here, not where the values are used: a wrong type that got
    through would fail every input that touches it, long after the start.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"not a finite number: {value!r}")
    return float(value)


#: No trusted time can be later than this (the year 2200): a larger mark is corruption.
_LATEST_EPOCH: Final = 7_258_118_400.0


def _epoch(value: Any) -> float | None:
    """A trusted-time mark read back: a plausible time since the epoch, or ``None``."""
    number = _number(value)
    if number is not None and not 0 <= number <= _LATEST_EPOCH:
        raise ValueError(f"not a plausible time: {number!r}")
    return number


def _time(value: Any) -> float:
    """A time (seconds since the epoch) read back: a number, never ``None``."""
    number = _number(value)
    if number is None:
        raise TypeError("a time is missing")
    return number


def _integer(value: Any) -> int | None:
    """An integer (or ``None``) read back."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"not an integer: {value!r}")
    return value


def _text(value: Any) -> str:
    """A string read back."""
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value


def _object(value: Any) -> dict[str, Any]:
    """A JSON object read back (``dict()`` would also take a list of pairs)."""
    if not isinstance(value, dict):
        raise TypeError(f"not an object: {value!r}")
    return value


def _strings(value: Any) -> dict[str, str]:
    """A JSON object of strings read back."""
    return {k: _text(v) for k, v in _object(value).items()}


def _start(value: Any) -> dict[str, Any] | None:
    """When a drive or charge began (``None`` if absent).

    Older stores kept a ``[time, value]`` pair, whose time nobody knew to be trusted.
    """
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2:
        return {"wall": _time(value[0]), "trusted": False, "value": value[1]}
    start = _object(value)
    _time(start.get("wall"))
    mono = _number(start.get("mono"))
    return {
        "wall": start["wall"],
        "trusted": start.get("trusted") is True,
        "boot": start.get("boot") if isinstance(start.get("boot"), str) else None,
        "mono": mono,
        "value": start.get("value"),
    }


def _scenes(data: Any) -> dict[str, Any]:
    scenes = dict(_object(data))
    for key in ("cycle_start", "charge_start"):
        if key in scenes:
            start = _start(scenes[key])
            if start is None:
                del scenes[key]
            else:
                scenes[key] = start
    if "cycle_start" in scenes:
        _integer(scenes["cycle_start"]["value"])
    if "charge_start" in scenes:
        _number(scenes["charge_start"]["value"])
    if "charging_sessions" in scenes and _integer(scenes["charging_sessions"]) is None:
        del scenes["charging_sessions"]
    return scenes


def _clock(data: Any) -> ClockState:
    sources = {s.label: s for s in TimeSource}
    readings: dict[str, tuple[float, float]] = {}
    for label, pair in _object(data.get("readings", {})).items():
        if label in sources and isinstance(pair, list) and len(pair) == 2:
            readings[label] = (_time(pair[0]), _time(pair[1]))
    return ClockState(
        last_trusted=_epoch(data.get("last_trusted")),
        last_source=sources.get(str(data.get("last_source")), TimeSource.NONE),
        readings=MappingProxyType(readings),
    )


def _rule_state(data: Any) -> dict[str, dict[str, Any]]:
    return {
        _text(rule_id): {
            "fired": [_time(t) for t in raw.get("fired", [])],
            "total": _integer(raw.get("total", 0)) or 0,
            "last_fired": _number(raw.get("last_fired")),
            "edge": raw.get("edge") is True,
            "last_day": _integer(raw.get("last_day")),
            "version": _integer(raw.get("version")),
        }
        for rule_id, raw in _object(data).items()
    }


def encode(agent: Agent, sections: Collection[Section] | None = None) -> dict[str, str]:
    """The JSON of the given sections (all if ``None``), read straight from the agent.

    Raises:
        ValueError: A name that is no section: its change would otherwise be lost.
    """
    if sections is not None:
        unknown = [s for s in sections if s not in _ENCODERS]
        if unknown:
            raise ValueError(f"not state sections: {sorted(map(str, unknown))}")
    wanted = SECTIONS if sections is None else [s for s in SECTIONS if s in sections]
    return {name.value: _dumps(_ENCODERS[name](agent)) for name in wanted}


def decode(sections: Mapping[str, str]) -> AgentState:
    """Rebuild the state from stored sections; bad sections are logged and reset."""
    values: dict[str, Any] = {}
    for name, text in sections.items():
        decoder = _DECODERS.get(name)
        if decoder is None:
            continue  # a section a newer version wrote: not ours to read
        try:
            values.update(decoder(json.loads(text)))
        except (ValueError, TypeError, LookupError, AttributeError) as err:
            # LookupError, AttributeError: valid JSON of the wrong shape (a list where an
            # object was, a pair with one element).
            _log.error("state section %r does not decode (%s): starting it afresh", name, err)
    return AgentState(**values)


# -- cards -------------------------------------------------------------------------------


def _arg_to_json(value: ArgValue) -> Any:
    if isinstance(value, Text):
        return {"$text": value.to_json()}
    if isinstance(value, tuple):
        return {"$list": [_arg_to_json(v) for v in value]}
    return value


def _arg_from_json(value: Any) -> ArgValue:
    if isinstance(value, dict):
        if "$text" in value:
            return Text.from_json(value["$text"])
        if "$list" in value:
            return tuple(_arg_from_json(v) for v in value["$list"])  # type: ignore[misc]
        raise ValueError(f"unknown argument form {value!r}")
    if isinstance(value, str | int | float | bool):
        return value
    raise ValueError(f"unknown argument {value!r}")


def card_to_json(card: Card) -> dict[str, Any]:
    """A card as JSON."""
    return {
        "id": card.id,
        "key": card.key,
        "kind": card.kind.name,
        "urgency": card.urgency.name,
        "display": card.display.name,
        "title": card.title.to_json(),
        "body": card.body.to_json(),
        "template": card.template,
        "created": card.created,
        "category": card.category.value,
        "priority": card.priority,
        "args": {k: _arg_to_json(v) for k, v in card.args.items()},
        "actions": [{"key": a.key, "label": a.label.to_json()} for a in card.actions],
        "expires": card.expires,
        "rule": card.rule,
        "state": card.state.name,
        "pending": card.pending,
        "shown": card.shown,
        "posted_at": card.posted_at,
        "snooze_until": card.snooze_until,
        "snooze_until_odometer": card.snooze_until_odometer,
        "close_reason": card.close_reason.name,
        "time_trusted": card.time_trusted,
        "note": None if card.note is None else card.note.to_json(),
        "why": dict(card.why),
    }


def card_from_json(data: Mapping[str, Any]) -> Card:
    """A card from :func:`card_to_json`'s form."""
    return Card(
        id=_text(data["id"]),
        key=_text(data["key"]),
        kind=CardKind[data["kind"]],
        urgency=Urgency[data["urgency"]],
        display=Display[data["display"]],
        title=Text.from_json(data["title"]),
        body=Text.from_json(data["body"]),
        template=data["template"],
        created=float(_number(data["created"]) or 0.0),
        category=Category(data["category"]),
        priority=int(data["priority"]),
        args={k: _arg_from_json(v) for k, v in data["args"].items()},
        actions=tuple(Action(a["key"], Text.from_json(a["label"])) for a in data["actions"]),
        expires=_number(data["expires"]),
        rule=data["rule"],
        state=CardState[data["state"]],
        pending=bool(data["pending"]),
        shown=bool(data["shown"]),
        posted_at=_number(data["posted_at"]),
        snooze_until=_number(data["snooze_until"]),
        snooze_until_odometer=_integer(data["snooze_until_odometer"]),
        close_reason=CloseReason[data["close_reason"]],
        time_trusted=data.get("time_trusted", True) is not False,
        note=None if data.get("note") is None else Text.from_json(data["note"]),
        why=data["why"] if isinstance(data.get("why"), dict) else {},
    )


# -- sections ----------------------------------------------------------------------------


def _slot_json(slot: Slot | None) -> Any:
    if slot is None:
        return None
    return {
        "id": slot.id,
        "start": slot.start,
        "dealer": slot.dealer.to_json() if slot.dealer else None,
    }


def _slot(data: Any) -> Slot | None:
    if data is None:
        return None
    dealer = data.get("dealer")
    return Slot(data["id"], float(data["start"]), Text.from_json(dealer) if dealer else None)


def _booking_json(b: Booking) -> dict[str, Any]:
    return {
        "card_key": b.card_key,
        "items": list(b.items),
        "status": b.status.value,
        "slots_request": b.slots_request,
        "slots": [_slot_json(s) for s in b.slots],
        "request_id": b.request_id,
        "slot": _slot_json(b.slot),
        "booking_id": b.booking_id,
        "reason": b.reason,
        "reminded": b.reminded,
        "via": b.via,
        "unanswered": b.unanswered,
    }


def _booking(d: Mapping[str, Any]) -> Booking:
    return Booking(
        card_key=_text(d["card_key"]),
        items=tuple(d["items"]),
        status=BookingStatus(d["status"]),
        slots_request=_text(d["slots_request"]),
        slots=tuple(s for s in (_slot(x) for x in d["slots"]) if s is not None),
        request_id=d["request_id"],
        slot=_slot(d["slot"]),
        booking_id=d["booking_id"],
        reason=d["reason"],
        reminded=bool(d["reminded"]),
        via=_text(d["via"]) if d.get("via") is not None else None,
        unanswered=d.get("unanswered") is True,
    )


def _maintenance_json(m: mnt.MaintenanceState) -> dict[str, Any]:
    return {
        "records": [r.model_dump(mode="json") for r in m.records],
        "notified": m.notified.name,
        "notified_items": list(m.notified_items),
        "dismissed_at": list(m.dismissed_at) if m.dismissed_at else None,
        "booked_until": m.booked_until,
        "last_milestone_km": m.last_milestone_km,
        "last_states": {k: v.name for k, v in m.last_states.items()},
    }


def _maintenance(d: Mapping[str, Any]) -> mnt.MaintenanceState:
    dismissed = d.get("dismissed_at")
    return mnt.MaintenanceState(
        records=tuple(ServiceRecord.model_validate(r) for r in d.get("records", [])),
        notified=mnt.ItemState[d.get("notified", "OK")],
        notified_items=tuple(_text(i) for i in d.get("notified_items", [])),
        dismissed_at=(float(dismissed[0]), int(dismissed[1])) if dismissed else None,
        booked_until=_number(d.get("booked_until")),
        last_milestone_km=_number(d.get("last_milestone_km")),
        last_states={k: mnt.ItemState[v] for k, v in d.get("last_states", {}).items()},
    )


def _cards_json(snapshot: ManagerSnapshot | None) -> dict[str, Any]:
    if snapshot is None:
        return {"cards": [], "shown_log": [], "dismissed": {}}
    return {
        "cards": [card_to_json(c) for c in snapshot.cards],
        "shown_log": [list(x) for x in snapshot.shown_log],
        "dismissed": dict(snapshot.dismissed),
    }


def _cards(d: Mapping[str, Any]) -> ManagerSnapshot:
    return ManagerSnapshot(
        cards=tuple(card_from_json(c) for c in d["cards"]),
        shown_log=tuple((str(k), float(t)) for k, t in d["shown_log"]),
        dismissed={str(k): float(v) for k, v in d["dismissed"].items()},
    )


def _wallet(data: Any) -> Wallet | None:
    return None if data is None else Wallet.model_validate(data)


def _model_or_none(model: Any) -> Any:
    return None if model is None else model.model_dump(mode="json", by_alias=True)


_ENCODERS: Final[dict[Section, Callable[[Agent], Any]]] = {
    Section.VEHICLE: lambda a: {
        "odometer_m": a.vehicle.odometer_m,
        "drive_cycle": a.vehicle.drive_cycle,
        "scenes": dict(a.scenes),
    },
    Section.CLOCK: lambda a: {
        "last_trusted": a.clock.last_trusted,
        "last_source": a.clock.last_source.label,
        "readings": {k: list(v) for k, v in a.clock.readings.items()},
    },
    Section.PLAN: lambda a: _model_or_none(a.plan),
    Section.CATALOGUE: lambda a: _model_or_none(a.catalogue),
    Section.MAINTENANCE: lambda a: _maintenance_json(a.maintenance),
    Section.FAULTS: lambda a: {"announced": dict(a.announced)},
    Section.WALLET: lambda a: {"wallet": _model_or_none(a.wallet), "offered": dict(a.offered)},
    Section.CONSENT: lambda a: a.consent.to_json(),
    # The cloud's rule document changes rarely and is large; the counters change often
    # and are small: two sections, so that a counter never rewrites the document.
    Section.RULES: lambda a: {
        "cloud": _model_or_none(a.rules.cloud_document),
        "stops": _model_or_none(a.rule_stops),
    },
    Section.RULE_STATE: lambda a: a.rules.snapshot(),
    Section.CARDS: lambda a: _cards_json(a.cards.snapshot()),
    Section.DOCUMENTS: lambda a: {
        "versions": dict(a.document_versions),
        "consent_text": _model_or_none(a.consent_text),
    },
    Section.FLOWS: lambda a: {
        "bookings": [_booking_json(b) for b in a.flows.bookings_state()],
        "redemptions": [
            {
                "request_id": r.request_id,
                "coupon_id": r.coupon_id,
                "card_key": r.card_key,
                "unanswered": r.unanswered,
            }
            for r in a.flows.redemptions_state()
        ],
    },
}

_DECODERS: Final[dict[str, Callable[[Any], dict[str, Any]]]] = {
    Section.VEHICLE: lambda d: {
        "odometer_m": _integer(d.get("odometer_m")),
        "drive_cycle": int(d.get("drive_cycle", 0)),
        "scenes": _scenes(d.get("scenes", {})),
    },
    Section.CLOCK: lambda d: {"clock": _clock(d)},
    Section.PLAN: lambda d: {"plan": None if d is None else ServicePlan.model_validate(d)},
    Section.CATALOGUE: lambda d: {
        "catalogue": None if d is None else DtcCatalogue.model_validate(d)
    },
    Section.MAINTENANCE: lambda d: {"maintenance": _maintenance(d)},
    Section.FAULTS: lambda d: {"announced": _strings(d.get("announced", {}))},
    Section.WALLET: lambda d: {
        "wallet": _wallet(d.get("wallet")),
        "offered": _strings(d.get("offered", {})),
    },
    Section.CONSENT: lambda d: {"consent": ConsentState.from_json(d)},
    # Older stores kept the counters inside "rules" (under "state"): still read.
    Section.RULES: lambda d: {
        "cloud_rules": None
        if d.get("cloud") is None
        else RuleSetDocument.model_validate(d["cloud"]),
        "rule_stops": None if d.get("stops") is None else RuleStops.model_validate(d["stops"]),
        **({"rule_state": _rule_state(d["state"])} if "state" in d else {}),
    },
    Section.RULE_STATE: lambda d: {"rule_state": _rule_state(d)},
    Section.CARDS: lambda d: {"cards": _cards(d)},
    Section.DOCUMENTS: lambda d: {
        "document_versions": {
            _text(k): _integer(v) or 0 for k, v in _object(d.get("versions", {})).items()
        },
        "consent_text": None
        if d.get("consent_text") is None
        else ConsentText.model_validate(d["consent_text"]),
    },
    Section.FLOWS: lambda d: {
        "bookings": tuple(_booking(b) for b in d.get("bookings", [])),
        "redemptions": tuple(
            Redemption(
                _text(r["request_id"]),
                _text(r["coupon_id"]),
                _text(r["card_key"]),
                unanswered=r.get("unanswered") is True,
            )
            for r in d.get("redemptions", [])
        ),
    },
}
