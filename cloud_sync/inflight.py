"""What the car has sent and the cloud has not yet acknowledged as stored.

A message goes through two steps before its events may leave the outbox: the broker's
PUBACK (it has the message: flow control and the broker's reason code), then the cloud's
:class:`~cloud_sync.contract.Ack` (it has stored the events, after its own commit). Only
the second deletes them: a broker restart without persistence, a consumer that crashes
after the broker handed it a message, or a stranger in the cloud's shared subscription
group would otherwise lose what the car already forgot.

Pure bookkeeping on the event loop; the times are the monotonic clock's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Sent:
    """One message's events on their way.

    Attributes:
        key: What the cloud's ack names: the batch id, or a request's event id.
        attempts: The message's events, each with the attempt this send is.
        sent: When it was published (monotonic).
        published: Whether the broker acknowledged it (PUBACK).
    """

    key: str
    attempts: dict[str, int]
    sent: float
    published: bool = False

    @property
    def ids(self) -> list[str]:
        """The events' ids, in order."""
        return list(self.attempts)


@dataclass(slots=True)
class InFlight:
    """Every message not yet acknowledged by the cloud, by PUBACK token and by ack key."""

    _by_token: dict[int, Sent] = field(default_factory=dict)
    _by_key: dict[str, Sent] = field(default_factory=dict)

    def __len__(self) -> int:
        """Messages on their way (awaiting the PUBACK or the cloud's ack)."""
        return len(self._by_key)

    def add(self, token: int, sent: Sent) -> None:
        """A message was published with ``token``."""
        self._by_token[token] = sent
        self._by_key[sent.key] = sent

    def published(self, token: int) -> Sent | None:
        """The broker acknowledged ``token``: the message now waits for the cloud."""
        sent = self._by_token.pop(token, None)
        if sent is not None:
            sent.published = True
        return sent

    def refused(self, token: int) -> Sent | None:
        """The broker refused ``token``: the message is no longer on its way."""
        sent = self._by_token.pop(token, None)
        if sent is not None:
            self._by_key.pop(sent.key, None)
        return sent

    def acknowledged(self, key: str) -> Sent | None:
        """The cloud stored what ``key`` names; ``None`` if it is not on its way here."""
        sent = self._by_key.pop(key, None)
        if sent is not None:
            self._by_token = {t: s for t, s in self._by_token.items() if s is not sent}
        return sent

    def overdue(self, now: float, timeout: float) -> list[Sent]:
        """Take out the messages the broker took but the cloud has not acknowledged in time."""
        late = [s for s in self._by_key.values() if s.published and now - s.sent > timeout]
        for sent in late:
            del self._by_key[sent.key]
        return late

    def clear(self) -> list[Sent]:
        """Take out everything (the connection went): it is all to be sent again."""
        everything = list(self._by_key.values())
        self._by_token.clear()
        self._by_key.clear()
        return everything

    def __iter__(self) -> Iterator[Sent]:
        return iter(list(self._by_key.values()))
