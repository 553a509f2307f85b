"""The downlink gate: only a signed, newer, valid document for this car gets through."""

from __future__ import annotations

import base64
import json
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.plan import default_plan
from cloud_sync.contract import (
    MAX_DOWNLINK_BYTES,
    Ack,
    DocumentKind,
    SignedDocument,
    SlotsReply,
    Topics,
)
from cloud_sync.downlink import Accepted, DownlinkGate, Ignored, Rejected
from cloud_sync.signing import SigningKey, Verifier

VEHICLE: Final = "veh-0001"
TOPICS: Final = Topics(VEHICLE)
KEY: Final = SigningKey.generate("cloud-2026")
OTHER_KEY: Final = SigningKey.generate("cloud-2026")  # same id, another key: a forgery
GATE: Final = DownlinkGate(VEHICLE, Verifier({KEY.key_id: KEY.public_base64()}))
PLAN_TOPIC: Final = TOPICS.config(DocumentKind.SERVICE_PLAN)
ACTIVE: Final = {"service_plan": 3}


def plan_body(version: int) -> dict[str, Any]:
    return default_plan().model_copy(update={"version": version}).model_dump(mode="json")


def signed(
    version: int = 4,
    *,
    key: SigningKey = KEY,
    kind: DocumentKind = DocumentKind.SERVICE_PLAN,
    body: dict[str, Any] | None = None,
    vehicle_id: str = VEHICLE,
) -> bytes:
    document = key.sign(
        kind, plan_body(version) if body is None else body,
        version=version, vehicle_id=vehicle_id, issued_at=1_780_000_000.0,
    )  # fmt: skip
    return document.model_dump_json().encode()


def test_a_signed_newer_valid_document_is_accepted() -> None:
    verdict = GATE.check(PLAN_TOPIC, signed(4), ACTIVE)
    assert isinstance(verdict, Accepted)
    assert verdict.kind is DocumentKind.SERVICE_PLAN
    assert verdict.version == 4
    assert verdict.body == default_plan().model_copy(update={"version": 4})


def test_a_fleet_wide_document_is_accepted_by_every_car() -> None:
    assert isinstance(GATE.check(PLAN_TOPIC, signed(4, vehicle_id="*"), ACTIVE), Accepted)


def rejection(payload: bytes, topic: str = PLAN_TOPIC) -> str:
    verdict = GATE.check(topic, payload, ACTIVE)
    assert isinstance(verdict, Rejected), verdict
    return verdict.reason


def test_forged_unsigned_replayed_older_oversized_malformed_are_rejected() -> None:
    assert "does not verify" in rejection(signed(4, key=OTHER_KEY))
    unknown = SigningKey.generate("someone")
    assert "unknown signing key" in rejection(signed(4, key=unknown))
    unsigned = json.loads(signed(4))
    unsigned["signature"] = ""
    assert "not a signed document" in rejection(json.dumps(unsigned).encode())
    assert "older than the 3 in effect" in rejection(signed(2))
    assert "too large" in rejection(b" " * (MAX_DOWNLINK_BYTES + 1))
    assert "not a signed document" in rejection(b"{not json")
    assert "not a signed document" in rejection(b"\xff\xfe")
    # A body that breaks the plan's model, or says another version than the signature.
    assert "body is invalid" in rejection(signed(4, body={"version": 4, "items": "x"}))
    assert "body says version 5" in rejection(signed(4, body=plan_body(5)))
    # A document of another kind on this topic.
    wallet = signed(4, kind=DocumentKind.WALLET, body={"version": 4})
    assert "a wallet document on the service_plan topic" in rejection(wallet)
    assert "no document is expected" in rejection(signed(4), f"{TOPICS.root}/events")


def test_a_tampered_signed_text_does_not_verify() -> None:
    document = json.loads(signed(4))
    document["signed"] = document["signed"].replace('"version":4', '"version":40')
    assert "does not verify" in rejection(json.dumps(document).encode())


def test_the_document_in_effect_and_other_vehicles_messages_are_ignored() -> None:
    assert isinstance(GATE.check(PLAN_TOPIC, signed(3), ACTIVE), Ignored)
    other = Topics("veh-0002").config(DocumentKind.SERVICE_PLAN)
    assert isinstance(GATE.check(other, signed(4), ACTIVE), Ignored)
    assert isinstance(GATE.check(PLAN_TOPIC, signed(4, vehicle_id="veh-0002"), ACTIVE), Ignored)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_are_never_accepted(payload: bytes) -> None:
    assert not isinstance(GATE.check(PLAN_TOPIC, payload, ACTIVE), Accepted)


_JSON: Final = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    key_id=st.text(max_size=70),
    signed_text=st.one_of(st.text(max_size=300), _JSON.map(json.dumps)),
    signature=st.one_of(
        st.text(max_size=100), st.binary(min_size=64, max_size=64).map(
            lambda b: base64.b64encode(b).decode())
    ),
    extra=st.dictionaries(st.text(max_size=8), _JSON, max_size=2),
)  # fmt: skip
def test_well_formed_but_unsigned_envelopes_are_never_accepted(
    key_id: str, signed_text: str, signature: str, extra: dict[str, Any]
) -> None:
    envelope = {"key_id": key_id, "signed": signed_text, "signature": signature, **extra}
    verdict = GATE.check(PLAN_TOPIC, json.dumps(envelope).encode(), ACTIVE)
    assert not isinstance(verdict, Accepted)


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(max_size=10), _JSON, max_size=6), version=st.integers(-5, 10))
def test_signed_garbage_bodies_are_rejected_not_crashed(body: dict[str, Any], version: int) -> None:
    # Signed by the real key: the signature is fine, the content is not a plan.
    header = {"kind": "service_plan", "vehicle_id": VEHICLE, "version": version,
              "issued_at": 0.0, "body": body}  # fmt: skip
    text = json.dumps(header)
    signature = base64.b64encode(KEY.private.sign(text.encode()).signature).decode()
    document = SignedDocument(key_id=KEY.key_id, signed=text, signature=signature)
    verdict = GATE.check(PLAN_TOPIC, document.model_dump_json().encode(), ACTIVE)
    assert isinstance(verdict, Rejected | Ignored)


def test_keys_round_trip_through_their_base64_form() -> None:
    again = SigningKey.from_base64(KEY.key_id, KEY.private_base64())
    assert again.public_base64() == KEY.public_base64()
    assert isinstance(GATE.check(PLAN_TOPIC, signed(4, key=again), ACTIVE), Accepted)


@pytest.mark.parametrize("start", ["1e300", "NaN", "Infinity", "-1", "7258118401"])
def test_a_slot_time_that_is_no_time_is_refused_before_any_conversion(start: str) -> None:
    text = (
        '{"request_id": "r1", "sent_at": 1780000000, '
        f'"slots": [{{"id": "s1", "start": {start}}}]}}'
    )
    with pytest.raises(ValidationError):
        SlotsReply.model_validate_json(text)
    ok = SlotsReply.model_validate_json(text.replace(start, "1780003600"))
    assert ok.slots[0].start == 1_780_003_600


@pytest.mark.parametrize("sent_at", ["1e300", "NaN", "-5"])
def test_an_ack_or_a_clock_reply_from_no_time_is_refused(sent_at: str) -> None:
    with pytest.raises(ValidationError):
        Ack.model_validate_json(f'{{"sent_at": {sent_at}, "batches": ["b1"]}}')
