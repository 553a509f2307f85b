"""The service plan: maintenance items, their intervals, and the service history.

These are documents the cloud sends (and a default plan shipped for the reference car),
so they are pydantic models: validated once at the boundary, frozen afterwards.
Modelled on BMW Condition Based Service, Mercedes ASSYST and Honda Maintenance Minder:
each item has a distance and/or time interval, a lead window, and optionally a
condition input that can make it due early.
"""

from __future__ import annotations

from enum import StrEnum
from importlib import resources
from typing import Annotated, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.cards import Text

DAY: Final = 86_400.0
#: Default lead window by time, per the brief: 30 days before the due date.
DEFAULT_LEAD_DAYS: Final = 30


class Condition(StrEnum):
    """Signals that can make an item due before its interval."""

    OIL_LIFE = "oil_life"
    BRAKE_PAD_WEAR = "brake_pad_wear"
    TYRE_PRESSURE = "tyre_pressure"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class LocalisedText(_Frozen):
    """A text in both locales."""

    zh_cn: Annotated[str, Field(alias="zh-CN", min_length=1, max_length=200)]
    en: Annotated[str, Field(min_length=1, max_length=200)]

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def text(self) -> Text:
        """As the card model's :class:`~agent.cards.Text`."""
        return Text(self.zh_cn, self.en)


class ServiceItem(_Frozen):
    """One maintenance item."""

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")]
    name: LocalisedText
    interval_km: Annotated[float | None, Field(gt=0, le=1_000_000)] = None
    interval_days: Annotated[int | None, Field(gt=0, le=36_500)] = None
    #: Distance before the due point at which the item is "due soon"; default: the
    #: larger of 1,000 km and 10 % of the interval.
    lead_km: Annotated[float | None, Field(ge=0)] = None
    lead_days: Annotated[int, Field(ge=0)] = DEFAULT_LEAD_DAYS
    #: Past the due point by this much, the item is overdue; default: the larger of
    #: 500 km and 5 % of the interval, or 14 days.
    overdue_km: Annotated[float | None, Field(ge=0)] = None
    overdue_days: Annotated[int, Field(ge=0)] = 14
    condition: Condition | None = None

    @model_validator(mode="after")
    def _has_a_trigger(self) -> Self:
        if self.interval_km is None and self.interval_days is None and self.condition is None:
            raise ValueError(f"item {self.id!r} needs an interval or a condition")
        return self

    @property
    def lead_m(self) -> float:
        """The distance lead window, in metres."""
        if self.lead_km is not None:
            return self.lead_km * 1000
        return max(1000.0, 0.1 * (self.interval_km or 0)) * 1000

    @property
    def overdue_m(self) -> float:
        """How far past the due point an item becomes overdue, in metres."""
        if self.overdue_km is not None:
            return self.overdue_km * 1000
        return max(500.0, 0.05 * (self.interval_km or 0)) * 1000


class ServicePlan(_Frozen):
    """The maintenance plan of one car model, as the cloud sends it."""

    schema_version: Annotated[int, Field(ge=1, le=1)] = 1
    version: Annotated[int, Field(ge=0)]
    model: Annotated[str, Field(min_length=1, max_length=64)]
    items: Annotated[tuple[ServiceItem, ...], Field(min_length=1, max_length=64)]
    #: After a dismissed reminder, it comes back after this distance or time, shorter
    #: as the state gets worse (due soon, due, overdue).
    resurface_km: tuple[float, float, float] = (1000.0, 300.0, 100.0)
    resurface_days: tuple[float, float, float] = (14.0, 3.0, 1.0)
    #: Snooze brings the card back after this distance or time, whichever first.
    snooze_km: Annotated[float, Field(gt=0)] = 300.0
    snooze_days: Annotated[float, Field(gt=0)] = 3.0
    #: A benefit scene fires at every multiple of this odometer reading (km).
    milestone_km: Annotated[float, Field(gt=0)] = 10_000.0

    @model_validator(mode="after")
    def _unique_items(self) -> Self:
        ids = [item.id for item in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError("item ids must be unique")
        return self

    def item(self, item_id: str) -> ServiceItem | None:
        """The item with ``item_id``, if the plan has it."""
        return next((i for i in self.items if i.id == item_id), None)


class ServiceRecord(_Frozen):
    """A service carried out: these items at this odometer and time."""

    items: Annotated[tuple[str, ...], Field(min_length=1, max_length=64)]
    odometer_km: Annotated[float, Field(ge=0)]
    #: Seconds since the epoch; ``None`` when unknown (a reset seen on CAN before the
    #: clock was trusted).
    time: float | None = None
    source: Annotated[str, Field(pattern=r"^(cloud|can_reset|delivery)$")] = "cloud"


class ServiceHistory(_Frozen):
    """The records the cloud knows of, newest last."""

    version: Annotated[int, Field(ge=0)] = 0
    records: Annotated[tuple[ServiceRecord, ...], Field(max_length=1000)] = ()


def default_plan() -> ServicePlan:
    """The plan shipped for the reference car (``agent/data/service_plan.json``)."""
    text = resources.files("agent.data").joinpath("service_plan.json").read_text("utf-8")
    return ServicePlan.model_validate_json(text)
