"""One card on the bus: an object under ``/org/touchpoint/Agent1/cards`` with the Card interface.

Privacy: signals are broadcast to every peer on the bus, so the properties that may
carry personal data (the title and body, which can name a coupon or a booking, and the
template arguments, which carry ids) never travel in a signal. ``InterfacesAdded``
carries the public properties; a change of a private property is announced in
``PropertiesChanged`` as *invalidated* (its name, not its value). The HMI reads them
with ``Get``/``GetAll``, method calls the bus policy restricts to the HMI group.
"""

# No "from __future__ import annotations": dbus-fast reads these annotations at class
# creation, and a postponed "None" would not read as an empty D-Bus signature.

import json
from collections.abc import Mapping
from typing import Annotated, Any, Final, Protocol, TypedDict

from dbus_fast import DBusError, Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusDict,
    DBusInt64,
    DBusSignature,
    DBusStr,
    DBusUInt32,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from agent.cards import ArgValue, Card, CloseReason, Text
from ui_bridge.names import (
    CARD_INTERFACE,
    ERROR_INVALID_ARGS,
    MAX_OPTIONS,
    MAX_STRING,
    PRIVATE,
    micros,
)

DBusActions = Annotated[list[tuple[str, str]], DBusSignature("a(ss)")]

#: Close reasons an HMI may give when the driver (or the screen) removes a card.
HMI_CLOSE_REASONS: Final = frozenset({CloseReason.EXPIRED, CloseReason.DISMISSED})


class CardActions(Protocol):
    """What a card object asks of the bridge when the HMI calls it."""

    locale: str

    async def invoke_action(self, card_id: str, key: str, options: Mapping[str, Any]) -> None:
        """The driver tapped an action."""

    async def dismiss(self, card_id: str, reason: CloseReason) -> None:
        """The driver (or the screen) removed the card."""

    async def report_shown(self, card_id: str) -> None:
        """The driver saw the card."""


def _arg_variant(value: ArgValue) -> Variant:  # noqa: PLR0911 - one arm per type
    if isinstance(value, Text):
        return Variant("a{ss}", value.to_json())
    if isinstance(value, tuple):
        if all(isinstance(v, str) for v in value):
            return Variant("as", list(value))
        return Variant(
            "aa{ss}",
            [v.to_json() if isinstance(v, Text) else {"zh-CN": v, "en": v} for v in value],
        )
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, int):
        return Variant("x", value)
    if isinstance(value, float):
        return Variant("d", value)
    return Variant("s", str(value))


class CardProperties(TypedDict):
    """Every property of the Card interface, with its Python type (D-Bus types: SIGNATURES)."""

    Id: str
    Kind: int
    Urgency: int
    DisplayPolicy: int
    Priority: int
    Title: str
    Body: str
    TemplateId: str
    TemplateArgs: dict[str, Variant]
    Actions: list[tuple[str, str]]
    Created: int
    Expires: int
    State: int
    Pending: bool
    Note: str
    Extensions: dict[str, Variant]


def card_properties(card: Card, locale: str) -> CardProperties:
    """Every property of a card, as the Card interface shows it, in ``locale``."""
    return {
        "Id": card.id,
        "Kind": int(card.kind),
        "Urgency": int(card.urgency),
        "DisplayPolicy": int(card.display),
        "Priority": card.priority,
        "Title": card.title.get(locale),
        "Body": card.body.get(locale),
        "TemplateId": card.template,
        "TemplateArgs": {k: _arg_variant(v) for k, v in card.args.items()},
        "Actions": [(a.key, a.label.get(locale)) for a in card.actions],
        "Created": micros(card.created),
        "Expires": micros(card.expires),
        "State": int(card.state),
        "Pending": card.pending,
        "Note": "" if card.note is None else card.note.get(locale),
        "Extensions": {},
    }


SIGNATURES: Final = {
    "Id": "s", "Kind": "u", "Urgency": "u", "DisplayPolicy": "u", "Priority": "u",
    "Title": "s", "Body": "s", "TemplateId": "s", "TemplateArgs": "a{sv}",
    "Actions": "a(ss)", "Created": "x", "Expires": "x", "State": "u", "Pending": "b",
    "Note": "s", "Extensions": "a{sv}",
}  # fmt: skip
PUBLIC: Final = tuple(name for name in SIGNATURES if name not in PRIVATE)


