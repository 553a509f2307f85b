"""The JSON schemas touchpoint publishes in ``docs/`` for the documents the cloud sends.

``python -m touchpoint.docgen.schemas`` rewrites them; a test fails when they drift from the models.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from agent.benefits import Wallet
from agent.fault_engine import DtcCatalogue
from agent.plan import ServiceHistory, ServicePlan
from agent.rule_model import RuleSetDocument, RuleStops

DOCS: Final = Path(__file__).resolve().parents[2] / "docs"
SCHEMAS: Final[dict[str, Callable[[], dict[str, Any]]]] = {
    "rules.schema.json": RuleSetDocument.model_json_schema,
    "rule_stops.schema.json": RuleStops.model_json_schema,
    "service_plan.schema.json": ServicePlan.model_json_schema,
    "service_history.schema.json": ServiceHistory.model_json_schema,
    "dtc_catalogue.schema.json": DtcCatalogue.model_json_schema,
    "wallet.schema.json": Wallet.model_json_schema,
}


def render(name: str) -> str:
    """The text of one published schema."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **SCHEMAS[name]()}
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main() -> int:
    """Rewrite every schema under ``docs/``."""
    for name in SCHEMAS:
        (DOCS / name).write_text(render(name), encoding="utf-8")
        sys.stdout.write(f"wrote docs/{name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
