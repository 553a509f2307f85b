"""How the agent reacts to what happens to the car: maintenance, faults, scenes, summaries.

Part of the pure agent core (:mod:`agent.core`): the transitions of :mod:`agent.vehicle`
come in, the reminders, fault announcements, benefit scenes and usage summaries go out
as agent events (for the rules) and outbox events.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from agent import maintenance as mnt
from agent import vehicle as veh
from agent.benefits import coupon_for_scene
from agent.cards import ArgValue, CardKind
from agent.clock import Now, TimeSource
from agent.consent import Category
from agent.context import CoreContext
from agent.events import EventType, Priority
from agent.fault_engine import active_faults, diff
from agent.local_time import local
from agent.rule_model import AGENT_EVENTS
from agent.sections import Section
from agent.signals import GNSS_FIX, GNSS_NO_FIX

_log = logging.getLogger(__name__)

#: Time-based items change by the day: a tick looks at most this often (seconds).
TIME_CHECK_S = 60.0
#: A lamp a code can explain waits this long for that code before it is announced.
LAMP_SETTLE_S = 2.0
#: Scenes that are agent events only through :meth:`Reactions._scene` (the others, a
#: charge starting, a service done, are raised where they happen).
SCENE_EVENTS: Final = frozenset({"birthday", "first_drive", "odometer_milestone"})


class Reactions:
    """The agent's reactions to vehicle transitions (pure; part of the core)."""

    def __init__(
        self,
        ctx: CoreContext,
        *,
        announced: Mapping[str, str],
        scenes: Mapping[str, Any],
        offered: Mapping[str, str],
    ) -> None:
        self._ctx = ctx
        #: Faults announced to the driver (code: severity).
        self._announced: dict[str, str] = dict(announced)
        #: What the scenes remember: drive and charging starts, sessions, first drive.
        self._scenes: dict[str, Any] = dict(scenes)
        #: Scene occurrences already offered a coupon (occurrence: coupon id).
        self._offered: dict[str, str] = dict(offered)
        # Where the odometer next matters, and when time last did (not persisted: the
        # first reading after a start looks afresh).
        self._next_check_m = -math.inf
        self._last_time_check = -math.inf
        self._stale = True
        # Generic lamps waiting for the code that explains them, since when (monotonic).
        self._unexplained_since: dict[str, float] = {}

    @property
    def announced(self) -> Mapping[str, str]:
        """Faults announced to the driver (code: severity)."""
        return self._announced

    @property
    def scenes(self) -> Mapping[str, Any]:
        """What the scenes remember."""
        return self._scenes

    @property
    def offered(self) -> Mapping[str, str]:
        """Scene occurrences already offered a coupon."""
        return self._offered

    def forget_driver(self) -> None:
        """Forget the driver's scenes and offers (what the car did stays: first drive)."""
        self._offered = {}
        self._scenes = {"first_drive_done": True} if self._scenes.get("first_drive_done") else {}

    @property
    def lamps_waiting(self) -> bool:
        """Whether a lamp waits to be announced (the tick must look again)."""
        return bool(self._unexplained_since)

    def invalidate(self) -> None:
        """Look again at the next tick or odometer reading.

        For changes made outside a check: the plan, the history, a dismissal, a booking.
        """
        self._stale = True
        self._next_check_m = -math.inf

    def maybe_check_maintenance(self, now: Now) -> None:
        """On a tick: look when something changed, or once a minute for time-based items."""
        if self._stale or now.monotonic - self._last_time_check >= TIME_CHECK_S:
            self.check_maintenance(now)

    def on_transition(self, change: veh.Change, now: Now, monotonic: float) -> bool:
        """React to one transition; returns whether maintenance needs a fresh look."""
        t = change.transition
        recheck = False
        if t is veh.Transition.ODOMETER_CHANGED:
            self._ctx.mark_dirty(Section.VEHICLE)
            odometer = self._ctx.vehicle.odometer_m
            recheck = self._corrected(change, now) or (
                odometer is not None and odometer >= self._next_check_m
            )
            before = self._ctx.maintenance
            after, reached = mnt.milestone(self._ctx.plan, before, self._ctx.vehicle.odometer_m)
            if after is not before:
                self._ctx.set_maintenance(after)  # the milestone mark moved
            if reached is not None:
                self._scene(
                    "odometer_milestone", f"milestone:{reached:.0f}", now, milestone_km=reached
                )
        elif t is veh.Transition.FAULTS_CHANGED:
            self.check_faults(now)
        elif t is veh.Transition.SERVICE_RESET:
            self._service_reset(now)
        elif t is veh.Transition.GNSS_TIME:
            self._gnss_time(change, monotonic)
        elif t is veh.Transition.DRIVE_CYCLE_STARTED:
            self._scenes["cycle_start"] = self._start(now, self._ctx.vehicle.odometer_m)
            self._ctx.mark_dirty(Section.VEHICLE)
            if not self._scenes.get("first_drive_done"):
                self._scenes["first_drive_done"] = True
                self._scene("first_drive", "first_drive", now)
        elif t is veh.Transition.DRIVE_CYCLE_ENDED:
            self._drive_summary(now)
        elif t is veh.Transition.CHARGING_STARTED:
            session = int(self._scenes.get("charging_sessions", 0)) + 1
            self._scenes["charging_sessions"] = session
            self._scenes["charge_start"] = self._start(now, change.detail.get("soc"))
            # The session counter names the scene's occurrence: a counter lost at a
            # restart would reuse an occurrence already offered, and offer nothing.
            self._ctx.mark_dirty(Section.VEHICLE)
            self._scene("charging_started", f"charging:{session}", now)
        elif t is veh.Transition.CHARGING_STOPPED:
            self._charging_summary(change, now)
        if t.value in AGENT_EVENTS:
            self._ctx.agent_event(t.value, dict(change.detail), now)  # type: ignore[arg-type]
        return recheck

    def _corrected(self, change: veh.Change, now: Now) -> bool:
        """An odometer that went down; only the signal layer's recovery does that."""
        before_m = change.detail.get("from")
        odometer = self._ctx.vehicle.odometer_m
        if not isinstance(before_m, int) or odometer is None or odometer >= before_m:
            return False
        # The value before was wrong: say so, and judge what is due from the real one.
        self._ctx.note(
            EventType.ODOMETER_CORRECTED, Category.VEHICLE_HEALTH, now, Priority.NORMAL,
            from_km=round(before_m / 1000, 1), to_km=round(odometer / 1000, 1),
        )  # fmt: skip
        wrong = self._ctx.maintenance
        self._ctx.set_maintenance(mnt.after_odometer_correction(wrong))
        if wrong.notified > mnt.ItemState.OK:
            # The episode the wrong value started is over; what the real one makes due
            # is told afresh by the next look.
            self._ctx.agent_event("maintenance_ok", {}, now)
        self._next_check_m = -math.inf
        return True

    def _gnss_time(self, change: veh.Change, monotonic: float) -> None:
        # A receiver without a fix still sends its clock, often all ones or its epoch:
        # only a time with a fix is a time.
        fix = self._ctx.vehicle.value(GNSS_FIX)
        if not isinstance(fix, str) or fix == GNSS_NO_FIX:
            _log.debug("ignoring a GNSS time without a fix (%r)", fix)
            return
        text = str(change.detail.get("time"))
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            _log.warning("ignoring a GNSS time that is not ISO 8601: %r", text)
            return
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # GNSS time is UTC
        self._ctx.trust_time(moment.timestamp(), monotonic, TimeSource.GNSS)

    def check_maintenance(self, now: Now) -> None:
        """Assess the plan and remind the driver if the engine decides to."""
        self._stale = False
        self._last_time_check = now.monotonic
        assessment = mnt.assess(self._ctx.plan, self._ctx.maintenance, self._ctx.vehicle, now)
        before = self._ctx.maintenance
        after, reminder = mnt.decide(self._ctx.plan, before, assessment, self._ctx.vehicle, now)
        if after != before:
            self._ctx.set_maintenance(after)
        if before.notified > mnt.ItemState.OK and after.notified is mnt.ItemState.OK:
            self._ctx.agent_event("maintenance_ok", {}, now)
        self._next_check_m = mnt.next_boundary(
            self._ctx.plan, self._ctx.maintenance, self._ctx.vehicle.odometer_m
        )
        if reminder is None:
            return
        payload = mnt.assessment_payload(assessment, self._ctx.vehicle)
        payload |= {
            "escalated": reminder.escalated,
            "resurfaced": reminder.resurfaced,
            "dealer_id": self._ctx.wallet.dealer_id if self._ctx.wallet else None,
            "booked": self._ctx.booked("maintenance"),
        }
        self._ctx.note(
            EventType.MAINTENANCE_REMINDER, Category.VEHICLE_HEALTH, now, Priority.HIGH, **payload
        )
        odometer = self._ctx.vehicle.odometer_m
        attrs: dict[str, ArgValue] = {
            "state": reminder.state.name,
            "items": tuple(a.item.name.text() for a in reminder.items),
            "item_ids": tuple(a.item.id for a in reminder.items),
            "odometer_km": round(odometer / 1000) if odometer is not None else 0,
        }
        self._ctx.agent_event("maintenance_reminder", attrs, now)

    def check_faults(self, now: Now) -> None:
        """Announce faults that appeared and retract those that cleared.

        A generic lamp (one a code can explain: the check-engine light) is lit a moment
        before the code behind it reaches the bus: it waits ``LAMP_SETTLE_S`` for that
        code, so the driver sees "cylinder misfire", not "check engine light" replaced a
        second later.
        """
        faults = active_faults(self._ctx.catalogue, self._ctx.vehicle.faults)
        for code in list(self._unexplained_since):
            if code not in faults:
                del self._unexplained_since[code]
        for code, fault in list(faults.items()):
            if fault.entry.explained_by is None or code in self._announced:
                continue
            since = self._unexplained_since.setdefault(code, now.monotonic)
            if now.monotonic - since < LAMP_SETTLE_S:
                del faults[code]  # not yet
        appeared, cleared = diff(self._announced, faults)
        groups = {self._group_of(code) for code in cleared}
        # Each touched group's lead as it was, for a rule keyed by the code, not the group.
        leads = {g: self._lead(g) for g in groups}
        for fault in appeared:
            self._announced[fault.code] = fault.entry.severity
            self._ctx.note(
                EventType.FAULT_DETECTED,
                Category.VEHICLE_HEALTH,
                now,
                Priority.HIGH,
                code=fault.code,
                severity=fault.entry.severity,
                odometer_km=_km(self._ctx.vehicle.odometer_m),
            )
            groups.add(fault.group)
        for code in cleared:
            del self._announced[code]
            self._ctx.note(
                EventType.FAULT_CLEARED, Category.VEHICLE_HEALTH, now, Priority.HIGH, code=code
            )
        # One card per group of codes that tell of one problem: posted (or updated in
        # place) with every active code of the group, closed when the last one clears.
        for group in sorted(groups):
            members = sorted(
                (f for f in faults.values() if f.group == group and f.code in self._announced),
                key=lambda f: (-f.severity, -f.entry.specificity(), f.code),
            )
            if not members:
                lead_code = leads.get(group) or group
                self._ctx.agent_event("fault_cleared", {"code": lead_code, "group": group}, now)
                continue
            lead = members[0]
            self._ctx.agent_event(
                "fault_detected",
                {
                    "code": lead.code,
                    "group": group,
                    "codes": tuple(sorted(f.code for f in members)),
                    "severity": lead.entry.severity,
                    "title": lead.entry.title.text(),
                    "advice": lead.entry.advice.text(),
                },
                now,
            )
        if appeared or cleared:
            self._ctx.mark_dirty(Section.FAULTS)

    def _lead(self, group: str) -> str | None:
        """The code a group's card was last posted for (most severe, most specific)."""
        catalogue = self._ctx.catalogue
        members = [c for c in self._announced if self._group_of(c) == group]
        if not members:
            return None
        return min(
            members,
            key=lambda c: (-catalogue.lookup(c).level, -catalogue.lookup(c).specificity(), c),
        )

    def _group_of(self, code: str) -> str:
        """The card group of a code (by the catalogue in effect)."""
        return self._ctx.catalogue.lookup(code).group or code

    def _service_reset(self, now: Now) -> None:
        record = mnt.reset_record(
            self._ctx.plan, self._ctx.maintenance, self._ctx.vehicle.odometer_m, now
        )
        if record is None:
            return
        self._ctx.set_maintenance(mnt.on_serviced(self._ctx.maintenance, record))
        self._ctx.note(
            EventType.SERVICE_RESET,
            Category.VEHICLE_HEALTH,
            now,
            Priority.HIGH,
            items=list(record.items),
            odometer_km=record.odometer_km,
        )
        self._scene("service_completed", f"service:{record.odometer_km:.0f}", now)
        self._ctx.agent_event("service_completed", {"items": record.items}, now)
        self.check_maintenance(now)

    def _scene(self, scene: str, occurrence: str, now: Now, **attrs: ArgValue) -> None:
        """A scene happened: offer the wallet's coupon for it, once per occurrence.

        A scene nothing else announces is also an agent event for rules (a birthday
        campaign), raised once per occurrence too.
        """
        raised = f"raised:{occurrence}"
        if scene in SCENE_EVENTS and not self._scenes.get(raised):
            self._scenes[raised] = True
            self._ctx.mark_dirty(Section.VEHICLE)
            self._ctx.agent_event(scene, attrs, now)
        if occurrence in self._offered:
            return
        coupon = coupon_for_scene(
            self._ctx.wallet, scene, now.wall, trusted=now.trusted, offered=self._open_coupons()
        )
        if coupon is None:
            return
        self._offered[occurrence] = coupon.id
        self._ctx.mark_dirty(Section.WALLET)
        self._ctx.note(
            EventType.BENEFIT_OFFERED,
            Category.MARKETING,
            now,
            Priority.NORMAL,
            coupon_id=coupon.id,
            scene=scene,
        )
        self._ctx.agent_event(
            "benefit_available",
            {
                "coupon_id": coupon.id,
                "coupon_title": coupon.title.text(),
                "coupon_body": coupon.body.text(),
                "scene": scene,
                **attrs,
            },
            now,
        )

    def _open_coupons(self) -> list[str]:
        return [
            str(c.args.get("coupon_id"))
            for c in self._ctx.open_cards()
            if c.kind is CardKind.BENEFIT
        ]

    def birthday(self, now: Now) -> None:
        """The member's birthday (local date, trusted clock) is a benefit scene."""
        if not now.trusted or self._ctx.wallet is None or self._ctx.wallet.birthday is None:
            return
        today = local(now.wall, self._ctx.config.policy.zone)
        if today.strftime("%m-%d") == self._ctx.wallet.birthday:
            self._scene("birthday", f"birthday:{today.year}", now)

    def _start(self, now: Now, value: object) -> dict[str, Any]:
        """When a drive or a charge began, measurable whichever clock survives till its end."""
        return {
            "wall": now.wall,
            "trusted": now.trusted,
            "boot": self._ctx.boot_id,
            "mono": now.monotonic,
            "value": value,
        }

    def _duration_min(self, start: Mapping[str, Any], now: Now) -> float | None:
        """Minutes since ``start``, never negative; ``None`` when no clock can tell.

        On the monotonic clock within a run, on trusted wall times across runs.
        """
        if start.get("boot") == self._ctx.boot_id and isinstance(start.get("mono"), float):
            elapsed: float = now.monotonic - start["mono"]
        elif start.get("trusted") is True and now.trusted:
            elapsed = now.wall - float(start["wall"])
        else:
            return None
        return round(elapsed / 60, 1) if elapsed >= 0 else None

    def _drive_summary(self, now: Now) -> None:
        start = self._scenes.pop("cycle_start", None)
        self._ctx.mark_dirty(Section.VEHICLE)
        if not start:
            return
        odometer = start.get("value")
        distance = None
        if isinstance(odometer, int) and self._ctx.vehicle.odometer_m is not None:
            driven = self._ctx.vehicle.odometer_m - odometer
            distance = round(driven / 1000, 1) if driven >= 0 else None
        self._ctx.note(
            EventType.DRIVE_SUMMARY,
            Category.USAGE_ANALYTICS,
            now,
            Priority.LOW,
            distance_km=distance,
            duration_min=self._duration_min(start, now),
        )

    def _charging_summary(self, change: veh.Change, now: Now) -> None:
        start = self._scenes.pop("charge_start", None)
        if not start:
            return
        self._ctx.mark_dirty(Section.VEHICLE)
        self._ctx.note(
            EventType.CHARGING_SESSION,
            Category.USAGE_ANALYTICS,
            now,
            Priority.LOW,
            soc_from=start.get("value"),
            soc_to=change.detail.get("soc"),
            duration_min=self._duration_min(start, now),
        )


def _km(odometer_m: int | None) -> float | None:
    """The odometer in km (one decimal), if known."""
    return None if odometer_m is None else round(odometer_m / 1000, 1)
