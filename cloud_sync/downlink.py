"""The gate every document from the cloud passes before it takes effect.

In order, each a reason to refuse: too large; not JSON of a signed document; an unknown
key or a signature that does not verify; a header that does not parse; a kind that does
not match the topic; a version not newer than the one in effect (a replay, or a
rollback); a body its model refuses, or whose own version differs from the signed one.

Two outcomes are not refusals: a message under another vehicle's prefix, or signed for
another vehicle, is ignored (a broker ACL should not let it arrive at all), and the
document already in effect (the retained copy the broker delivers on every reconnect)
is skipped.

The gate is pure: it reads the versions in effect and returns a verdict. Applying an
accepted document (and its version, in the same commit) is the agent's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ValidationError

from cloud_sync.contract import (
    DOCUMENT_BODIES,
    MAX_DOWNLINK_BYTES,
    DocumentHeader,
    DocumentKind,
    SignedDocument,
    parse_topic,
)
from cloud_sync.errors import SignatureError
from cloud_sync.signing import Verifier

#: Longest validation message kept in a rejection (the event and the log line).
_REASON_MAX: Final = 300


@dataclass(frozen=True, slots=True)
class Accepted:
    """A document to apply."""

    kind: DocumentKind
    version: int
    body: BaseModel


@dataclass(frozen=True, slots=True)
class Rejected:
    """A document refused, and why (``kind``/``version`` when they could be read)."""

    reason: str
    kind: DocumentKind | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """Not for this car, or already in effect: nothing to do, nothing to report."""

    why: str


Verdict = Accepted | Rejected | Ignored


class DownlinkGate:
    """Checks the cloud's documents for one vehicle.

    Args:
        vehicle_id: This car's id (its topic prefix and certificate name).
        verifier: The cloud's public keys.
        max_bytes: The largest payload accepted.
    """

    def __init__(
        self, vehicle_id: str, verifier: Verifier, max_bytes: int = MAX_DOWNLINK_BYTES
    ) -> None:
        self.vehicle_id = vehicle_id
        self._verifier = verifier
        self._max_bytes = max_bytes

    def check(self, topic: str, payload: bytes, versions: Mapping[str, int]) -> Verdict:  # noqa: PLR0911 - a return per check
        """The verdict on one message; ``versions`` are the versions in effect by kind."""
        parsed = parse_topic(topic)
        if parsed is None or parsed[0] != self.vehicle_id:
            return Ignored(f"not this vehicle's topic: {topic}")
        expected = _kind_of(parsed[1])
        if expected is None:
            return Rejected(f"no document is expected on {topic}")
        if len(payload) > self._max_bytes:
            return Rejected(f"too large: {len(payload)} bytes (limit {self._max_bytes})", expected)
        try:
            document = SignedDocument.model_validate_json(payload)
        except ValidationError as err:
            return Rejected(short_reason(f"not a signed document: {err}"), expected)
        try:
            self._verifier.verify(document)
        except SignatureError as err:
            return Rejected(str(err), expected)
        try:
            header = DocumentHeader.model_validate_json(document.signed)
        except ValidationError as err:
            return Rejected(short_reason(f"malformed signed header: {err}"), expected)
        if header.vehicle_id not in ("*", self.vehicle_id):
            return Ignored(f"signed for vehicle {header.vehicle_id}")
        if header.kind is not expected:
            return Rejected(
                f"a {header.kind.value} document on the {expected.value} topic",
                header.kind, header.version,
            )  # fmt: skip
        active = versions.get(header.kind.value, 0)
        if header.version == active:
            return Ignored(f"{header.kind.value} version {active} is already in effect")
        if header.version < active:
            return Rejected(
                f"version {header.version} is older than the {active} in effect "
                "(a replay or a rollback)",
                header.kind, header.version,
            )  # fmt: skip
        return _body(header)


def _kind_of(rest: str) -> DocumentKind | None:
    if rest == "cards":
        return DocumentKind.CARD
    head, _, name = rest.partition("/")
    if head != "config":
        return None
    try:
        kind = DocumentKind(name)
    except ValueError:
        return None
    return None if kind is DocumentKind.CARD else kind


def _body(header: DocumentHeader) -> Accepted | Rejected:
    model = DOCUMENT_BODIES[header.kind]
    try:
        body = model.model_validate(header.body)
    except ValidationError as err:
        reason = short_reason(f"the {header.kind.value} body is invalid: {err}")
        return Rejected(reason, header.kind, header.version)
    own = getattr(body, "version", None)
    # A body with a version of its own must carry the signed one: the two could
    # otherwise say different things about which document is in effect.
    if isinstance(own, int) and own not in (0, header.version):
        return Rejected(
            f"the body says version {own}, the signature version {header.version}",
            header.kind, header.version,
        )  # fmt: skip
    return Accepted(header.kind, header.version, body)


def short_reason(text: str) -> str:
    """A rejection reason on one line, cut to what the event and the log keep."""
    flat = " ".join(text.split())
    return flat if len(flat) <= _REASON_MAX else flat[: _REASON_MAX - 1] + "…"
