"""YAML for mapping files: a strict loader and line numbers for messages.

Imported only when a YAML mapping is read or a problem needs its line: PyYAML is a
megabyte a daemon reading JSON does not need.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import yaml

KeyPath = tuple[str, ...]


class YamlProblem(Exception):  # noqa: N818 - carries a problem, it is not an error of ours
    """Text that is not valid YAML, with where (``line N``) and what."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


def read_yaml(text: str) -> tuple[Any, list[tuple[Any, int]]]:
    """Parse YAML strictly; returns the document and its duplicate keys with their lines.

    Raises:
        YamlProblem: If the text is not valid YAML.
    """
    loader = _StrictYamlLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        line = f"line {err.problem_mark.line + 1}" if err.problem_mark else ""
        raise YamlProblem(line, f"not valid YAML: {err.problem}") from err
    except yaml.YAMLError as err:
        raise YamlProblem("", f"not valid YAML: {err}") from err
    finally:
        loader.dispose()
    return document, loader.duplicates


def index_lines(text: str) -> dict[KeyPath, int]:
    """Map every key path of the document to its line (YAML's composer keeps positions)."""
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return {}
    lines: dict[KeyPath, int] = {}
    stack: list[tuple[KeyPath, yaml.Node]] = [((), root)] if root is not None else []
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*prefix, str(key_node.value))
                lines.setdefault(key, key_node.start_mark.line + 1)
                stack.append((key, value_node))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                key = (*prefix, str(index))
                lines.setdefault(key, item.start_mark.line + 1)
                stack.append((key, item))
    return lines


class _StrictYamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe YAML loader that notes duplicate keys (``duplicates``) instead of hiding them.

    Only ``true`` and ``false`` are booleans (as in YAML 1.2 and JSON): YAML 1.1 also
    reads ``on``, ``off``, ``yes``, ``no`` so, which would silently turn a DBC label such
    as ``ON`` in a ``mapping`` transform into the number 1.
    """

    yaml_implicit_resolvers: ClassVar[dict[Any, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[Any, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:  # noqa: FBT001, FBT002
        keys: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = key in keys
            except TypeError:  # unhashable: the base class reports it
                break
            if seen:
                self.duplicates.append((key, key_node.start_mark.line + 1))
            keys.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


_StrictYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
