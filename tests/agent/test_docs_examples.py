"""What the README and docs/new-car.md show stays true to the files they show."""

from __future__ import annotations

import re
from pathlib import Path

from agent.rule_model import RuleSetDocument


def test_the_readme_shows_the_example_campaign_as_it_is(repo_root: Path) -> None:
    example = repo_root / "docs" / "examples" / "campaign_low_battery.json"
    text = example.read_text(encoding="utf-8").rstrip("\n")
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    assert f"```json\n{text}\n```" in readme, (
        "README.md's rules section must show docs/examples/campaign_low_battery.json "
        "verbatim: copy the file into its ```json block"
    )
    RuleSetDocument.model_validate_json(text)


def test_the_new_car_guide_is_linked_and_its_links_resolve(repo_root: Path) -> None:
    assert "(docs/new-car.md)" in (repo_root / "README.md").read_text(encoding="utf-8")
    guide = repo_root / "docs" / "new-car.md"
    targets = re.findall(r"\]\(([^)#:]+)\)", guide.read_text(encoding="utf-8"))
    assert targets
    missing = [t for t in targets if not (guide.parent / t).exists()]
    assert not missing, f"docs/new-car.md links to missing files: {missing}"
