"""The card policy: visibility, driving restrictions, caps, cooldowns, quiet hours, expiry."""

from __future__ import annotations

import itertools
from collections import defaultdict
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cards import Card, CardKind, CardState, ChangeType, CloseReason, Display, Text, Urgency
from agent.consent import Category
from agent.policy import CardManager, PolicyConfig, first_shown, moving_allowed
from tests.agent.conftest import DAY, HOUR, T0

NO_QUIET = PolicyConfig(quiet_hours=None)
_ids = itertools.count()


def card(
    key: str,
    kind: CardKind = CardKind.MAINTENANCE,
    urgency: Urgency = Urgency.NORMAL,
    display: Display = Display.PARKED_ONLY,
    *,
    priority: int = 50,
    created: float = T0,
    expires: float | None = None,
) -> Card:
    return Card(
        id=f"id-{next(_ids):06d}",
        key=key,
        kind=kind,
        urgency=urgency,
        display=display,
        title=Text(key, key),
        body=Text("", ""),
        template="t",
        created=created,
        category=Category.USAGE_ANALYTICS,
        priority=priority,
        expires=expires,
    )


def critical_fault(key: str, created: float = T0) -> Card:
    return card(key, CardKind.FAULT, Urgency.CRITICAL, Display.WHILE_MOVING, created=created)


def visible_keys(manager: CardManager) -> set[str]:
    return {c.key for c in manager.visible}


def test_posting_again_under_a_key_updates_in_place() -> None:
    manager = CardManager(NO_QUIET)
    first, new = manager.post(card("maintenance"), T0)
    assert new
    assert first is not None
    manager.refresh(driving=False, now=T0, odometer_m=None)
    second, new = manager.post(
        card("maintenance", urgency=Urgency.CRITICAL, created=T0 + 9), T0 + 9
    )
    assert not new
    assert second is not None
    assert second.id == first.id
    assert second.state is CardState.VISIBLE
    assert second.created == T0
    assert second.posted_at == T0
    assert second.urgency is Urgency.CRITICAL
    assert len(manager.cards) == 1


def test_only_critical_faults_made_for_it_show_while_driving() -> None:
    manager = CardManager(NO_QUIET)
    manager.post(card("m"), T0)
    manager.post(critical_fault("f"), T0)
    manager.post(card("not-for-moving", CardKind.FAULT, Urgency.CRITICAL), T0)
    manager.post(card("campaign", CardKind.CAMPAIGN, Urgency.CRITICAL, Display.WHILE_MOVING), T0)
    changes, _ = manager.refresh(driving=True, now=T0, odometer_m=None)
    assert visible_keys(manager) == {"f"}
    assert [c.key for c in first_shown(changes)] == ["f"]
    changes, _ = manager.refresh(driving=False, now=T0 + 1, odometer_m=None)
    # Parked: the three critical ones (max_visible = 3).
    assert visible_keys(manager) == {"f", "campaign", "not-for-moving"}
    changes, _ = manager.refresh(driving=True, now=T0 + 2, odometer_m=None)
    assert visible_keys(manager) == {"f"}
    withdrawn = {c.card.key for c in changes if c.reason is CloseReason.WITHDRAWN_FOR_DRIVING}
    assert withdrawn == {"campaign", "not-for-moving"}
    states = {c.key: c.state for c in manager.cards}
    assert states["campaign"] is CardState.WITHDRAWN
    assert states["m"] is CardState.QUEUED


def test_priorities_and_the_limit_on_cards_shown() -> None:
    manager = CardManager(PolicyConfig(max_visible=2, quiet_hours=None))
    manager.post(card("low", urgency=Urgency.LOW, priority=100), T0)
    manager.post(card("normal-50", priority=50), T0)
    manager.post(card("normal-70", priority=70, created=T0 + 5), T0)
    manager.refresh(driving=False, now=T0, odometer_m=None)
    assert visible_keys(manager) == {"normal-70", "normal-50"}
    assert manager.waiting == 1  # the low one: the HMI can say that more wait
    # A newcomer of the same rank does not push a card off the screen.
    manager.post(card("normal-50-new", priority=50, created=T0 - 100), T0 + 1)
    manager.refresh(driving=False, now=T0 + 1, odometer_m=None)
    assert visible_keys(manager) == {"normal-70", "normal-50"}
    # A more urgent one does.
    manager.post(critical_fault("fault"), T0 + 2)
    changes, _ = manager.refresh(driving=False, now=T0 + 2, odometer_m=None)
    assert visible_keys(manager) == {"fault", "normal-70"}
    [gone] = [c for c in changes if c.type is ChangeType.REMOVED]
    assert gone.card.key == "normal-50"
    assert gone.reason is CloseReason.SUPERSEDED
    assert manager.waiting == 3


