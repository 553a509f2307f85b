"""The maintenance engine: per-item states and when to remind the driver.

Per item, due is whichever comes first of the last service plus the distance interval
and the last service plus the time interval. States go OK -> DUE_SOON (within the lead
window) -> DUE (reached) -> OVERDUE (past it by a margin). A condition input (oil life,
brake pad wear, low tyre pressure) can make an item due early. The time criterion
needs a trusted clock and a service time that was trusted: until then, only distance
and conditions count, and the assessment says so.

The engine reminds once per state change of the whole car (the worst item), with one
card listing every item that is due for the visit; it escalates when the state gets
worse, comes back after a dismissal at a capped frequency (more often the worse the
state), and stands down once the visit is booked, until the appointment has passed.

Pure: state and input in, new state and reminders out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final

from agent.clock import Now
from agent.events import JsonValue
from agent.plan import DAY, Condition, ServiceItem, ServicePlan, ServiceRecord
from agent.signals import OIL_LIFE
from agent.vehicle import VehicleState

_TYRE_LOW_SUFFIX: Final = ".Tire.IsPressureLow"

#: Oil life (percent remaining) at which the oil item is due soon / due / overdue.
OIL_LIFE_THRESHOLDS: Final = (15, 5, 0)
#: Brake pad wear (percent worn) at which the pad item is due soon / due / overdue.
PAD_WEAR_THRESHOLDS: Final = (70, 85, 95)


class ItemState(IntEnum):
    """The state of one item, and of the car (its worst item)."""

    OK = 1
    DUE_SOON = 2
    DUE = 3
    OVERDUE = 4


@dataclass(frozen=True, slots=True)
class ItemAssessment:
    """Where one item stands.

    Attributes:
        item: The plan item.
        state: Its state.
        remaining_km: Distance left to the due point (negative: past it), if by distance.
        remaining_days: Days left to the due date (negative: past it), if known.
        reason: What decided the state: ``distance``, ``time``, ``condition``, or ``ok``.
        time_unknown: The item has a time interval that could not be checked because the
            clock or the last service time is not trusted.
    """

    item: ServiceItem
    state: ItemState
    remaining_km: float | None
    remaining_days: float | None
    reason: str
    time_unknown: bool = False


def assess_item(
    item: ServiceItem,
    last: ServiceRecord | None,
    odometer_m: int | None,
    now: Now,
    vehicle: VehicleState,
) -> ItemAssessment:
    """Assess one item (pure)."""
    state, reason = ItemState.OK, "ok"
    remaining_km: float | None = None
    remaining_days: float | None = None
    time_unknown = False
    base_m = (last.odometer_km * 1000) if last is not None else 0.0
    if item.interval_km is not None and odometer_m is not None:
        remaining_m = base_m + item.interval_km * 1000 - odometer_m
        remaining_km = remaining_m / 1000
        by_distance = _grade(remaining_m, item.lead_m, item.overdue_m)
        if by_distance > state:
            state, reason = by_distance, "distance"
    if item.interval_days is not None:
        base_time = last.time if last is not None else None
        if now.trusted and base_time is not None:
            remaining_s = base_time + item.interval_days * DAY - now.wall
            remaining_days = remaining_s / DAY
            by_time = _grade(remaining_s, item.lead_days * DAY, item.overdue_days * DAY)
            if by_time > state:
                state, reason = by_time, "time"
        else:
            time_unknown = True
    by_condition = _condition_state(item.condition, vehicle)
    if by_condition > state:
        state, reason = by_condition, "condition"
    return ItemAssessment(item, state, remaining_km, remaining_days, reason, time_unknown)


def _grade(remaining: float, lead: float, overdue: float) -> ItemState:
    if remaining <= -overdue:
        return ItemState.OVERDUE
    if remaining <= 0:
        return ItemState.DUE
    if remaining <= lead:
        return ItemState.DUE_SOON
    return ItemState.OK


def _condition_state(condition: Condition | None, vehicle: VehicleState) -> ItemState:
    if condition is Condition.OIL_LIFE:
        life = vehicle.value(OIL_LIFE)
        if isinstance(life, int | float):
            return _threshold(-life, tuple(-t for t in OIL_LIFE_THRESHOLDS))
    elif condition is Condition.BRAKE_PAD_WEAR:
        wear = vehicle.brake_pad_wear()
        if wear is not None:
            return _threshold(wear, PAD_WEAR_THRESHOLDS)
    elif condition is Condition.TYRE_PRESSURE and vehicle.low_tyres():
        return ItemState.DUE
    return ItemState.OK


def _threshold(value: float, limits: Sequence[float]) -> ItemState:
    soon, due, overdue = limits
    if value >= overdue:
        return ItemState.OVERDUE
    if value >= due:
        return ItemState.DUE
    if value >= soon:
        return ItemState.DUE_SOON
    return ItemState.OK


def last_records(records: Sequence[ServiceRecord]) -> dict[str, ServiceRecord]:
    """The latest record per item (by odometer, then time)."""
    latest: dict[str, ServiceRecord] = {}
    for record in records:
        for item_id in record.items:
            current = latest.get(item_id)
            if current is None or (record.odometer_km, record.time or 0) >= (
                current.odometer_km,
                current.time or 0,
            ):
                latest[item_id] = record
    return latest


@dataclass(frozen=True, slots=True)
class Reminder:
    """The engine asks for the maintenance card to be shown (or updated in place).

    Attributes:
        state: The car's worst item state.
        items: The items due for this visit (due soon or worse), worst first.
        escalated: The state got worse than what the driver was last told.
        resurfaced: A reminder the driver dismissed, back after its interval.
    """

    state: ItemState
    items: tuple[ItemAssessment, ...]
    escalated: bool
    resurfaced: bool


@dataclass(frozen=True, slots=True)
class MaintenanceState:
    """What the engine remembers between inputs (and across restarts).

    Attributes:
        records: Service records known, from the cloud and from CAN resets.
        notified: The worst state the driver was told about in this service episode.
        notified_items: The item ids of the last reminder.
        dismissed_at: When and at which odometer the driver last dismissed the reminder.
        booked_until: A booking covers the visit until this time.
        last_milestone_km: The last odometer milestone celebrated.
    """

    records: tuple[ServiceRecord, ...] = ()
    notified: ItemState = ItemState.OK
    notified_items: tuple[str, ...] = ()
    dismissed_at: tuple[float, int] | None = None
    booked_until: float | None = None
    last_milestone_km: float | None = None
    last_states: Mapping[str, ItemState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Assessment:
    """The whole car's maintenance picture."""

    items: tuple[ItemAssessment, ...]

    @property
    def state(self) -> ItemState:
        """The worst item state."""
        return max((a.state for a in self.items), default=ItemState.OK)

    @property
    def due(self) -> tuple[ItemAssessment, ...]:
        """Items due soon or worse, worst first, then by how little is left."""
        due = [a for a in self.items if a.state >= ItemState.DUE_SOON]
        return tuple(sorted(due, key=lambda a: (-a.state, a.remaining_km or 0.0, a.item.id)))