class CardObject(ServiceInterface):
    """The ``org.touchpoint.Agent1.Card`` interface of one card."""

    def __init__(self, card: Card, actions: CardActions) -> None:
        super().__init__(CARD_INTERFACE)
        self.card = card
        self._actions = actions
        # What the HMI was last told, to announce only what differs.
        self._told = card_properties(card, actions.locale)

    def update(self, card: Card | None = None) -> None:
        """Replace the card's content (or re-read it after a change of locale) in place.

        ``PropertiesChanged`` carries the public values that differ and only the names
        of the private ones.
        """
        if card is not None:
            self.card = card
        before: Mapping[str, object] = self._told
        self._told = card_properties(self.card, self._actions.locale)
        after: Mapping[str, object] = self._told
        changed = [k for k, v in after.items() if before.get(k) != v]
        public = {k: after[k] for k in changed if k not in PRIVATE}
        private = [k for k in changed if k in PRIVATE]
        if public or private:
            self.emit_properties_changed(public, private)

    def public_properties(self) -> dict[str, Variant]:
        """The properties a broadcast may carry, as variants (for ``InterfacesAdded``)."""
        told: Mapping[str, object] = self._told
        return {name: Variant(SIGNATURES[name], told[name]) for name in PUBLIC}

    # -- properties ---------------------------------------------------------------------
    # Each returns what the HMI was last told (``card_properties``): one conversion, so
    # a ``Get`` and a signal cannot disagree.

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusStr:  # noqa: N802 - D-Bus names
        """The card's id (a UUID)."""
        return self._told["Id"]

    @dbus_property(access=PropertyAccess.READ)
    def Kind(self) -> DBusUInt32:  # noqa: N802
        """0 unknown, 1 maintenance, 2 fault, 3 benefit, 4 booking, 5 campaign."""
        return self._told["Kind"]

    @dbus_property(access=PropertyAccess.READ)
    def Urgency(self) -> DBusUInt32:  # noqa: N802
        """0 unknown, 1 low, 2 normal, 3 critical."""
        return self._told["Urgency"]

    @dbus_property(access=PropertyAccess.READ)
    def DisplayPolicy(self) -> DBusUInt32:  # noqa: N802
        """0 unknown, 1 parked only, 2 also while moving."""
        return self._told["DisplayPolicy"]

    @dbus_property(access=PropertyAccess.READ)
    def Priority(self) -> DBusUInt32:  # noqa: N802
        """0 to 100, higher first among cards of the same urgency."""
        return self._told["Priority"]

    @dbus_property(access=PropertyAccess.READ)
    def Title(self) -> DBusStr:  # noqa: N802
        """The title in the current locale (private: never in a signal)."""
        return self._told["Title"]

    @dbus_property(access=PropertyAccess.READ)
    def Body(self) -> DBusStr:  # noqa: N802
        """The body in the current locale (private: never in a signal)."""
        return self._told["Body"]

    @dbus_property(access=PropertyAccess.READ)
    def TemplateId(self) -> DBusStr:  # noqa: N802
        """The template (rule) id, for HMIs that localise themselves."""
        return self._told["TemplateId"]

    @dbus_property(access=PropertyAccess.READ)
    def TemplateArgs(self) -> DBusDict:  # noqa: N802
        """The template's arguments (private: never in a signal)."""
        return self._told["TemplateArgs"]

    @dbus_property(access=PropertyAccess.READ)
    def Actions(self) -> DBusActions:  # noqa: N802
        """The buttons: (key, label in the current locale)."""
        return self._told["Actions"]

    @dbus_property(access=PropertyAccess.READ)
    def Created(self) -> DBusInt64:  # noqa: N802
        """When the card was made, microseconds since the Unix epoch."""
        return self._told["Created"]

    @dbus_property(access=PropertyAccess.READ)
    def Expires(self) -> DBusInt64:  # noqa: N802
        """When the card closes by itself, microseconds since the epoch (0: never)."""
        return self._told["Expires"]

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusUInt32:  # noqa: N802
        """0 unknown, 1 queued, 2 visible, 3 withdrawn, 4 snoozed, 5 closed."""
        return self._told["State"]

    @dbus_property(access=PropertyAccess.READ)
    def Pending(self) -> DBusBool:  # noqa: N802
        """An action waits for the cloud's answer: show "pending"."""
        return self._told["Pending"]

    @dbus_property(access=PropertyAccess.READ)
    def Note(self) -> DBusStr:  # noqa: N802
        """A status line under the body ("" when there is none; private).

        What a request of the card's waits for, or that it got no answer and how to retry.
        """
        return self._told["Note"]

    @dbus_property(access=PropertyAccess.READ)
    def Extensions(self) -> DBusDict:  # noqa: N802
        """Room for later additions without a new interface version (empty in v1)."""
        return self._told["Extensions"]

    # -- methods ------------------------------------------------------------------------

    @dbus_method()
    async def InvokeAction(self, key: DBusStr, options: DBusDict) -> None:  # noqa: N802
        """Carry out one of the card's actions (``book``, ``snooze``, ``redeem``...)."""
        if len(key) > MAX_STRING or len(options) > MAX_OPTIONS:
            raise DBusError(ERROR_INVALID_ARGS, "action key or options too large")
        await self._actions.invoke_action(self.card.id, key, options)

    @dbus_method()
    async def Dismiss(self, reason: DBusUInt32) -> None:  # noqa: N802
        """Remove the card: reason 2 the driver dismissed it, 1 the screen timed it out."""
        try:
            close = CloseReason(reason)
        except ValueError:
            close = CloseReason.UNKNOWN
        if close not in HMI_CLOSE_REASONS:
            raise DBusError(ERROR_INVALID_ARGS, f"reason must be 1 or 2, not {reason}")
        await self._actions.dismiss(self.card.id, close)

    @dbus_method()
    def Explain(self) -> DBusDict:  # noqa: N802
        """Why the card is there.

        ``Rule`` (id@version), ``Trigger`` (what made the rule fire), ``Value`` (the
        signal's value at a crossing, as JSON) and ``Facts`` (each fact the rule's
        conditions read: its value then, as JSON). A method, never a signal: only the
        HMI's callers may ask.
        """
        why = self.card.why
        explained: dict[str, Variant] = {
            "Rule": Variant("s", self.card.rule or ""),
            "Trigger": Variant("s", str(why.get("trigger", ""))),
        }
        if "value" in why:
            explained["Value"] = Variant("s", json.dumps(why["value"], ensure_ascii=False))
        facts = why.get("facts")
        if isinstance(facts, Mapping):
            explained["Facts"] = Variant("a{ss}", {
                str(k): json.dumps(v, ensure_ascii=False) for k, v in facts.items()
            })  # fmt: skip
        return explained

    @dbus_method()
    async def ReportShown(self) -> None:  # noqa: N802
        """The driver actually saw the card (an impression)."""
        await self._actions.report_shown(self.card.id)
