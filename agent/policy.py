"""Card policy: which cards the driver sees, and when. Driver-distraction rules are not optional.

- While driving (anything but parked) only critical fault cards made for a moving
  driver are visible; parked-only cards are withdrawn from view (not lost) and come
  back when the car is parked.
- Frequency caps per kind (cards shown per rolling day), cooldowns after a dismissal,
  quiet hours (only critical cards), a limit on cards shown at once, priorities
  (urgency, then priority, then age), expiry, snooze by time or distance.
- A card posted again under the same key is updated in place: the HMI sees a property
  change, not a new card.

Pure: time and the vehicle state are arguments; the manager's state is what
:meth:`CardManager.snapshot` returns, and it is rebuilt from that after a restart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from types import MappingProxyType
from typing import Final

from agent.cards import Card, CardChange, CardKind, CardState, ChangeType, CloseReason, Urgency
from agent.local_time import DEFAULT_ZONE, local

DAY: Final = 86_400.0
#: Why an open card is not on screen (:attr:`CardManager.held_back`).
SNOOZED: Final = "snoozed"
MOVING: Final = "moving"
QUIET_HOURS: Final = "quiet hours"
DAILY_CAP: Final = "daily cap"
VISIBLE_LIMIT: Final = "visible limit"
HOLD_REASONS: Final = (SNOOZED, MOVING, QUIET_HOURS, DAILY_CAP, VISIBLE_LIMIT)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The policy's settings.

    Attributes:
        max_visible: Cards on screen at once.
        daily_caps: Cards of a kind that may be shown per rolling 24 hours (absent: no cap).
        cooldowns: After the driver dismisses a card of a kind, no new card of that kind
            for this many seconds.
        quiet_hours: Local hours ``(start, end)`` in which only critical cards show.
        zone: The car's time zone, for quiet hours.
    """

    max_visible: int = 3
    daily_caps: Mapping[CardKind, int] = field(
        default_factory=lambda: MappingProxyType(
            {CardKind.MAINTENANCE: 3, CardKind.BENEFIT: 2, CardKind.CAMPAIGN: 2}
        )
    )
    cooldowns: Mapping[CardKind, float] = field(
        default_factory=lambda: MappingProxyType(
            {CardKind.BENEFIT: 4 * 3600.0, CardKind.CAMPAIGN: 12 * 3600.0}
        )
    )
    quiet_hours: tuple[int, int] | None = (22, 7)
    zone: tzinfo = DEFAULT_ZONE

    def in_quiet_hours(self, wall: float) -> bool:
        """Whether ``wall`` (seconds since the epoch) falls in the local quiet hours."""
        if self.quiet_hours is None:
            return False
        start, end = self.quiet_hours
        hour = local(wall, self.zone).hour
        return start <= hour < end if start <= end else hour >= start or hour < end


def moving_allowed(card: Card) -> bool:
    """Whether a driving driver may see ``card``: critical faults made for it, only."""
    return (
        card.allowed_while_moving
        and card.kind is CardKind.FAULT
        and card.urgency is Urgency.CRITICAL
    )


@dataclass(frozen=True, slots=True)
class ManagerSnapshot:
    """The card manager's state, for the store."""

    cards: tuple[Card, ...]
    shown_log: tuple[tuple[str, float], ...]
    dismissed: Mapping[str, float]


