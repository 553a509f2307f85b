"""The published JSON schemas match the models, and the documented example validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.rule_model import RuleSetDocument
from touchpoint.docgen.schemas import DOCS, SCHEMAS, render


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_published_schema_is_up_to_date(name: str) -> None:
    published = (DOCS / name).read_text(encoding="utf-8")
    assert published == render(name), (
        f"docs/{name} is stale: run python -m touchpoint.docgen.schemas"
    )


def test_the_example_campaign_in_the_docs_is_a_valid_rule_document() -> None:
    text = (DOCS / "examples" / "campaign_low_battery.json").read_text(encoding="utf-8")
    document = RuleSetDocument.model_validate_json(text)
    [rule] = document.rules
    assert rule.card.display == "parked_only"
    assert rule.caps.per_day == 1


def test_the_readme_links_the_rules_schema(repo_root: Path) -> None:
    assert "docs/rules.schema.json" in (repo_root / "README.md").read_text(encoding="utf-8")