def assess(
    plan: ServicePlan, state: MaintenanceState, vehicle: VehicleState, now: Now
) -> Assessment:
    """Assess every item of the plan.

    Unknown is not OK: an item whose condition input has not been heard yet (just after
    a start) or whose time criterion waits for a trusted clock keeps the state it last
    had when that state was worse. Otherwise a restart would end the reminder episode
    ("all serviced") and start it again a moment later, bringing back cards the driver
    had dismissed.
    """
    latest = last_records(state.records)
    items = []
    for item in plan.items:
        assessed = assess_item(item, latest.get(item.id), vehicle.odometer_m, now, vehicle)
        unknown = assessed.time_unknown or (
            item.condition is not None and not _condition_known(item.condition, vehicle)
        )
        last = state.last_states.get(item.id, ItemState.OK)
        if unknown and last > assessed.state:
            assessed = replace(assessed, state=last, reason="last_known")
        items.append(assessed)
    return Assessment(tuple(items))


def _condition_known(condition: Condition, vehicle: VehicleState) -> bool:
    if condition is Condition.OIL_LIFE:
        return isinstance(vehicle.value(OIL_LIFE), int | float)
    if condition is Condition.BRAKE_PAD_WEAR:
        return vehicle.brake_pad_wear() is not None
    return any(path.endswith(_TYRE_LOW_SUFFIX) for path in vehicle.signals)