class CardManager:
    """Holds every open card and decides which are visible."""

    def __init__(self, config: PolicyConfig, snapshot: ManagerSnapshot | None = None) -> None:
        self.config = config
        self._cards: dict[str, Card] = {}
        self._by_key: dict[str, str] = {}
        # (kind name, time first shown): the rolling window of the daily caps.
        self._shown_log: list[tuple[str, float]] = []
        # kind name -> time of the last dismissal, for cooldowns.
        self._dismissed: dict[str, float] = {}
        # Bumped by every change to the cards; with the inputs of the last refresh, it
        # tells refresh() when nothing can have changed (see _Settled).
        self._version = 0
        self._settled: _Settled | None = None
        #: Cards that could be on screen now but for the limit on cards at once.
        self.waiting = 0
        #: Why each open card not on screen is held back, as of the last choice (one of
        #: :data:`HOLD_REASONS`): for replays and a card's provenance.
        self.held_back: dict[str, str] = {}
        if snapshot is not None:
            for card in snapshot.cards:
                self._cards[card.id] = card
                self._by_key[card.key] = card.id
            self._shown_log = list(snapshot.shown_log)
            self._dismissed = dict(snapshot.dismissed)

    def snapshot(self) -> ManagerSnapshot:
        """The state to persist."""
        return ManagerSnapshot(
            tuple(self._cards.values()),
            tuple(self._shown_log),
            MappingProxyType(dict(self._dismissed)),
        )

    @property
    def cards(self) -> tuple[Card, ...]:
        """Every open card."""
        return tuple(self._cards.values())

    @property
    def visible(self) -> tuple[Card, ...]:
        """The cards on screen now."""
        return tuple(c for c in self._cards.values() if c.state is CardState.VISIBLE)

    def get(self, card_id: str) -> Card | None:
        """An open card by id."""
        return self._cards.get(card_id)

    def by_key(self, key: str) -> Card | None:
        """An open card by key."""
        card_id = self._by_key.get(key)
        return self._cards.get(card_id) if card_id else None

    def in_cooldown(self, kind: CardKind, floor: float) -> bool:
        """Whether a new card of ``kind`` must wait after a recent dismissal.

        ``floor`` is the clock's floor (:attr:`agent.clock.Now.floor`): a cooldown ends
        only once it has certainly passed, whatever an untrusted clock says.
        """
        cooldown = self.config.cooldowns.get(kind)
        dismissed = self._dismissed.get(kind.name)
        return cooldown is not None and dismissed is not None and floor - dismissed < cooldown

    def post(self, card: Card, floor: float) -> tuple[Card | None, bool]:
        """Add a card, or update the open card with the same key in place.

        Returns:
            The card as stored (``None`` if refused by a cooldown) and whether it is new.
        """
        existing = self.by_key(card.key)
        if existing is not None:
            # A snoozed card that gets more urgent (a reminder escalating to overdue)
            # wakes up: the driver snoozed a milder message than this one.
            woken = existing.state is CardState.SNOOZED and card.urgency > existing.urgency
            updated = replace(
                card,
                id=existing.id,
                created=existing.created,
                state=CardState.QUEUED if woken else existing.state,
                shown=existing.shown,
                posted_at=existing.posted_at,
                snooze_until=None if woken else existing.snooze_until,
                snooze_until_odometer=None if woken else existing.snooze_until_odometer,
            )
            self._cards[existing.id] = updated
            self._version += 1
            return updated, False
        if self.in_cooldown(card.kind, floor):
            return None, False
        stored = replace(card, state=CardState.QUEUED)
        self._cards[stored.id] = stored
        self._by_key[stored.key] = stored.id
        self._version += 1
        return stored, True

    def replace_card(self, card: Card) -> None:
        """Store a changed version of an open card (same id)."""
        if card.id in self._cards:
            self._cards[card.id] = card
            self._version += 1

    def close(self, card_id: str, reason: CloseReason, now: float) -> Card | None:
        """Close a card for good; returns it as it was (``None`` if unknown)."""
        card = self._cards.pop(card_id, None)
        if card is None:
            return None
        self._version += 1
        if self._by_key.get(card.key) == card_id:
            del self._by_key[card.key]
        if reason is CloseReason.DISMISSED:
            self._dismissed[card.kind.name] = now
        return card

    def rebase(self, correction: float) -> None:
        """The clock became trusted: cards dated by the estimate move by ``correction``."""
        for card_id, card in list(self._cards.items()):
            moved = card.rebased(correction)
            if moved is not card:
                self._cards[card_id] = moved
                self._version += 1

    def snooze(self, card_id: str, until: float, until_odometer: int | None) -> Card | None:
        """Put a card away until a time or an odometer reading."""
        card = self._cards.get(card_id)
        if card is None:
            return None
        snoozed = replace(
            card, state=CardState.SNOOZED, snooze_until=until, snooze_until_odometer=until_odometer
        )
        self._cards[card_id] = snoozed
        self._version += 1
        return snoozed

    def refresh(
        self, *, driving: bool, now: float, odometer_m: int | None, floor: float | None = None
    ) -> tuple[list[CardChange], list[Card]]:
        """Apply the policy: expire, wake snoozed cards, choose the visible set.

        ``now`` is the wall time (the local hour, for quiet hours); everything dated or
        ended by time (expiry, snooze, the caps' rolling day, when a card first appeared)
        goes by ``floor``, the latest instant known to have passed (the same as ``now``
        when the clock is trusted; the default).

        Returns:
            The visibility changes (for the HMI) and the cards that expired (closed).
        """
        floor = now if floor is None else floor
        quiet = self.config.in_quiet_hours(now)
        settled = self._settled
        if settled is not None and settled.holds(
            self._version, driving=driving, quiet=quiet, now=floor, odometer_m=odometer_m
        ):
            return [], []  # nothing the choice depends on has changed: nor would it
        expired = [c for c in self._cards.values() if c.expires is not None and floor >= c.expires]
        changes: list[CardChange] = []
        for card in expired:
            self.close(card.id, CloseReason.EXPIRED, now)
            if card.state is CardState.VISIBLE:
                changes.append(CardChange(ChangeType.REMOVED, card, CloseReason.EXPIRED))
        for card in list(self._cards.values()):
            if card.state is CardState.SNOOZED and _snooze_over(card, floor, odometer_m):
                self._cards[card.id] = replace(
                    card, state=CardState.QUEUED, snooze_until=None, snooze_until_odometer=None
                )
        # Prune the rolling window before choosing, so a card held by a cap shows as
        # soon as the window has passed (not one refresh later).
        self._shown_log = [(k, t) for k, t in self._shown_log if floor - t < DAY]
        chosen = self._choose(driving=driving, now=now)
        for card in list(self._cards.values()):
            if card.state is CardState.SNOOZED:
                continue
            if card.id in chosen:
                if card.state is not CardState.VISIBLE:
                    posted_at = card.posted_at
                    if posted_at is None:
                        posted_at = floor
                        self._shown_log.append((card.kind.name, floor))
                    visible = replace(card, state=CardState.VISIBLE, posted_at=posted_at)
                    self._cards[card.id] = visible
                    changes.append(CardChange(ChangeType.ADDED, visible))
            elif card.state is CardState.VISIBLE:
                withdrawn = driving and not moving_allowed(card)
                state = CardState.WITHDRAWN if withdrawn else CardState.QUEUED
                reason = CloseReason.WITHDRAWN_FOR_DRIVING if withdrawn else CloseReason.SUPERSEDED
                self._cards[card.id] = replace(card, state=state)
                changes.append(CardChange(ChangeType.REMOVED, card, reason))
            elif card.state is CardState.WITHDRAWN and not driving:
                self._cards[card.id] = replace(card, state=CardState.QUEUED)
        self._settled = self._settle(driving=driving, quiet=quiet)
        return changes, expired

    def _settle(self, *, driving: bool, quiet: bool) -> _Settled:
        """What the result of a refresh depends on, and the next time it can change."""
        deadline = math.inf
        odometer = math.inf
        for card in self._cards.values():
            if card.expires is not None:
                deadline = min(deadline, card.expires)
            if card.state is CardState.SNOOZED:
                if card.snooze_until is not None:
                    deadline = min(deadline, card.snooze_until)
                if card.snooze_until_odometer is not None:
                    odometer = min(odometer, card.snooze_until_odometer)
        if self._shown_log:
            # A card held back by a daily cap may show once the oldest entry ages out.
            deadline = min(deadline, min(t for _, t in self._shown_log) + DAY)
        return _Settled(self._version, driving, quiet, deadline, odometer)

    def _choose(self, *, driving: bool, now: float) -> set[str]:
        quiet = self.config.in_quiet_hours(now)
        held: dict[str, str] = {}
        candidates = []
        for card in self._cards.values():
            if card.state is CardState.SNOOZED:
                held[card.id] = SNOOZED
            elif driving and not moving_allowed(card):
                held[card.id] = MOVING
            elif (
                quiet
                and card.urgency is not Urgency.CRITICAL
                and card.state is not CardState.VISIBLE
            ):
                held[card.id] = QUIET_HOURS
            else:
                candidates.append(card)
        # Urgency first, then priority; a card already on screen keeps its place over a
        # newcomer of the same rank (no flicker), then the oldest first.
        candidates.sort(
            key=lambda c: (
                -c.urgency,
                -c.priority,
                c.state is not CardState.VISIBLE,
                c.created,
                c.id,
            )
        )
        shown_today: dict[str, int] = {}
        for kind, _ in self._shown_log:
            shown_today[kind] = shown_today.get(kind, 0) + 1
        chosen: set[str] = set()
        waiting = 0
        for card in candidates:
            if len(chosen) >= self.config.max_visible:
                capped = card.posted_at is None and self._capped(card, shown_today)
                waiting += 0 if capped else 1
                held[card.id] = DAILY_CAP if capped else VISIBLE_LIMIT
                continue
            if card.posted_at is None:
                # A card's first appearance counts against its kind's daily cap.
                cap = self.config.daily_caps.get(card.kind)
                count = shown_today.get(card.kind.name, 0)
                if cap is not None and count >= cap:
                    held[card.id] = DAILY_CAP
                    continue
                shown_today[card.kind.name] = count + 1
            chosen.add(card.id)
        self.waiting = waiting
        self.held_back = held
        return chosen

    def _capped(self, card: Card, shown_today: Mapping[str, int]) -> bool:
        """Whether a card's kind has used up its daily cap."""
        cap = self.config.daily_caps.get(card.kind)
        return cap is not None and shown_today.get(card.kind.name, 0) >= cap


@dataclass(frozen=True, slots=True)
class _Settled:
    """The inputs of the last refresh, and until when its result stands."""

    version: int
    driving: bool
    quiet: bool
    deadline: float
    odometer: float

    def holds(
        self, version: int, *, driving: bool, quiet: bool, now: float, odometer_m: int | None
    ) -> bool:
        return (
            version == self.version
            and driving == self.driving
            and quiet == self.quiet
            and now < self.deadline
            and (odometer_m is None or odometer_m < self.odometer)
        )


def _snooze_over(card: Card, now: float, odometer_m: int | None) -> bool:
    if card.snooze_until is not None and now >= card.snooze_until:
        return True
    return (
        card.snooze_until_odometer is not None
        and odometer_m is not None
        and odometer_m >= card.snooze_until_odometer
    )


def first_shown(changes: Iterable[CardChange]) -> list[Card]:
    """The cards that appeared on screen in ``changes``."""
    return [c.card for c in changes if c.type is ChangeType.ADDED]