def test_quiet_hours_hold_back_all_but_critical_cards() -> None:
    config = PolicyConfig()
    night = T0 + 11 * HOUR  # 23:00 local
    assert config.in_quiet_hours(night)
    assert not config.in_quiet_hours(T0)
    assert config.in_quiet_hours(night + 7 * HOUR)  # 06:00
    assert not config.in_quiet_hours(night + 8 * HOUR)  # 07:00
    manager = CardManager(config)
    manager.post(card("on-screen"), T0)
    manager.refresh(driving=False, now=T0, odometer_m=None)
    manager.post(card("new"), night)
    manager.post(critical_fault("fault"), night)
    manager.refresh(driving=False, now=night, odometer_m=None)
    assert visible_keys(manager) == {"on-screen", "fault"}
    manager.refresh(driving=False, now=night + 8 * HOUR, odometer_m=None)
    assert visible_keys(manager) == {"on-screen", "fault", "new"}


def test_quiet_hours_that_do_not_wrap() -> None:
    config = PolicyConfig(quiet_hours=(13, 14))
    assert not config.in_quiet_hours(T0)
    assert config.in_quiet_hours(T0 + HOUR)
    assert not config.in_quiet_hours(T0 + 2 * HOUR)


def test_cards_expire() -> None:
    manager = CardManager(NO_QUIET)
    manager.post(card("short", expires=T0 + 60), T0)
    manager.post(card("queued", expires=T0 + 60), T0)
    manager.refresh(driving=True, now=T0, odometer_m=None)
    manager.refresh(driving=False, now=T0 + 1, odometer_m=None)
    manager.refresh(driving=True, now=T0 + 2, odometer_m=None)  # both withdrawn
    manager.refresh(driving=False, now=T0 + 3, odometer_m=None)
    changes, expired = manager.refresh(driving=False, now=T0 + 60, odometer_m=None)
    assert {c.key for c in expired} == {"short", "queued"}
    assert {(c.type, c.reason) for c in changes} == {(ChangeType.REMOVED, CloseReason.EXPIRED)}
    assert manager.cards == ()


def test_snooze_by_time_or_odometer() -> None:
    manager = CardManager(NO_QUIET)
    by_time, _ = manager.post(card("a"), T0)
    by_km, _ = manager.post(card("b"), T0)
    assert by_time is not None
    assert by_km is not None
    manager.refresh(driving=False, now=T0, odometer_m=1_000)
    manager.snooze(by_time.id, T0 + HOUR, None)
    manager.snooze(by_km.id, T0 + DAY, 5_000)
    manager.refresh(driving=False, now=T0 + HOUR - 1, odometer_m=4_999)
    assert visible_keys(manager) == set()
    manager.refresh(driving=False, now=T0 + HOUR, odometer_m=4_999)
    assert visible_keys(manager) == {"a"}
    manager.refresh(driving=False, now=T0 + HOUR, odometer_m=5_000)
    assert visible_keys(manager) == {"a", "b"}
    assert manager.snooze("unknown", T0, None) is None


def test_a_dismissal_starts_the_kinds_cooldown() -> None:
    manager = CardManager(NO_QUIET)
    benefit, _ = manager.post(card("coupon-1", CardKind.BENEFIT), T0)
    assert benefit is not None
    manager.close(benefit.id, CloseReason.DISMISSED, T0)
    cooldown = NO_QUIET.cooldowns[CardKind.BENEFIT]
    assert manager.in_cooldown(CardKind.BENEFIT, T0 + cooldown - 1)
    assert manager.post(card("coupon-2", CardKind.BENEFIT), T0 + cooldown - 1) == (None, False)
    stored, new = manager.post(card("coupon-2", CardKind.BENEFIT), T0 + cooldown)
    assert new
    assert stored is not None
    assert manager.close("unknown", CloseReason.DISMISSED, T0) is None


def test_the_daily_cap_counts_first_appearances() -> None:
    config = PolicyConfig(quiet_hours=None, daily_caps=MappingProxyType({CardKind.BENEFIT: 2}))
    manager = CardManager(config)
    shown: list[str] = []
    for i in range(4):
        now = T0 + i * HOUR
        posted, _ = manager.post(card(f"c{i}", CardKind.BENEFIT), now)
        assert posted is not None
        changes, _ = manager.refresh(driving=False, now=now, odometer_m=None)
        shown += [c.key for c in first_shown(changes)]
        for c in manager.visible:
            manager.close(c.id, CloseReason.CLOSED_BY_AGENT, now)
    assert shown == ["c0", "c1"]
    changes, _ = manager.refresh(driving=False, now=T0 + DAY - 1, odometer_m=None)
    assert first_shown(changes) == []
    changes, _ = manager.refresh(driving=False, now=T0 + DAY, odometer_m=None)
    assert [c.key for c in first_shown(changes)] == ["c2"]


