"""The agent core: every decision touchpoint makes, with no I/O and no clock reads.

Inputs (signal updates, the driver's taps, the cloud's documents and answers, the
passing of time) come in with the system clock's readings; the core folds them into its
state and returns an :class:`Output`: the events for the outbox (consent already
checked), the visibility changes for the HMI, and which parts of the state to persist.
The daemon commits the output in one transaction before it shows anything.

The pieces: :mod:`agent.vehicle` (state and transitions), :mod:`agent.maintenance`,
:mod:`agent.fault_engine`, :mod:`agent.benefits` (scenes), :mod:`agent.flows`
(bookings, redemptions), :mod:`agent.rule_engine` (cards from triggers),
:mod:`agent.policy` (what is visible), :mod:`agent.consent`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from pydantic import BaseModel

from agent import maintenance as mnt
from agent import vehicle as veh
from agent.benefits import Wallet
from agent.booking import Booking, BookingStatus, Redemption, Slot
from agent.cards import (
    Action,
    ArgValue,
    Card,
    CardChange,
    CardKind,
    CardState,
    ChangeType,
    CloseReason,
    Text,
)
from agent.clock import ClockState, Now, Rejection, TimeSource
from agent.consent import Category, ConsentState
from agent.context import AgentConfig
from agent.documents import CloudCard, ConsentText
from agent.errors import ActionError
from agent.events import Event, EventDraft, EventType, JsonValue, Priority
from agent.facts import fact_lookup
from agent.fault_engine import DtcCatalogue
from agent.flows import BookingInProgressError, Flows
from agent.ids import IdFactory
from agent.plan import DAY, ServiceHistory, ServicePlan
from agent.policy import CardManager, ManagerSnapshot, moving_allowed
from agent.reactions import Reactions
from agent.rule_engine import CardSpec, RuleEngine, Targets, card_spec
from agent.rule_model import RuleSetDocument, RuleStops
from agent.sections import Section
from agent.signals import SignalReading

_log = logging.getLogger(__name__)

#: Card kinds whose events are interaction analytics, and those that are marketing.
_MARKETING_KINDS: Final = frozenset({CardKind.BENEFIT, CardKind.CAMPAIGN})
#: Signals whose changes can move a maintenance item (conditions), besides the odometer.
_CONDITION_SUFFIXES: Final = (
    ".Brake.PadWear",
    ".Tire.IsPressureLow",
    "EngineOil.RelativeLifeRemaining",
)


class _LazyFacts:
    """Facts for rule conditions, built only if a rule gets as far as its conditions."""

    __slots__ = ("_agent", "_lookup", "_now")

    def __init__(self, agent: Agent, now: Now) -> None:
        self._agent, self._now = agent, now
        self._lookup: Any = None

    def __call__(self, fact: str) -> Any:
        if self._lookup is None:
            self._lookup = self._agent.facts({}, self._now)
        return self._lookup(fact)


@dataclass(slots=True)
class Output:
    """What one input produced."""

    events: list[Event] = field(default_factory=list)
    changes: list[CardChange] = field(default_factory=list)
    dirty: set[Section] = field(default_factory=set)
    suppressed: Counter[str] = field(default_factory=Counter)
    #: Requests to take out of the outbox (if still unsent) in the same commit.
    withdrawn: list[str] = field(default_factory=list)
    #: Cards that could be on screen but for the limit on cards at once, as of this output.
    waiting: int = 0

    def extend(self, other: Output) -> None:
        """Append another output (in order)."""
        self.events.extend(other.events)
        self.changes.extend(other.changes)
        self.dirty |= other.dirty
        self.suppressed.update(other.suppressed)
        self.withdrawn.extend(other.withdrawn)
        self.waiting = other.waiting


class Agent:
    """The decision core. Not thread-safe: one caller (the daemon's loop) feeds it."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        boot_id: str,
        ids: IdFactory,
        plan: ServicePlan,
        catalogue: DtcCatalogue,
        builtin_rules: RuleSetDocument,
        state: AgentState | None = None,
    ) -> None:
        self.config = config
        self.boot_id = boot_id
        self._ids = ids
        self._seq = 0
        st = state or AgentState()
        self.vehicle = veh.VehicleState(odometer_m=st.odometer_m, drive_cycle=st.drive_cycle)
        self.clock = st.clock.after_restart()
        #: The last system clock reading (wall, monotonic), for a source's correction.
        self._system = (0.0, 0.0)
        #: Times a source offered that the clock model refused, by source.
        self.clock_rejections: Counter[TimeSource] = Counter()
        self.last_clock_rejection: Rejection | None = None
        self.plan = st.plan or plan
        self.catalogue = st.catalogue or catalogue
        self.maintenance = st.maintenance
        self.wallet: Wallet | None = st.wallet
        self.consent = st.consent
        self.rules = RuleEngine(
            builtin_rules,
            Targets(config.model, config.market, config.vehicle_id),
            st.cloud_rules,
            st.rule_state,
            config.policy.zone,
        )
        #: The cloud's stop document in effect, if any.
        self.rule_stops: RuleStops | None = st.rule_stops
        if st.rule_stops is not None:
            self.rules.stopped = frozenset(st.rule_stops.stopped)
        self.cards = CardManager(config.policy, st.cards)
        self.flows = Flows(self, st.bookings, st.redemptions)
        self.reactions = Reactions(
            self, announced=st.announced, scenes=st.scenes, offered=st.offered
        )
        #: The version of the cloud document of each kind in effect (see apply_document).
        self.document_versions: dict[str, int] = dict(st.document_versions)
        self.consent_text: ConsentText | None = st.consent_text
        self._out = Output()

    # -- inputs -------------------------------------------------------------------------

    def on_signals(self, updates: Sequence[SignalReading], wall: float, monotonic: float) -> Output:
        """Fold signal updates into the state and decide."""
        now = self._now(wall, monotonic)
        recheck = False
        for update in updates:
            self.vehicle, changes = veh.apply(self.vehicle, update)
            for change in changes:
                recheck |= self.reactions.on_transition(change, now, monotonic)
            if update.path.endswith(_CONDITION_SUFFIXES):
                recheck = True
            if self.rules.watches(update.path):
                specs = self.rules.on_signal(
                    update.path,
                    update.value,
                    _LazyFacts(self, now),
                    now.wall,
                    trusted=now.trusted,
                    tier=self._tier(),
                )
                self._post_all(specs, now)
        if recheck:
            self.reactions.check_maintenance(now)
        return self._finish(now)

    def on_tick(self, wall: float, monotonic: float) -> Output:
        """Time passed: expiries, snoozes, time-based maintenance, reminders, timed rules."""
        now = self._now(wall, monotonic)
        self.reactions.maybe_check_maintenance(now)
        if self.reactions.lamps_waiting:
            self.reactions.check_faults(now)
        self.flows.tick(now)
        specs = self.rules.on_tick(
            _LazyFacts(self, now), now.wall, trusted=now.trusted, tier=self._tier()
        )
        self._post_all(specs, now)
        self.reactions.birthday(now)
        return self._finish(now)

    def on_shown(self, card_id: str, wall: float, monotonic: float) -> Output:
        """The HMI reports that the driver saw a card (an impression)."""
        now = self._now(wall, monotonic)
        card = self._visible(card_id)
        if not card.shown:
            self.cards.replace_card(replace(card, shown=True))
            self._card_event(EventType.CARD_SHOWN, card, now)
            self._out.dirty.add(Section.CARDS)
        return self._finish(now)

    def on_dismiss(
        self,
        card_id: str,
        wall: float,
        monotonic: float,
        reason: CloseReason = CloseReason.DISMISSED,
    ) -> Output:
        """The driver dismissed a card, or (``EXPIRED``) the screen timed it out.

        Both take the card away and a maintenance reminder comes back after the same
        wait; they are told apart in the record (``card.dismissed`` is the driver's
        answer, ``card.expired`` is not), which is what the member platform counts.
        """
        if reason not in (CloseReason.DISMISSED, CloseReason.EXPIRED):
            raise ValueError(f"a screen closes a card as dismissed or expired, not {reason.name}")
        now = self._now(wall, monotonic)
        self._close(self._visible(card_id), reason, now)
        return self._finish(now)

    def on_action(
        self, card_id: str, key: str, options: Mapping[str, Any], wall: float, monotonic: float
    ) -> Output:
        """The driver tapped an action of a card.

        Raises:
            ActionError: Unknown card, a card not on screen, an action it does not have.
        """
        now = self._now(wall, monotonic)
        card = self._visible(card_id)
        if card.action(key) is None:
            raise ActionError("UnknownAction", f"card {card_id} has no action {key!r}")
        self._card_event(EventType.CARD_ACTION, card, now, action=key)
        if key in ("dismiss", "ok"):
            self._close(card, CloseReason.DISMISSED, now)
        elif key == "snooze":
            self._snooze(card, now)
        elif key == "book":
            self.flows.start_booking(card, now)
        elif key == "redeem":
            self.flows.redeem(card, now)
        _log.debug("action %s on %s (%s)", key, card.key, dict(options))
        return self._finish(now)

    def booking_slots(self, card_id: str) -> tuple[Slot, ...] | None:
        """Slots offered for booking from a card; ``None`` while the cloud has not answered.

        Raises:
            ActionError: Unknown card, or no booking was started from it.
        """
        card = self.cards.get(card_id)
        if card is None:
            raise ActionError("UnknownCard", f"no such card: {card_id}")
        if self.flows.booking_for(self.flows.origin_key(card)) is None:
            raise ActionError("NoBooking", f"no booking was started from card {card_id}")
        return self.flows.slots(card)

    def request_booking(self, card_id: str, slot_id: str, wall: float, monotonic: float) -> Output:
        """The driver picked a slot.

        Raises:
            ActionError: Unknown card, a slot that was not offered, or a booking already
                requested or confirmed.
        """
        now = self._now(wall, monotonic)
        card = self.cards.get(card_id)
        if card is None:
            raise ActionError("UnknownCard", f"no such card: {card_id}")
        try:
            self.flows.request_booking(card, slot_id, now)
        except BookingInProgressError as err:
            raise ActionError("AlreadyRequested", str(err)) from err
        except ValueError as err:
            raise ActionError("NoSuchSlot", str(err)) from err
        return self._finish(now)

    def on_slots(
        self, request_id: str, slots: Sequence[Slot], wall: float, monotonic: float
    ) -> Output:
        """The cloud answered a slot request."""
        now = self._now(wall, monotonic)
        self.flows.on_slots(request_id, slots, now)
        return self._finish(now)

    def on_booking_answer(
        self,
        request_id: str,
        status: BookingStatus,
        wall: float,
        monotonic: float,
        *,
        booking_id: str | None = None,
        reason: str | None = None,
        slot: Slot | None = None,
    ) -> Output:
        """The cloud confirmed, declined or cancelled a booking."""
        now = self._now(wall, monotonic)
        self.flows.on_booking_answer(
            request_id, status, now, booking_id=booking_id, reason=reason, slot=slot
        )
        return self._finish(now)

    def on_redemption_answer(
        self,
        request_id: str,
        *,
        accepted: bool,
        wall: float,
        monotonic: float,
        message: Text | None = None,
        code: str | None = None,
    ) -> Output:
        """The cloud redeemed a coupon (``code``: what to show at the partner), or refused."""
        now = self._now(wall, monotonic)
        self.flows.on_redemption_answer(
            request_id, accepted=accepted, now=now, message=message, code=code
        )
        return self._finish(now)

    def on_time(
        self, source: TimeSource, trusted_wall: float, wall: float, monotonic: float
    ) -> Output:
        """A time source says it is ``trusted_wall`` at ``monotonic``.

        The cloud's time exchange and an NTP-synchronised system clock come here (GNSS
        comes with the signals); the clock model decides whether the time is taken.
        """
        now = self._now(wall, monotonic)
        self.trust_time(trusted_wall, monotonic, source)
        out = self._finish(now)
        out.extend(self.on_tick(wall, monotonic))
        return out

    def set_plan(self, plan: ServicePlan, wall: float, monotonic: float) -> Output:
        """A new service plan (validated, newer) from the cloud."""
        self.plan = plan
        self._out.dirty.add(Section.PLAN)
        self.reactions.invalidate()
        return self.on_tick(wall, monotonic)

    def set_history(self, history: ServiceHistory, wall: float, monotonic: float) -> Output:
        """The service history the cloud knows (replaces the cloud-sourced records)."""
        now = self._now(wall, monotonic)
        local = tuple(r for r in self.maintenance.records if r.source != "cloud")
        before = mnt.assess(self.plan, self.maintenance, self.vehicle, now).state
        self.set_maintenance(mnt.with_records(self.maintenance, (*history.records, *local)))
        after = mnt.assess(self.plan, self.maintenance, self.vehicle, now).state
        if after < before:
            # Serviced (the scene, and the reminder closes); what is still due comes back
            # as a new reminder at once: a fresh episode, not one the closed card owned.
            self.agent_event("service_completed", {}, now)
            self.set_maintenance(mnt.new_episode(self.maintenance))
        self.reactions.invalidate()
        return self.on_tick(wall, monotonic)

    def set_catalogue(self, catalogue: DtcCatalogue, wall: float, monotonic: float) -> Output:
        """A new DTC catalogue from the cloud: active faults are re-assessed."""
        self.catalogue = catalogue
        self._out.dirty.add(Section.CATALOGUE)
        now = self._now(wall, monotonic)
        self.reactions.check_faults(now)
        return self._finish(now)

    def set_wallet(self, wallet: Wallet, wall: float, monotonic: float) -> Output:
        """The member wallet from the cloud."""
        self.wallet = wallet
        self._out.dirty.add(Section.WALLET)
        return self.on_tick(wall, monotonic)

    def set_rules(self, document: RuleSetDocument, wall: float, monotonic: float) -> Output:
        """Activate a (validated, newer) rule set from the cloud."""
        now = self._now(wall, monotonic)
        self.rules.activate(document)
        self.note(
            EventType.RULES_ACTIVATED,
            Category.USAGE_ANALYTICS,
            now,
            Priority.NORMAL,
            version=document.version,
            rules=len(document.rules),
        )
        self._out.dirty.add(Section.RULES)
        return self._finish(now)

    def set_consent(
        self,
        category: Category,
        *,
        granted: bool,
        valid_for: float | None,
        wall: float,
        monotonic: float,
    ) -> Output:
        """The driver changed a consent (raises ``ValueError`` for a bad category)."""
        now = self._now(wall, monotonic)
        self.consent = self.consent.set(
            category, granted=granted, now=now.floor, valid_for=valid_for, trusted=now.trusted
        )
        self._out.dirty.add(Section.CONSENT)
        # A consent record is the driver's own instruction: it always goes to the cloud.
        self.note(
            EventType.CONSENT_CHANGED,
            Category.SERVICE_REQUESTS,
            now,
            Priority.HIGH,
            category=category.value,
            granted=granted,
            valid_for_s=valid_for,
        )
        return self._finish(now)

    def apply_document(
        self, kind: str, version: int, body: BaseModel, wall: float, monotonic: float
    ) -> Output:
        """A signed cloud document, checked by cloud sync, takes effect.

        The version it came with is kept with it, in the same commit: a document and
        the version that says which one is in effect cannot disagree after a crash.

        Raises:
            TypeError: ``body`` is not a document the agent knows.
        """
        now = self._now(wall, monotonic)
        self.document_versions[kind] = version
        self._out.dirty.add(Section.DOCUMENTS)
        self.note(
            EventType.DOWNLINK_APPLIED, Category.SERVICE_REQUESTS, now, Priority.NORMAL,
            kind=kind, version=version,
        )  # fmt: skip
        setter = self._document_setters().get(type(body))
        if setter is not None:
            return setter(body, wall, monotonic)
        if isinstance(body, ConsentText):
            self.consent_text = body
        elif isinstance(body, CloudCard):
            self._cloud_card(body, version, now)
        else:
            raise TypeError(f"not a cloud document: {type(body).__name__}")
        return self._finish(now)

    def _document_setters(self) -> dict[type[BaseModel], Callable[[Any, float, float], Output]]:
        return {
            ServicePlan: self.set_plan,
            ServiceHistory: self.set_history,
            DtcCatalogue: self.set_catalogue,
            Wallet: self.set_wallet,
            RuleSetDocument: self.set_rules,
            RuleStops: self.set_rule_stops,
        }

    def set_rule_stops(self, stops: RuleStops, wall: float, monotonic: float) -> Output:
        """The cloud stopped rules (or lifted stops): their open cards close at once."""
        now = self._now(wall, monotonic)
        stopped = frozenset(stops.stopped)
        newly = sorted(stopped - self.rules.stopped)
        self.rules.stopped = stopped
        self.rule_stops = stops
        self._out.dirty.add(Section.RULES)
        closed = 0
        for card in list(self.cards.cards):
            if card.rule is not None and card.rule.partition("@")[0] in stopped:
                self._close(card, CloseReason.CLOSED_BY_AGENT, now)
                closed += 1
        self.note(
            EventType.RULES_STOPPED, Category.USAGE_ANALYTICS, now, Priority.NORMAL,
            version=stops.version, stopped=list(stops.stopped), newly=newly, cards_closed=closed,
        )  # fmt: skip
        return self._finish(now)

    def reject_document(
        self,
        reason: str,
        *,
        kind: str | None,
        version: int | None,
        topic: str,
        wall: float,
        monotonic: float,
    ) -> Output:
        """Record that a cloud document was refused (the one in effect stays)."""
        now = self._now(wall, monotonic)
        self.note(
            EventType.DOWNLINK_REJECTED, Category.SERVICE_REQUESTS, now, Priority.NORMAL,
            kind=kind, version=version, reason=reason, topic=topic,
        )  # fmt: skip
        return self._finish(now)

    def _cloud_card(self, document: CloudCard, version: int, now: Now) -> None:
        key = f"cloud:{document.card_id}"
        if document.withdraw or document.card is None:
            card = self.cards.by_key(key)
            if card is not None:
                self.close(card, CloseReason.CLOSED_BY_AGENT, now)
            return
        template = document.card.model_copy(update={"key": key})
        name = f"cloud.{document.card_id}"
        self.post(
            card_spec(name, f"{name}@{version}", template, {"card_id": document.card_id}), now
        )

    def wipe(self, *, owner_change: bool, wall: float, monotonic: float) -> Output:
        """Forget the driver's data: "delete my data in the car", or a change of owner.

        Cards, the wallet, bookings, redemptions and the scene history go; with a change
        of owner, consent goes too (back to nothing granted). What describes the car and
        not its owner stays: odometer, service plan and history, DTC catalogue, active
        faults, card rules. The caller also empties the outbox and the stored sections.
        """
        now = self._now(wall, monotonic)
        for card in list(self.cards.cards):
            closed = self.cards.close(card.id, CloseReason.CLOSED_BY_AGENT, now.floor)
            if closed is not None and closed.state is CardState.VISIBLE:
                self._out.changes.append(
                    CardChange(ChangeType.REMOVED, closed, CloseReason.CLOSED_BY_AGENT)
                )
        self.cards = CardManager(self.config.policy)
        self.flows = Flows(self, (), ())
        self.wallet = None
        self.reactions.forget_driver()
        if owner_change:
            self.consent = ConsentState()
        self.rules.forget_counters()
        self._out.dirty |= {
            Section.CARDS,
            Section.FLOWS,
            Section.WALLET,
            Section.VEHICLE,
            Section.CONSENT,
        }
        # The driver's instruction, and the cloud's cue to delete its copy: always sent.
        self.note(
            EventType.PRIVACY_WIPED,
            Category.SERVICE_REQUESTS,
            now,
            Priority.HIGH,
            scope="owner_change" if owner_change else "my_data",
        )
        return self._finish(now)

    # -- internals ----------------------------------------------------------------------

    def _now(self, wall: float, monotonic: float) -> Now:
        self.clock = self.clock.started(monotonic)
        self._system = (wall, monotonic)
        now = self.clock.read(wall, monotonic)
        remembered = self.clock.remember(now)
        if (
            remembered is not self.clock
            and (remembered.last_trusted or 0) - (self.clock.last_trusted or 0) > 3600
        ):
            self._out.dirty.add(Section.CLOCK)  # persist the trusted high-water mark hourly
        self.clock = remembered
        return now

    def _visible(self, card_id: str) -> Card:
        card = self.cards.get(card_id)
        if card is None:
            raise ActionError("UnknownCard", f"no such card: {card_id}")
        if card.state is not CardState.VISIBLE:
            raise ActionError("NotVisible", f"card {card_id} is not on screen")
        return card

    def _tier(self) -> str | None:
        return self.wallet.tier if self.wallet else None

    def agent_event(self, name: str, attrs: Mapping[str, ArgValue], now: Now) -> None:
        """Run the rules for an agent event: close what it closes, post what it asks for."""
        for key in self.rules.closing_keys(name, attrs):
            card = self.cards.by_key(key)
            if card is not None:
                self._close(card, CloseReason.CLOSED_BY_AGENT, now)
        specs = self.rules.on_event(
            name, attrs, self.facts(attrs, now), now.wall, trusted=now.trusted, tier=self._tier()
        )
        self._post_all(specs, now)

    def facts(self, attrs: Mapping[str, ArgValue], now: Now) -> Any:
        """The fact lookup rule conditions use, at ``now`` with an event's ``attrs``."""
        return fact_lookup(self.vehicle, self.wallet, attrs, now, self.config.policy.zone)

    def _post_all(self, specs: Sequence[CardSpec], now: Now) -> None:
        for spec in specs:
            self.post(spec, now)

    def post(self, spec: CardSpec, now: Now) -> Card | None:
        """Post (or update in place) the card a rule asked for."""
        kind = spec.kind
        category = Category.MARKETING if kind in _MARKETING_KINDS else Category.USAGE_ANALYTICS
        card = Card(
            id=self._ids.new(now.wall),
            key=spec.key,
            kind=kind,
            urgency=spec.urgency,
            display=spec.display,
            title=spec.title,
            body=spec.body,
            template=spec.template,
            created=now.floor,
            category=category,
            priority=spec.priority,
            args=spec.args,
            actions=tuple(Action(k, label) for k, label in spec.actions),
            expires=None if spec.ttl is None else now.floor + spec.ttl,
            rule=spec.rule,
            time_trusted=now.trusted,
            why=spec.why,
        )
        stored, new = self.cards.post(card, now.floor)
        self._out.dirty.add(Section.CARDS)
        if stored is None:
            self._card_event(EventType.CARD_SUPPRESSED, card, now, reason="cooldown")
            return None
        if new:
            self._card_event(EventType.CARD_CREATED, stored, now, why=dict(stored.why))
        else:
            self._card_event(EventType.CARD_UPDATED, stored, now)
            if self._on_screen(stored):
                self._out.changes.append(CardChange(ChangeType.UPDATED, stored))
        return stored

    def update_card(self, card: Card, now: Now) -> None:  # noqa: ARG002 - same shape as close
        """Store a changed open card and tell the HMI if it is on screen."""
        self.cards.replace_card(card)
        self._out.dirty.add(Section.CARDS)
        if self._on_screen(card):
            self._out.changes.append(CardChange(ChangeType.UPDATED, card))

    def _on_screen(self, card: Card) -> bool:
        """Whether an update of ``card`` may be shown now.

        A visible card whose new version a moving driver may not see (a fault downgraded
        to parked-only) gets no update: the policy withdraws it in :meth:`_finish`.
        """
        return card.state is CardState.VISIBLE and (
            not self.vehicle.driving or moving_allowed(card)
        )

    def _snooze(self, card: Card, now: Now) -> None:
        days, km = self.config.snooze_s / DAY, self.config.snooze_km
        if card.kind is CardKind.MAINTENANCE:
            days, km = self.plan.snooze_days, self.plan.snooze_km
        odometer = self.vehicle.odometer_m
        until_odometer = None if odometer is None else odometer + int(km * 1000)
        self.cards.snooze(card.id, now.floor + days * DAY, until_odometer)
        self._out.dirty.add(Section.CARDS)
        self._out.changes.append(CardChange(ChangeType.REMOVED, card, CloseReason.SNOOZED))
        self._card_event(EventType.CARD_SNOOZED, card, now, days=days, km=km)

    def close(self, card: Card, reason: CloseReason, now: Now) -> None:
        """Close a card for good (a flow completed it, a rule closed it)."""
        self._close(card, reason, now)

    def _close(self, card: Card, reason: CloseReason, now: Now) -> None:
        closed = self.cards.close(card.id, reason, now.floor)
        if closed is None:
            return
        self._out.dirty.add(Section.CARDS)
        if closed.state is CardState.VISIBLE:
            self._out.changes.append(CardChange(ChangeType.REMOVED, closed, reason))
        name = {
            CloseReason.DISMISSED: EventType.CARD_DISMISSED,
            CloseReason.EXPIRED: EventType.CARD_EXPIRED,
        }
        self._card_event(name.get(reason, EventType.CARD_CLOSED), closed, now, reason=reason.name)
        # EXPIRED reaches here only from a screen's timeout (see ``on_dismiss``); a
        # card's own expiry is settled in ``_finish``.
        if closed.kind is CardKind.MAINTENANCE and reason in (
            CloseReason.DISMISSED,
            CloseReason.EXPIRED,
        ):
            self.set_maintenance(mnt.on_dismissed(self.maintenance, now, self.vehicle.odometer_m))
            self.reactions.invalidate()  # where it resurfaces is a new boundary

    def _finish(self, now: Now) -> Output:
        if self.rules.dirty:
            # Edges, counters and time-of-day marks: persisted only when they changed
            # (a day used up without a card too, or a restart would bring it round again).
            self.rules.dirty = False
            self._out.dirty.add(Section.RULE_STATE)
        changes, expired = self.cards.refresh(
            driving=self.vehicle.driving,
            now=now.wall,
            floor=now.floor,
            odometer_m=self.vehicle.odometer_m,
        )
        for card in expired:
            self._card_event(EventType.CARD_EXPIRED, card, now, reason=CloseReason.EXPIRED.name)
        changes = [self._current(c) for c in changes]
        for change in changes:
            if change.type is ChangeType.ADDED:
                # Whether the car was parked when the card went on screen: the context
                # operators look at, and the driver-distraction rule made checkable.
                self._card_event(
                    EventType.CARD_DISPLAYED, change.card, now, parked=not self.vehicle.driving
                )
            elif change.reason is CloseReason.WITHDRAWN_FOR_DRIVING:
                self._card_event(EventType.CARD_WITHDRAWN, change.card, now, reason="driving")
        if changes or expired:
            self._out.dirty.add(Section.CARDS)
        self._out.changes.extend(changes)
        self._out.waiting = self.cards.waiting
        out, self._out = self._out, Output()
        return out

    def _current(self, change: CardChange) -> CardChange:
        """A card coming on screen, saying what is true now.

        The odometer has moved on since it was posted: a reminder must not say 14,970 km
        after a 41 km drive.
        """
        card = change.card
        odometer = self.vehicle.odometer_m
        if (
            change.type is not ChangeType.ADDED
            or "odometer_km" not in card.args
            or odometer is None
            or card.args["odometer_km"] == round(odometer / 1000)
        ):
            return change
        args = {**card.args, "odometer_km": round(odometer / 1000)}
        texts = self.rules.render_again(card.template, args)
        if texts is None:
            return change
        current = replace(card, args=args, title=texts[0], body=texts[1])
        self.cards.replace_card(current)
        return replace(change, card=current)

    def _card_event(self, kind: EventType, card: Card, now: Now, **extra: JsonValue) -> None:
        impression = kind in (EventType.CARD_SHOWN, EventType.CARD_DISPLAYED)
        priority = Priority.LOW if impression else Priority.NORMAL
        self.note(
            kind,
            card.category,
            now,
            priority,
            card_id=card.id,
            key=card.key,
            kind=card.kind.name,
            rule=card.rule,
            **extra,
        )

    def note(
        self,
        kind: EventType,
        category: Category,
        now: Now,
        priority: Priority,
        /,
        **payload: JsonValue,
    ) -> None:
        """Record an event of ``kind`` with ``payload`` (see :meth:`record`)."""
        self.record(EventDraft(kind, category, payload, priority), now)

    def record(self, draft: EventDraft, now: Now) -> Event | None:
        """Stamp an event for the outbox, unless its category lacks consent (then counted)."""
        if not self.consent.allows(draft.category, now.floor):
            self._out.suppressed[draft.category.value] += 1
            return None
        self._seq += 1
        event = Event(
            id=self._ids.new(now.wall),
            type=draft.type,
            category=draft.category,
            time=now.wall,
            time_trusted=now.trusted,
            boot_id=self.boot_id,
            seq=self._seq,
            priority=draft.priority,
            expires=None if draft.ttl is None else now.floor + draft.ttl,
            payload=draft.payload,
            request_id=draft.request_id,
        )
        self._out.events.append(event)
        return event

    # -- the context flows and reactions get (agent.context.CoreContext) -----------------

    @property
    def announced(self) -> Mapping[str, str]:
        """Faults announced to the driver (code: severity)."""
        return self.reactions.announced

    @property
    def scenes(self) -> Mapping[str, Any]:
        """What the benefit scenes and summaries remember."""
        return self.reactions.scenes

    @property
    def offered(self) -> Mapping[str, str]:
        """Scene occurrences already offered a coupon."""
        return self.reactions.offered

    def set_maintenance(self, state: mnt.MaintenanceState) -> None:
        """Replace the maintenance state (persisted with this input)."""
        self.maintenance = state
        self._out.dirty.add(Section.MAINTENANCE)

    def recheck_maintenance(self) -> None:
        """Assess the plan afresh at the next tick or odometer reading."""
        self.reactions.invalidate()

    def trust_time(self, wall: float, monotonic: float, source: TimeSource) -> None:
        """A trusted source says it is ``wall`` at ``monotonic``: taken if plausible.

        When the clock becomes trusted (or is corrected), what was dated by the estimate
        before (cards posted meanwhile, a consent given meanwhile) moves by the
        correction, so nothing lives years too long or ends at once because the system
        clock was wrong.
        """
        system_wall, system_mono = self._system
        before = self.clock.read(system_wall + (monotonic - system_mono), monotonic)
        # What the agent dated while untrusted, it dated by the floor (docs/time.md).
        basis = before.floor
        result = self.clock.set_trusted(wall, monotonic, source)
        if isinstance(result, Rejection):
            self.clock_rejections[source] += 1
            if self.clock_rejections[source] == 1:  # the first of a run is kept for the doctor
                system_now = system_wall + (monotonic - system_mono)
                self.clock = self.clock.noted(source, system_now, wall)
                self._out.dirty.add(Section.CLOCK)
            self.last_clock_rejection = result
            # The first of a run is news; the rest are counted (the status, the doctor).
            first = self.clock_rejections[source] == 1
            level = (
                logging.DEBUG
                if not first
                else logging.INFO
                if result.outranked
                else (logging.WARNING)
            )
            _log.log(
                level,
                "not taking the %s time %.0f: %s (further ones are counted, not logged)",
                source.label, result.wall, result.reason,
            )  # fmt: skip
            return
        if result is self.clock:
            return
        self.clock = result.noted(source, system_wall + (monotonic - system_mono), wall)
        self._out.dirty.add(Section.CLOCK)
        correction = wall - basis
        if not before.trusted and abs(correction) >= 1.0:
            self.cards.rebase(correction)
            self.consent = self.consent.rebase(correction)
            self._out.dirty |= {Section.CARDS, Section.CONSENT}
        now = self.clock.read(system_wall, monotonic)
        self.note(
            EventType.CLOCK_TRUSTED, Category.VEHICLE_HEALTH, now, Priority.LOW,
            source=source.label, correction_s=round(correction, 3),
            trusted_before=before.trusted,
        )  # fmt: skip
        self.reactions.invalidate()  # time-based items may now be judged

    def booked(self, card_key: str) -> bool:
        """Whether a booking made from that card is confirmed."""
        return self.flows.booked(card_key)

    def card_by_key(self, key: str) -> Card | None:
        """The open card with ``key``."""
        return self.cards.by_key(key)

    def open_cards(self) -> Sequence[Card]:
        """Every open card (on screen or waiting)."""
        return self.cards.cards

    def withdraw_request(self, request_id: str) -> None:
        """Take the request out of the outbox with this output, if it is still unsent."""
        self._out.withdrawn.append(request_id)

    def mark_dirty(self, section: Section) -> None:
        """Note that a part of the state changed and must be persisted with this output."""
        self._out.dirty.add(section)

    def new_id(self, now: Now) -> str:
        """A new UUIDv7."""
        return self._ids.new(now.wall)

    def odometer_km(self) -> float | None:
        """The odometer in km (one decimal), if known."""
        odometer = self.vehicle.odometer_m
        return None if odometer is None else round(odometer / 1000, 1)

    def state(self) -> AgentState:
        """Everything to persist, as one value."""
        return AgentState(
            odometer_m=self.vehicle.odometer_m,
            drive_cycle=self.vehicle.drive_cycle,
            clock=self.clock,
            plan=self.plan,
            catalogue=self.catalogue,
            maintenance=self.maintenance,
            announced=dict(self.announced),
            wallet=self.wallet,
            offered=dict(self.offered),
            consent=self.consent,
            scenes=dict(self.scenes),
            cloud_rules=self.rules.cloud_document,
            rule_stops=self.rule_stops,
            rule_state=self.rules.snapshot(),
            cards=self.cards.snapshot(),
            bookings=self.flows.bookings_state(),
            redemptions=self.flows.redemptions_state(),
            document_versions=dict(self.document_versions),
            consent_text=self.consent_text,
        )


@dataclass(frozen=True, slots=True)
class AgentState:
    """The core's persistent state (see :mod:`agent.state_codec` for its JSON form)."""

    odometer_m: int | None = None
    drive_cycle: int = 0
    clock: ClockState = field(default_factory=ClockState)
    plan: ServicePlan | None = None
    catalogue: DtcCatalogue | None = None
    maintenance: mnt.MaintenanceState = field(default_factory=mnt.MaintenanceState)
    announced: Mapping[str, str] = field(default_factory=dict)
    wallet: Wallet | None = None
    offered: Mapping[str, str] = field(default_factory=dict)
    consent: ConsentState = field(default_factory=ConsentState)
    scenes: Mapping[str, Any] = field(default_factory=dict)
    cloud_rules: RuleSetDocument | None = None
    rule_stops: RuleStops | None = None
    rule_state: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cards: ManagerSnapshot | None = None
    bookings: tuple[Booking, ...] = ()
    redemptions: tuple[Redemption, ...] = ()
    document_versions: Mapping[str, int] = field(default_factory=dict)
    consent_text: ConsentText | None = None
