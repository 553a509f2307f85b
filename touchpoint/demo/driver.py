"""A scripted driver: uses the D-Bus API as an HMI would, and watches it for mistakes.

It follows the cards with :class:`~ui_bridge.reference.hmi_client.HmiClient` (the library the
reference HMI uses), reports each card as shown once it has "read" it, and, only while
the car is parked, taps what a driver would: Book on a maintenance or fault card (then the
first slot the cloud offers), Redeem on a coupon, OK on a booking confirmation.

While it follows, it checks the driver-distraction rule from the screen's side: no
parked-only card may be on the bus while the agent says driving is restricted, none may
appear while the car is actually moving (the last speed the CAN layer decoded), and one
shown while parked must be gone within :data:`MOVING_GRACE_S` of the car moving off
(the agent withdraws on the gear and the ignition, so normally before any speed; on a
loaded machine its commit can trail the first decoded speed by a few milliseconds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from agent.cards import CardKind, Display
from touchpoint.tasks import cancel_and_wait
from ui_bridge.names import ERROR_NOT_VISIBLE
from ui_bridge.reference.hmi_client import CardView, HmiClient, HmiError, Update

_log = logging.getLogger(__name__)

#: How long the driver takes to read a card before reporting it shown and tapping.
READ_S: Final = 0.3
#: How long a parked-only card shown before the car moved off may stay on the bus.
MOVING_GRACE_S: Final = 1.0
#: How long the driver waits for the cloud's booking slots.
SLOTS_TIMEOUT_S: Final = 15.0


@dataclass(slots=True)
class DriverLog:
    """What the driver did and saw."""

    impressions: int = 0
    taps: list[tuple[str, str]] = field(default_factory=list)  # (action key, card title)
    booked_slots: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ScriptedDriver:
    """Follows and taps the cards over D-Bus.

    Args:
        address: The bus the agent serves on.
        say: Where to report what the driver does (a timeline line).
        moving: Whether the car is moving now (for the distraction check).
    """

    def __init__(
        self,
        address: str,
        say: Callable[[str], None],
        moving: Callable[[], bool],
        *,
        watch_only: bool = False,
    ) -> None:
        #: Only watch the screen for distraction mistakes: a person taps (--interactive).
        self.watch_only = watch_only
        self.log = DriverLog()
        self._say = say
        self._moving = moving
        self._handled: set[str] = set()
        #: Cards reported seen: one that left the screen (driving) and came back is seen
        #: again, but it is one impression, as the agent counts it (card.shown once).
        self._reported: set[str] = set()
        self._on_bus: set[str] = set()
        self._moving_since: float | None = None
        self._booked = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.client = HmiClient(address, locale="en", listener=self._on_update)

    def start(self) -> None:
        """Start following the cards."""
        self.client.start()

    async def stop(self) -> None:
        """Stop following; what is being tapped is abandoned."""
        await cancel_and_wait(list(self._tasks))
        await self.client.close()

    async def idle(self) -> None:
        """Wait until nothing the driver started is still going on."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- watching -----------------------------------------------------------------------

    def _on_update(self, _update: Update) -> None:
        state = self.client.state
        moving = self._moving()
        now = time.monotonic()
        if not moving:
            self._moving_since = None
        elif self._moving_since is None:
            self._moving_since = now
        for path, card in state.cards.items():
            if card.display is not Display.PARKED_ONLY:
                continue
            if state.restricted:
                self._violation(f"parked-only card {card.id!r} on the bus while restricted")
            elif moving and path not in self._on_bus:
                self._violation(f"parked-only card {card.id!r} appeared while moving")
            elif self._moving_since is not None and now - self._moving_since > MOVING_GRACE_S:
                self._violation(f"parked-only card {card.id!r} on the bus while moving")
        self._on_bus = set(state.cards)
        # A card that left the screen is read again when it comes back.
        self._handled &= state.cards.keys()
        if self.watch_only:
            return
        for card in state.ordered():
            if card.path in self._handled or not card.private_loaded:
                continue
            self._handled.add(card.path)
            task = asyncio.get_running_loop().create_task(self._handle(card))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _violation(self, text: str) -> None:
        if text not in self.log.violations:
            self.log.violations.append(text)
            self._say(f"VIOLATION {text}")

    # -- acting -------------------------------------------------------------------------

    async def _handle(self, card: CardView) -> None:
        await asyncio.sleep(READ_S)
        if card.path not in self.client.state.cards:
            return  # gone before the driver looked (driving started)
        try:
            await self.client.report_shown(card.path)
            if card.path not in self._reported:
                self._reported.add(card.path)
                self.log.impressions += 1
            self._say(f"HMI      driver saw: {card.title!r}")
            if self.client.state.restricted:
                return  # no tapping while driving
            keys = {action.key for action in card.actions}
            if card.kind in (CardKind.MAINTENANCE, CardKind.FAULT) and "book" in keys:
                if not self._booked:  # one workshop visit sees to everything
                    self._booked = True
                    await self._book(card)
            elif card.kind is CardKind.BENEFIT and "redeem" in keys:
                await self._tap(card, "redeem")
            elif card.kind is CardKind.BOOKING and "ok" in keys:
                await self._tap(card, "ok")
        except HmiError as err:
            if card.path not in self.client.state.cards or err.name == ERROR_NOT_VISIBLE:
                # Gone while the driver reached for it (driving started, it expired): the
                # agent may answer the tap before the bus has told the screen.
                _log.info("driver: %s went away: %s", card.title, err)
                return
            _log.warning("driver: %s: %s", card.title, err)
            self.log.errors.append(f"{card.title}: {err}")
            self._say(f"HMI      {card.title!r}: {err}")

    async def _tap(self, card: CardView, key: str) -> None:
        label = next((a.label for a in card.actions if a.key == key), key)
        self._say(f"HMI      driver taps {label!r} on {card.title!r}")
        self.log.taps.append((key, card.title))
        await self.client.invoke_action(card.path, key)

    async def _book(self, card: CardView) -> None:
        slots_ready = self.client.expect_slots(card.path)
        await self._tap(card, "book")
        async with asyncio.timeout(SLOTS_TIMEOUT_S):
            await slots_ready
        slots = await self.client.booking_slots(card.path)
        if not slots:
            self._say("HMI      no booking slots offered")
            return
        slot = slots[0]
        dealer = f" at {slot.dealer}" if slot.dealer else ""
        self._say(f"HMI      {len(slots)} slots offered; driver picks {slot.id}{dealer}")
        self.log.booked_slots.append(slot.id)
        await self.client.request_booking(card.path, slot.id)
