"""What the development cloud knows about a car: its documents and its dealer's diary.

Shared by ``touchpoint cloud-sim`` and ``touchpoint demo``: a delivery service and a
tyre rotation on record, a gold member with a coffee coupon for charging stops, a
campaign rule, and three appointments tomorrow.
"""

from __future__ import annotations

from typing import Final

from agent.benefits import Coupon, Wallet
from agent.plan import LocalisedText, ServiceHistory, ServiceRecord, default_plan
from agent.rule_model import RuleSetDocument
from cloud_sync.contract import WireSlot

DAY: Final = 86_400
DEALER: Final = LocalisedText(zh_cn="星辰汽车服务中心", en="Star Motors Service")


def demo_history() -> ServiceHistory:
    """Every item done at delivery; tyres and cabin filter again at 10,020 km."""
    plan = default_plan()
    delivery = ServiceRecord(
        items=tuple(i.id for i in plan.items), odometer_km=0, source="delivery"
    )
    tyres = ServiceRecord(items=("tyre_rotation", "cabin_filter"), odometer_km=10_020)
    return ServiceHistory(version=1, records=(delivery, tyres))


def demo_wallet(version: int = 1) -> Wallet:
    """A gold member whose dealer is known, with a coffee coupon for a charging stop."""
    return Wallet(
        version=version,
        tier="gold",
        points=3200,
        dealer_id="dealer-sh-017",
        coupons=(
            Coupon(
                id="coffee-charge-01",
                title=LocalisedText(zh_cn="充电时送您一杯咖啡", en="A coffee while you charge"),
                body=LocalisedText(
                    zh_cn="合作咖啡店凭券免费兑换一杯咖啡。",
                    en="Show this at the partner café for a free coffee.",
                ),
                scenes=("charging_started",),
            ),
        ),
    )


def demo_campaign(version: int = 1) -> RuleSetDocument:
    """A campaign: parked with the battery under 25 %, point to the partner chargers."""
    return RuleSetDocument.model_validate({
        "version": version,
        "rules": [{
            "id": "campaign.partner-chargers", "version": 1,
            "description": "Low battery, parked: the partner chargers nearby.",
            "trigger": {"signal": {
                "path": "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed",
                "op": "<", "value": 25}, "min_interval_s": 3600},
            "conditions": {"fact": "vehicle.parked", "op": "==", "value": True},
            "card": {
                "kind": "campaign", "priority": 40, "ttl_s": 6 * 3600,
                "title": {"zh-CN": "附近有合作充电站", "en": "Partner chargers nearby"},
                "body": {"zh-CN": "会员在合作充电站充电享九折。",
                         "en": "Members charge 10 % cheaper at partner stations."},
                "actions": [{"key": "dismiss", "label": {"zh-CN": "知道了", "en": "Got it"}}],
            },
            "caps": {"per_day": 1},
        }],
    })  # fmt: skip


def demo_slots(now: float) -> list[WireSlot]:
    """Three appointments tomorrow at the demo dealer (09:00, 11:00, 13:00 in UTC+8)."""
    tomorrow = (int(now) // DAY + 1) * DAY + 3600
    return [WireSlot(id=f"slot-{i}", start=tomorrow + i * 7200, dealer=DEALER) for i in range(3)]