def decide(
    plan: ServicePlan,
    state: MaintenanceState,
    assessment: Assessment,
    vehicle: VehicleState,
    now: Now,
) -> tuple[MaintenanceState, Reminder | None]:
    """Whether to remind the driver now, and the engine's next state."""
    worst = assessment.state
    due_ids = tuple(a.item.id for a in assessment.due)
    last_states = {a.item.id: a.state for a in assessment.items}
    state = replace(state, last_states=last_states)
    if worst is ItemState.OK:
        # Everything serviced: a new episode starts with the next item that comes due.
        return replace(
            state, notified=ItemState.OK, notified_items=(), dismissed_at=None, booked_until=None
        ), None
    if state.booked_until is not None:
        return _while_booked(state, assessment, now)
    if worst > state.notified:
        reminder = Reminder(
            worst, assessment.due, escalated=state.notified > ItemState.OK, resurfaced=False
        )
        return replace(state, notified=worst, notified_items=due_ids, dismissed_at=None), reminder
    if set(due_ids) - set(state.notified_items):
        # Another item joined the visit at the same level: update the card in place.
        reminder = Reminder(worst, assessment.due, escalated=False, resurfaced=False)
        return replace(state, notified_items=due_ids), reminder
    if state.dismissed_at is not None:
        dismissed_time, dismissed_odometer = state.dismissed_at
        level = min(worst, ItemState.OVERDUE) - ItemState.DUE_SOON
        odometer = vehicle.odometer_m or dismissed_odometer
        if (
            odometer - dismissed_odometer >= plan.resurface_km[level] * 1000
            or now.wall - dismissed_time >= plan.resurface_days[level] * DAY
        ):
            reminder = Reminder(worst, assessment.due, escalated=False, resurfaced=True)
            return replace(state, dismissed_at=None, notified_items=due_ids), reminder
    return state, None


def _while_booked(
    state: MaintenanceState, assessment: Assessment, now: Now
) -> tuple[MaintenanceState, Reminder | None]:
    assert state.booked_until is not None
    if now.wall < state.booked_until:
        # The visit is booked: the reminders stand down, escalation included (the dealer
        # has the visit; a new "please book" would contradict the booking).
        return state, None
    # The appointment passed a day ago and items are still due: the visit did not
    # happen (or the cloud has not recorded it yet), so the reminder comes back.
    worst = assessment.state
    reminder = Reminder(worst, assessment.due, escalated=worst > state.notified, resurfaced=True)
    return replace(
        state,
        booked_until=None,
        notified=max(worst, state.notified),
        notified_items=tuple(a.item.id for a in assessment.due),
        dismissed_at=None,
    ), reminder


def next_boundary(plan: ServicePlan, state: MaintenanceState, odometer_m: int | None) -> float:
    """The next odometer reading (metres) at which a distance rule can change a decision.

    Every item's due-soon, due and overdue points, and where a dismissed reminder
    resurfaces: between two of these, more distance changes nothing, so the engine need
    not look (conditions and time have triggers of their own).
    """
    if odometer_m is None:
        return -math.inf
    latest = last_records(state.records)
    points: list[float] = []
    for item in plan.items:
        if item.interval_km is None:
            continue
        record = latest.get(item.id)
        due = (record.odometer_km * 1000 if record else 0.0) + item.interval_km * 1000
        points += (due - item.lead_m, due, due + item.overdue_m)
    if state.dismissed_at is not None and state.notified > ItemState.OK:
        level = min(state.notified, ItemState.OVERDUE) - ItemState.DUE_SOON
        points.append(state.dismissed_at[1] + plan.resurface_km[level] * 1000)
    # _grade's due-soon test is "remaining <= lead": the boundary itself counts.
    return min((p for p in points if p >= odometer_m), default=math.inf)


