"""The demo's stories: which drives, in which order, and what must have happened.

A story is a list of drives of the vehicle simulator (one car: what a drive leaves, the
odometer, the oil life, the service counter, the next one starts from), each followed by
what to wait for (the driver's booking confirmed by the cloud, say), and the checks
that decide the demo's exit status. The checks read only what the components really did:
the cards the daemon published, the events it committed, what the driver saw over
D-Bus, what the cloud took in over MQTT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from agent.cards import CardKind
from agent.events import EventType
from touchpoint.demo.driver import DriverLog


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened, for the checks."""

    cards_shown: Mapping[CardKind, int]
    car_events: Mapping[str, int]  # by type
    car_ids: frozenset[str]
    cloud_ids: frozenset[str]
    outbox_left: int
    dead_letters: int
    documents_applied: int
    documents_rejected: int
    driver: DriverLog


Check = Callable[[Outcome], bool]


@dataclass(frozen=True, slots=True)
class Drive:
    """One drive of the simulator, and what the demo waits for after it.

    Attributes:
        scenario: The simulator's scenario.
        wait_for: Event types the car must have recorded before the story goes on
            (``a|b``: either; an answer the checks then judge).
        without: Phases of the scenario to leave out (by the start of their name).
    """

    scenario: str
    wait_for: tuple[str, ...] = ()
    without: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Story:
    """A demo story."""

    name: str
    description: str
    start_km: float
    drives: tuple[Drive, ...]
    checks: tuple[tuple[str, Check], ...] = field(default=())

    def up_to_the_driver(self, text: str) -> bool:
        """Whether the check ``text`` needs a tap; in the interactive demo a person may not."""
        return text in DRIVERS_PART


_BOOKED: Final = "the driver booked from the card and the cloud confirmed the booking"
_REDEEMED: Final = "the driver redeemed it and the cloud accepted"
_FAULT_BOOKED: Final = "the driver booked a workshop visit from the fault card; the cloud confirmed"
#: The checks that only a tap makes true.
DRIVERS_PART: Final = frozenset({_BOOKED, _REDEEMED, _FAULT_BOOKED})

#: The cloud's documents a car takes in when it first comes online.
DOCUMENTS: Final = 5


def _confirmed(o: Outcome) -> int:
    return o.car_events.get(EventType.BOOKING_CONFIRMED, 0)


def _documents(o: Outcome) -> bool:
    return o.documents_applied >= DOCUMENTS and o.documents_rejected == 0


def _no_violation(o: Outcome) -> bool:
    return not o.driver.violations


def _delivered(o: Outcome) -> bool:
    return o.outbox_left == 0 and o.dead_letters == 0 and o.car_ids <= o.cloud_ids


_COMMON_FIRST: Final = (
    ("the cloud's signed documents (plan, history, catalogue, wallet, campaign) took effect",
     _documents),
)  # fmt: skip
_COMMON_LAST: Final = (
    ("no parked-only card was on the bus while the car was driving or moving", _no_violation),
    ("every event the car recorded reached the cloud exactly once (after de-duplication)",
     _delivered),
)  # fmt: skip

SERVICE: Final = Story(
    name="service",
    description="the service comes due on the highway and is booked once parked; a charging "
    "stop unlocks a coupon",
    # 3 km before the engine oil's "due soon" point (13,500 km).
    start_km=13_497.0,
    drives=(
        Drive("highway_service", wait_for=("booking.confirmed|booking.declined",)),
        Drive("park_charge", wait_for=("redemption.confirmed|redemption.declined",)),
    ),
    checks=(
        *_COMMON_FIRST,
        ("the service came due and its card was shown",
         lambda o: o.cards_shown.get(CardKind.MAINTENANCE, 0) >= 1),
        (_BOOKED, lambda o: bool(o.driver.booked_slots) and _confirmed(o) == 1),
        ("the charging stop unlocked the coupon",
         lambda o: o.cards_shown.get(CardKind.BENEFIT, 0) >= 1),
        (_REDEEMED, lambda o: o.car_events.get(EventType.REDEMPTION_CONFIRMED, 0) == 1),
        ("the driver reported what was seen (impressions)",
         lambda o: o.car_events.get(EventType.CARD_SHOWN, 0) >= 3),
        *_COMMON_LAST,
    ),
)  # fmt: skip

FAULT: Final = Story(
    name="fault",
    description="a misfire lights the check-engine lamp; parked, the driver books a workshop "
    "visit from the fault card; on the next drive the codes are gone",
    # Between services (oil due soon at 13,500 km, tyres rotated at 10,020 km).
    start_km=11_000.0,
    drives=(
        Drive(
            "fault",
            wait_for=("booking.confirmed|booking.declined",),
            without=("the misfire stops",),
        ),
        Drive("commute", wait_for=(EventType.FAULT_CLEARED,)),
    ),
    checks=(
        *_COMMON_FIRST,
        ("the misfire was detected on the move, its card held back until parked",
         lambda o: o.car_events.get(EventType.FAULT_DETECTED, 0) >= 1
         and o.cards_shown.get(CardKind.FAULT, 0) >= 1),
        (_FAULT_BOOKED, lambda o: bool(o.driver.booked_slots) and _confirmed(o) == 1),
        ("the codes were gone on the next drive and the agent said so",
         lambda o: o.car_events.get(EventType.FAULT_CLEARED, 0) >= 1),
        *_COMMON_LAST,
    ),
)  # fmt: skip

STORIES: Final[Mapping[str, Story]] = MappingProxyType({s.name: s for s in (SERVICE, FAULT)})
