"""How the agent reacts to what happens to the car: maintenance, faults, scenes, summaries.

Part of the pure agent core (:mod:`agent.core`): the transitions of :mod:`agent.vehicle`
come in, the reminders, fault announcements, benefit scenes and usage summaries go out
as agent events (for the rules) and outbox events.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from agent import maintenance as mnt
from agent import vehicle as veh
from agent.benefits import coupon_for_scene
from agent.cards import ArgValue, CardKind
from agent.clock import Now, TimeSource
from agent.consent import Category
from agent.events import Priority
from agent.fault_engine import active_faults, diff
from agent.rule_model import AGENT_EVENTS

if TYPE_CHECKING:
    from agent.core import Agent

_log = logging.getLogger(__name__)

#: Time-based items change by the day: a tick looks at most this often (seconds).
TIME_CHECK_S = 60.0
#: A lamp a code can explain waits this long for that code before it is announced.
LAMP_SETTLE_S = 2.0


class Reactions:
    """The agent's reactions to vehicle transitions (pure; part of the core)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        # Where the odometer next matters, and when time last did (not persisted: the
        # first reading after a start looks afresh).
        self._next_check_m = -math.inf
        self._last_time_check = -math.inf
        self._stale = True
        # Generic lamps waiting for the code that explains them, since when (monotonic).
        self._unexplained_since: dict[str, float] = {}

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
            self._agent.mark_dirty("vehicle")
            odometer = self._agent.vehicle.odometer_m
            recheck = odometer is not None and odometer >= self._next_check_m
            before = self._agent.maintenance
            self._agent.maintenance, reached = mnt.milestone(
                self._agent.plan, before, self._agent.vehicle.odometer_m
            )
            if self._agent.maintenance is not before:
                self._agent.mark_dirty("maintenance")  # the milestone mark moved
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
            self._agent.scenes["cycle_start"] = [now.wall, self._agent.vehicle.odometer_m]
            self._agent.mark_dirty("vehicle")
            if not self._agent.scenes.get("first_drive_done"):
                self._agent.scenes["first_drive_done"] = True
                self._scene("first_drive", "first_drive", now)
        elif t is veh.Transition.DRIVE_CYCLE_ENDED:
            self._drive_summary(now)
        elif t is veh.Transition.CHARGING_STARTED:
            session = int(self._agent.scenes.get("charging_sessions", 0)) + 1
            self._agent.scenes["charging_sessions"] = session
            self._agent.scenes["charge_start"] = [now.wall, change.detail.get("soc")]
            # The session counter names the scene's occurrence: a counter lost at a
            # restart would reuse an occurrence already offered, and offer nothing.
            self._agent.mark_dirty("vehicle")
            self._scene("charging_started", f"charging:{session}", now)
        elif t is veh.Transition.CHARGING_STOPPED:
            self._charging_summary(change, now)
        if t.value in AGENT_EVENTS:
            self._agent.agent_event(t.value, dict(change.detail), now)  # type: ignore[arg-type]
        return recheck

    def _gnss_time(self, change: veh.Change, monotonic: float) -> None:
        text = str(change.detail.get("time"))
        try:
            wall = datetime.fromisoformat(text).timestamp()
        except ValueError:
            _log.warning("ignoring a GNSS time that is not ISO 8601: %r", text)
            return
        self._agent.clock = self._agent.clock.set_trusted(wall, monotonic, TimeSource.GNSS)
        self._agent.mark_dirty("clock")

    def check_maintenance(self, now: Now) -> None:
        """Assess the plan and remind the driver if the engine decides to."""
        self._stale = False
        self._last_time_check = now.monotonic
        assessment = mnt.assess(self._agent.plan, self._agent.maintenance, self._agent.vehicle, now)
        before = self._agent.maintenance
        self._agent.maintenance, reminder = mnt.decide(
            self._agent.plan, before, assessment, self._agent.vehicle, now
        )
        if (
            before.notified > mnt.ItemState.OK
            and self._agent.maintenance.notified is mnt.ItemState.OK
        ):
            self._agent.agent_event("maintenance_ok", {}, now)
        if self._agent.maintenance != before:
            self._agent.mark_dirty("maintenance")
        self._next_check_m = mnt.next_boundary(
            self._agent.plan, self._agent.maintenance, self._agent.vehicle.odometer_m
        )
        if reminder is None:
            return
        payload = mnt.assessment_payload(assessment, self._agent.vehicle)
        payload |= {
            "escalated": reminder.escalated,
            "resurfaced": reminder.resurfaced,
            "dealer_id": self._agent.wallet.dealer_id if self._agent.wallet else None,
            "booked": self._agent.flows.booked("maintenance"),
        }
        self._agent.note(
            "maintenance.reminder", Category.VEHICLE_HEALTH, now, Priority.HIGH, **payload
        )
        odometer = self._agent.vehicle.odometer_m
        attrs: dict[str, ArgValue] = {
            "state": reminder.state.name,
            "items": tuple(a.item.name.text() for a in reminder.items),
            "item_ids": tuple(a.item.id for a in reminder.items),
            "odometer_km": round(odometer / 1000) if odometer is not None else 0,
        }
        self._agent.agent_event("maintenance_reminder", attrs, now)

    def check_faults(self, now: Now) -> None:
        """Announce faults that appeared and retract those that cleared.

        A generic lamp (one a code can explain: the check-engine light) is lit a moment
        before the code behind it reaches the bus: it waits ``LAMP_SETTLE_S`` for that
        code, so the driver sees "cylinder misfire", not "check engine light" replaced a
        second later.
        """
        faults = active_faults(self._agent.catalogue, self._agent.vehicle.faults)
        for code in list(self._unexplained_since):
            if code not in faults:
                del self._unexplained_since[code]
        for code, fault in list(faults.items()):
            if fault.entry.explained_by is None or code in self._agent.announced:
                continue
            since = self._unexplained_since.setdefault(code, now.monotonic)
            if now.monotonic - since < LAMP_SETTLE_S:
                del faults[code]  # not yet
        appeared, cleared = diff(self._agent.announced, faults)
        for fault in appeared:
            entry = fault.entry
            self._agent.announced[fault.code] = entry.severity
            self._agent.note(
                "fault.detected",
                Category.VEHICLE_HEALTH,
                now,
                Priority.HIGH,
                code=fault.code,
                severity=entry.severity,
                odometer_km=self._agent.odometer_km(),
            )
            self._agent.agent_event(
                "fault_detected",
                {
                    "code": fault.code,
                    "severity": entry.severity,
                    "title": entry.title.text(),
                    "advice": entry.advice.text(),
                },
                now,
            )
        for code in cleared:
            del self._agent.announced[code]
            self._agent.note(
                "fault.cleared", Category.VEHICLE_HEALTH, now, Priority.HIGH, code=code
            )
            self._agent.agent_event("fault_cleared", {"code": code}, now)
        if appeared or cleared:
            self._agent.mark_dirty("faults")

    def _service_reset(self, now: Now) -> None:
        record = mnt.reset_record(
            self._agent.plan, self._agent.maintenance, self._agent.vehicle.odometer_m, now
        )
        if record is None:
            return
        self._agent.maintenance = mnt.on_serviced(self._agent.maintenance, record)
        self._agent.mark_dirty("maintenance")
        self._agent.note(
            "service.reset",
            Category.VEHICLE_HEALTH,
            now,
            Priority.HIGH,
            items=list(record.items),
            odometer_km=record.odometer_km,
        )
        self._scene("service_completed", f"service:{record.odometer_km:.0f}", now)
        self._agent.agent_event("service_completed", {"items": record.items}, now)
        self.check_maintenance(now)

    def _scene(self, scene: str, occurrence: str, now: Now, **attrs: ArgValue) -> None:
        """A scene happened: offer the wallet's coupon for it, once per occurrence."""
        if occurrence in self._agent.offered:
            return
        coupon = coupon_for_scene(
            self._agent.wallet, scene, now.wall, trusted=now.trusted, offered=self._open_coupons()
        )
        if coupon is None:
            return
        self._agent.offered[occurrence] = coupon.id
        self._agent.mark_dirty("wallet")
        self._agent.note(
            "benefit.offered",
            Category.MARKETING,
            now,
            Priority.NORMAL,
            coupon_id=coupon.id,
            scene=scene,
        )
        self._agent.agent_event(
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
            for c in self._agent.cards.cards
            if c.kind is CardKind.BENEFIT
        ]

    def birthday(self, now: Now) -> None:
        """The member's birthday (local date, trusted clock) is a benefit scene."""
        if not now.trusted or self._agent.wallet is None or self._agent.wallet.birthday is None:
            return
        offset = timedelta(minutes=self._agent.config.policy.utc_offset_minutes)
        local = datetime.fromtimestamp(now.wall, UTC) + offset
        if local.strftime("%m-%d") == self._agent.wallet.birthday:
            self._scene("birthday", f"birthday:{local.year}", now)

    def _drive_summary(self, now: Now) -> None:
        start = self._agent.scenes.pop("cycle_start", None)
        self._agent.mark_dirty("vehicle")
        if not start:
            return
        started, odometer = start
        distance = None
        if odometer is not None and self._agent.vehicle.odometer_m is not None:
            distance = round((self._agent.vehicle.odometer_m - odometer) / 1000, 1)
        self._agent.note(
            "drive.summary",
            Category.USAGE_ANALYTICS,
            now,
            Priority.LOW,
            distance_km=distance,
            duration_min=round((now.wall - started) / 60, 1),
        )

    def _charging_summary(self, change: veh.Change, now: Now) -> None:
        start = self._agent.scenes.pop("charge_start", None)
        if not start:
            return
        self._agent.mark_dirty("vehicle")
        started, soc = start
        self._agent.note(
            "charging.session",
            Category.USAGE_ANALYTICS,
            now,
            Priority.LOW,
            soc_from=soc,
            soc_to=change.detail.get("soc"),
            duration_min=round((now.wall - started) / 60, 1),
        )