def on_dismissed(state: MaintenanceState, now: Now, odometer_m: int | None) -> MaintenanceState:
    """The driver dismissed the reminder: it comes back after the resurface interval."""
    return replace(state, dismissed_at=(now.wall, odometer_m or 0))


def on_booked(state: MaintenanceState, appointment: float) -> MaintenanceState:
    """A visit is booked: no reminders until a day after the appointment."""
    return replace(state, booked_until=appointment + DAY)


def on_serviced(state: MaintenanceState, record: ServiceRecord) -> MaintenanceState:
    """A service was carried out (from the cloud, or a reset seen on CAN)."""
    records = (*state.records, record)[-200:]
    return with_records(state, records)


def after_odometer_correction(state: MaintenanceState) -> MaintenanceState:
    """The odometer was wrong: forget what was judged from it (states, dismissal, milestone).

    A booking stands (the driver made it); whatever is due by the real odometer is told
    afresh.
    """
    return replace(
        state,
        notified=ItemState.OK,
        notified_items=(),
        dismissed_at=None,
        last_states={},
        last_milestone_km=None,
    )


def new_episode(state: MaintenanceState) -> MaintenanceState:
    """Forget what was reminded: whatever is due now is told afresh, in a new card."""
    return replace(state, notified=ItemState.OK, notified_items=(), dismissed_at=None)


def with_records(state: MaintenanceState, records: Sequence[ServiceRecord]) -> MaintenanceState:
    """Replace the service records; an item whose latest record changed is judged afresh.

    The last known state of a serviced item must not be carried forward while its
    inputs are unknown (see :func:`assess`): the service made it obsolete.
    """
    before, after = last_records(state.records), last_records(records)
    serviced = {item for item, record in after.items() if before.get(item) != record}
    last_states = {k: v for k, v in state.last_states.items() if k not in serviced}
    return replace(state, records=tuple(records), last_states=last_states)


def reset_record(
    plan: ServicePlan, state: MaintenanceState, odometer_m: int | None, now: Now
) -> ServiceRecord | None:
    """The record a service reset on CAN stands for: the items that were due were done."""
    due = [item for item, s in state.last_states.items() if s >= ItemState.DUE_SOON]
    items = tuple(i for i in due if plan.item(i) is not None)
    if not items or odometer_m is None:
        return None
    return ServiceRecord(
        items=items,
        odometer_km=odometer_m / 1000,
        time=now.wall if now.trusted else None,
        source="can_reset",
    )


def milestone(
    plan: ServicePlan, state: MaintenanceState, odometer_m: int | None
) -> tuple[MaintenanceState, float | None]:
    """An odometer milestone just passed (a benefit scene), and the engine's next state."""
    if odometer_m is None:
        return state, None
    reached = (odometer_m / 1000 // plan.milestone_km) * plan.milestone_km
    if state.last_milestone_km is None:
        return replace(state, last_milestone_km=reached), None  # first reading: no party
    if reached > state.last_milestone_km:
        return replace(state, last_milestone_km=reached), reached
    return state, None


def assessment_payload(assessment: Assessment, vehicle: VehicleState) -> dict[str, JsonValue]:
    """What the cloud needs to route a reminder to the dealer advisor."""
    return {
        "state": assessment.state.name,
        "odometer_km": round(vehicle.odometer_m / 1000, 1) if vehicle.odometer_m else None,
        "items": [
            {
                "id": a.item.id,
                "state": a.state.name,
                "reason": a.reason,
                "remaining_km": None if a.remaining_km is None else round(a.remaining_km, 1),
                "remaining_days": None if a.remaining_days is None else round(a.remaining_days, 1),
                "time_unknown": a.time_unknown,
            }
            for a in assessment.items
            if a.state >= ItemState.DUE_SOON
        ],
    }