def test_coming_back_after_driving_does_not_count_against_the_cap() -> None:
    config = PolicyConfig(quiet_hours=None, daily_caps=MappingProxyType({CardKind.BENEFIT: 1}))
    manager = CardManager(config)
    manager.post(card("c", CardKind.BENEFIT), T0)
    for i in range(5):
        manager.refresh(driving=False, now=T0 + 2 * i, odometer_m=None)
        assert visible_keys(manager) == {"c"}
        manager.refresh(driving=True, now=T0 + 2 * i + 1, odometer_m=None)
        assert visible_keys(manager) == set()


def test_the_snapshot_rebuilds_the_manager() -> None:
    manager = CardManager(NO_QUIET)
    a, _ = manager.post(card("a", CardKind.BENEFIT), T0)
    manager.post(card("b"), T0)
    assert a is not None
    manager.refresh(driving=False, now=T0, odometer_m=None)
    manager.close(a.id, CloseReason.DISMISSED, T0)
    again = CardManager(NO_QUIET, manager.snapshot())
    assert again.cards == manager.cards
    assert again.by_key("b") == manager.by_key("b")
    assert again.in_cooldown(CardKind.BENEFIT, T0 + 1)
    assert again.snapshot() == manager.snapshot()


# -- properties ------------------------------------------------------------------------------

KINDS = [CardKind.MAINTENANCE, CardKind.FAULT, CardKind.BENEFIT, CardKind.CAMPAIGN]
_post = st.tuples(
    st.just("post"),
    st.sampled_from(["k0", "k1", "k2", "k3", "k4", "k5"]),
    st.sampled_from(KINDS),
    st.sampled_from([Urgency.LOW, Urgency.NORMAL, Urgency.CRITICAL]),
    st.sampled_from([Display.PARKED_ONLY, Display.WHILE_MOVING]),
    st.one_of(st.none(), st.floats(1, 2 * DAY)),
)
_close = st.tuples(st.just("close"), st.integers(0, 10), st.sampled_from(list(CloseReason)))
_snooze = st.tuples(st.just("snooze"), st.integers(0, 10), st.floats(1, DAY), st.integers(0, 5000))
_refresh = st.tuples(
    st.just("refresh"), st.booleans(), st.floats(0, 8 * HOUR), st.integers(0, 3000)
)
OPS = st.lists(st.one_of(_post, _close, _snooze, _refresh), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops=OPS, max_visible=st.integers(1, 4), quiet=st.booleans())
def test_manager_invariants(ops: list[tuple[Any, ...]], max_visible: int, quiet: bool) -> None:
    config = PolicyConfig(max_visible=max_visible, quiet_hours=(22, 7) if quiet else None)
    manager = CardManager(config)
    now, odometer, driving = T0, 0, False
    first: dict[str, float] = {}
    appearances: dict[CardKind, list[float]] = defaultdict(list)
    for op in ops:
        if op[0] == "post":
            _, key, kind, urgency, display, ttl = op
            expires = None if ttl is None else now + float(ttl)
            new = card(str(key), kind, urgency, display, created=now, expires=expires)
            manager.post(new, now)
        elif op[0] == "close" and manager.cards:
            _, index, reason = op
            target = manager.cards[int(index) % len(manager.cards)]
            manager.close(target.id, reason, now)
        elif op[0] == "snooze" and manager.cards:
            _, index, seconds, km = op
            target = manager.cards[int(index) % len(manager.cards)]
            manager.snooze(target.id, now + float(seconds), odometer + int(km))
        elif op[0] == "refresh":
            _, driving_now, seconds, metres = op
            driving = bool(driving_now)
            now += float(seconds)
            odometer += int(metres)
            changes, expired = manager.refresh(driving=driving, now=now, odometer_m=odometer)
            for change in changes:
                if change.type is ChangeType.ADDED:
                    assert not driving or moving_allowed(change.card)
                    if change.card.id not in first:
                        first[change.card.id] = now
                        appearances[change.card.kind].append(now)
            assert all(c.expires is not None and c.expires <= now for c in expired)
            visible = manager.visible
            assert len(visible) <= max_visible
            assert all(moving_allowed(c) for c in visible) or not driving
        open_keys = [c.key for c in manager.cards]
        assert len(open_keys) == len(set(open_keys))
        for c in manager.cards:
            assert manager.by_key(c.key) == c
            assert manager.get(c.id) == c
    for kind, times in appearances.items():
        cap = config.daily_caps.get(kind)
        if cap is None:
            continue
        for t in times:
            assert sum(1 for u in times if t - DAY < u <= t) <= cap
