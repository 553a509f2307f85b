"""The documents the cloud sends, as the agent validates them: the contract's bodies.

Cloud sync validates each document it receives against these models before the agent
applies it. Plans, histories, catalogues, wallets and rule sets are defined beside the
engines that use them and named here, so that an adapter needs this one module; two
are defined here:

- :class:`ConsentText`: what each consent category is used for, in both languages, as
  the settings app shows it.
- :class:`CloudCard`: a card the cloud posts to one car (a recall notice, a
  confirmation made elsewhere), or takes back.

They arrive signed and versioned through cloud sync, which checks all that; the agent
gets them validated (:meth:`agent.core.Agent.apply_document`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.benefits import Coupon, Wallet
from agent.fault_engine import DtcCatalogue
from agent.plan import LocalisedText, ServiceHistory, ServicePlan, ServiceRecord
from agent.rule_model import CardTemplate, RuleSetDocument, RuleStops

__all__ = [
    "CardTemplate",
    "CloudCard",
    "ConsentText",
    "Coupon",
    "DtcCatalogue",
    "LocalisedText",
    "RuleSetDocument",
    "RuleStops",
    "ServiceHistory",
    "ServicePlan",
    "ServiceRecord",
    "Wallet",
]


class ConsentText(BaseModel):
    """The consent-policy text: what each category is used for, in both languages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    version: Annotated[int, Field(ge=0)] = 0
    purposes: dict[
        Literal["vehicle_health", "usage_analytics", "marketing_benefits", "location"],
        LocalisedText,
    ]
    policy_url: Annotated[str, Field(max_length=300)] | None = None


class CloudCard(BaseModel):
    """A card the cloud posts directly (the body of a ``card`` document).

    It follows the same policy as every other card (driver distraction, caps, quiet
    hours). ``card_id`` names it: a later document with the same ``card_id`` replaces
    it in place, and one with ``withdraw`` takes it away.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    card_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,56}$")]
    withdraw: bool = False
    card: CardTemplate | None = None
