"""The agent core, in process: cloud documents taking effect, and refusals recorded."""

from __future__ import annotations

import pytest

from agent.benefits import Wallet
from agent.cards import CardKind, ChangeType, CloseReason
from agent.documents import CloudCard, ConsentText
from agent.plan import default_plan
from agent.rule_model import CardTemplate
from tests.agent.conftest import Car, added

RECALL = CardTemplate.model_validate({
    "kind": "campaign",
    "title": {"zh-CN": "召回通知", "en": "Recall notice"},
    "body": {"zh-CN": "请联系经销商", "en": "Please contact your dealer"},
    "actions": [{"key": "book", "label": {"zh-CN": "预约", "en": "Book"}}],
})  # fmt: skip


def apply(car: Car, kind: str, version: int, body: object) -> None:
    car.keep(car.agent.apply_document(kind, version, body, car.wall, car.mono))  # type: ignore[arg-type]


def test_a_document_takes_effect_with_its_version_and_both_survive_a_restart(car: Car) -> None:
    plan = default_plan().model_copy(update={"version": 7})
    apply(car, "service_plan", 7, plan)
    assert car.agent.plan.version == 7
    assert car.agent.document_versions == {"service_plan": 7}
    [applied] = car.events_of("downlink.applied")
    assert applied.payload == {"kind": "service_plan", "version": 7}
    back = car.restarted()
    assert back.agent.plan.version == 7
    assert back.agent.document_versions == {"service_plan": 7}


def test_consent_text_and_wallet_documents(car: Car) -> None:
    text = ConsentText.model_validate({"version": 2, "purposes": {
        "vehicle_health": {"zh-CN": "保养提醒", "en": "Service reminders"}}})  # fmt: skip
    apply(car, "consent_text", 2, text)
    apply(car, "wallet", 3, Wallet.model_validate({"version": 3, "tier": "gold"}))
    back = car.restarted()
    assert back.agent.consent_text == text
    assert back.agent.wallet is not None
    assert back.agent.document_versions == {"consent_text": 2, "wallet": 3}


def test_a_cloud_card_is_posted_updated_in_place_and_withdrawn(car: Car) -> None:
    apply(car, "card", 1, CloudCard(card_id="recall-42", card=RECALL))
    [card] = car.visible(CardKind.CAMPAIGN)
    assert card.key == "cloud:recall-42"
    assert card.title.en == "Recall notice"
    assert card.rule == "cloud.recall-42@1"
    changed = RECALL.model_copy(update={"priority": 90})
    out = car.agent.apply_document(
        "card", 2, CloudCard(card_id="recall-42", card=changed), car.wall, car.mono
    )
    car.keep(out)
    assert [(c.type, c.card.id) for c in out.changes] == [(ChangeType.UPDATED, card.id)]
    out = car.agent.apply_document(
        "card", 3, CloudCard(card_id="recall-42", withdraw=True), car.wall, car.mono
    )
    car.keep(out)
    assert [(c.type, c.reason) for c in out.changes] == [
        (ChangeType.REMOVED, CloseReason.CLOSED_BY_AGENT)
    ]
    assert car.visible(CardKind.CAMPAIGN) == []
    assert added(car.outputs)[-1].id == card.id


def test_a_refusal_is_recorded_and_nothing_changes(car: Car) -> None:
    before = car.agent.plan
    out = car.agent.reject_document(
        "the signature does not verify", kind="service_plan", version=9,
        topic="tp/v2/veh-1/config/service_plan", wall=car.wall, monotonic=car.mono,
    )  # fmt: skip
    car.keep(out)
    [event] = car.events_of("downlink.rejected")
    assert event.payload["reason"] == "the signature does not verify"
    assert event.payload["version"] == 9
    assert car.agent.plan is before
    assert car.agent.document_versions == {}


def test_an_unknown_document_type_is_refused(car: Car) -> None:
    with pytest.raises(TypeError, match="not a cloud document"):
        car.agent.apply_document("x", 1, RECALL, car.wall, car.mono)
