"""The per-peer limits on their own: slots in flight and the consent window."""

from __future__ import annotations

from ui_bridge.limits import PeerLimits


def test_a_peer_has_its_own_slots_and_gets_them_back() -> None:
    limits = PeerLimits(max_in_flight=2)
    assert [limits.admit_call(":1.1") for _ in range(3)] == [True, True, False]
    assert limits.admit_call(":1.2")  # another peer is not held up
    limits.release_call(":1.1")
    assert limits.admit_call(":1.1")
    assert limits.calls_in_flight == 3
    assert (limits.counters.calls_refused, limits.counters.peak_calls_in_flight) == (1, 2)
    for peer in (":1.1", ":1.1", ":1.2"):
        limits.release_call(peer)
    assert limits.calls_in_flight == 0


def test_consent_changes_are_counted_over_any_minute() -> None:
    now = [0.0]
    limits = PeerLimits(consent_per_minute=3, clock=lambda: now[0])
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert limits.admit_consent_change(":1.1") is None
    now[0] = 30.0
    assert limits.admit_consent_change(":1.1") == 30.0  # the change at 0 s leaves at 60 s
    assert limits.admit_consent_change(":1.2") is None
    now[0] = 60.0
    assert limits.admit_consent_change(":1.1") is None
    assert limits.counters.consent_changes_refused == 1


def test_peers_long_gone_are_forgotten() -> None:
    now = [0.0]
    limits = PeerLimits(consent_per_minute=1, clock=lambda: now[0])
    for n in range(100):
        limits.admit_consent_change(f":1.{n}")
    now[0] = 61.0
    limits.admit_consent_change(":2.0")
    assert len(limits._consent) == 1  # what it remembers is the point
