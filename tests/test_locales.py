"""Every Chinese text the driver can see is Chinese (issue 11: the zh-CN screen said
"dismissed"), and every text has both languages."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest

from agent import request_notes
from agent.cards import Text
from ui_bridge.reference import hmi_app

_CJK = re.compile(r"[\u3400-\u9fff]")
_ONLY_PLACEHOLDERS = re.compile(r"^(\{[a-z_]+\}[\s，。、：]*)+$")


def _texts(node: Any, where: str) -> Iterator[tuple[str, str, str]]:
    """Every ``{"zh-CN": ..., "en": ...}`` in a JSON document, with where it is."""
    if isinstance(node, dict):
        if "zh-CN" in node and "en" in node:
            yield where, str(node["zh-CN"]), str(node["en"])
        for key, value in node.items():
            yield from _texts(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _texts(value, f"{where}[{index}]")


def _shipped() -> Iterator[tuple[str, str, str]]:
    for name in ("rules.json", "dtc_catalogue.json", "service_plan.json"):
        document = json.loads(resources.files("agent.data").joinpath(name).read_text("utf-8"))
        yield from _texts(document, name)
    for name, value in vars(request_notes).items():
        if isinstance(value, Text):
            yield f"request_notes.{name}", value.zh_cn, value.en
    for key, (english, chinese) in hmi_app._WORDS.items():
        yield f"hmi_app words {key}", chinese, english
    for reason, (english, chinese) in hmi_app._CLOSED.items():
        yield f"hmi_app close reason {reason.name}", chinese, english


@pytest.mark.parametrize(("where", "chinese", "english"), list(_shipped()))
def test_every_chinese_text_is_chinese_and_has_an_english_twin(
    where: str, chinese: str, english: str
) -> None:
    assert english.strip(), where
    if _ONLY_PLACEHOLDERS.match(chinese):
        return  # filled in from texts that are themselves checked here
    assert _CJK.search(chinese), f"{where}: {chinese!r} is not Chinese"
