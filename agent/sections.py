"""The parts of the agent's persistent state, each stored as one section.

An input marks the sections it changed (:meth:`agent.core.Agent.mark_dirty`); only those
are written with its batch. A name outside this enum is a programming error, refused
where it is encoded, never a section silently left unsaved.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Section(StrEnum):
    """One stored section of the agent's state."""

    VEHICLE = "vehicle"
    CLOCK = "clock"
    PLAN = "plan"
    CATALOGUE = "catalogue"
    MAINTENANCE = "maintenance"
    FAULTS = "faults"
    WALLET = "wallet"
    CONSENT = "consent"
    RULES = "rules"
    RULE_STATE = "rule_state"
    CARDS = "cards"
    FLOWS = "flows"
    DOCUMENTS = "documents"


#: Sections that describe the car, not its owner: kept when the owner changes. (The
#: document versions too: an old owner's wallet, still retained on the broker, must not
#: come back as new.)
VEHICLE_SECTIONS: Final = frozenset({
    Section.VEHICLE, Section.CLOCK, Section.PLAN, Section.CATALOGUE, Section.MAINTENANCE,
    Section.FAULTS, Section.DOCUMENTS,
})  # fmt: skip
