"""The configuration reference, rendered from the settings model so that it cannot drift.

Every key of :class:`touchpoint.settings.DaemonSettings` and its section models is listed with
its TOML type, its default, its environment variable and its ``Field`` description.
The variable names and which ones take JSON come from the settings loader itself
(:func:`touchpoint.settings.env_variable`, :func:`touchpoint.settings.takes_json`).

Usage::

    python -m touchpoint.docgen.config_reference            # print docs/configuration.md's text
    python -m touchpoint.docgen.config_reference --write    # rewrite it and the README's block
    python -m touchpoint.docgen.config_reference --check    # exit status 1 if either is stale

The README holds a short index between the markers ``<!-- config-reference:start -->``
and ``<!-- config-reference:end -->``; a test checks both against the code.
"""

from __future__ import annotations

import argparse
import enum
import json
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from touchpoint.settings import ENV_NESTED_DELIMITER, DaemonSettings, env_variable, takes_json

ROOT: Final = Path(__file__).resolve().parents[2]
#: The generated reference, relative to the repository root.
DOCUMENT: Final = Path("docs/configuration.md")
README: Final = Path("README.md")
START: Final = "<!-- config-reference:start -->"
END: Final = "<!-- config-reference:end -->"
COMMAND: Final = "python -m touchpoint.docgen.config_reference --write"
EXAMPLE: Final = "docs/examples/touchpoint.toml"


@dataclass(frozen=True, slots=True)
class Key:
    """One setting, as the reference shows it (Markdown in every text field)."""

    name: str
    type: str
    default: str
    env: str
    description: str


@dataclass(frozen=True, slots=True)
class Section:
    """A TOML table (or array of tables) and its keys.

    Attributes:
        path: The table's dotted path; empty for the top level.
        array: Whether it is an array of tables (``[[can.buses]]``).
        summary: The section model's docstring.
        role: The parent's description of the field that holds it (what its absence
            means, for an optional section).
        note: ``role``, and for an array of tables how the environment sets it.
        keys: Its keys, in the model's order (sub-tables included, with a link).
    """

    path: tuple[str, ...]
    array: bool
    summary: str
    role: str
    note: str
    keys: tuple[Key, ...]

    @property
    def header(self) -> str:
        """``[can]``, ``[[can.buses]]``, or ``top level``."""
        if not self.path:
            return "top level"
        dotted = ".".join(self.path)
        return f"[[{dotted}]]" if self.array else f"[{dotted}]"

    @property
    def heading(self) -> str:
        """The Markdown heading text."""
        return "Top level" if not self.path else f"`{self.header}`"

    @property
    def anchor(self) -> str:
        """The anchor GitHub gives the heading."""
        return _slug(self.heading)


def sections(model: type[BaseModel] = DaemonSettings) -> tuple[Section, ...]:
    """Every section of the settings, depth first in the model's order."""
    return tuple(_walk(model, (), array=False, env=True, role="", note=""))


def _walk(
    model: type[BaseModel], path: tuple[str, ...], *, array: bool, env: bool, role: str, note: str
) -> Iterator[Section]:
    keys: list[Key] = []
    nested: list[tuple[type[BaseModel], tuple[str, ...], bool, str, str]] = []
    for name, field in model.model_fields.items():
        key_path = (*path, name)
        annotation, nullable = _without_none(field.annotation)
        sub, is_list = _model_of(annotation)
        variable = env_variable(key_path) if env else ""
        if sub is not None:
            dotted = ".".join(key_path)
            header = f"[[{dotted}]]" if is_list else f"[{dotted}]"
            bounds = _bounds(field.metadata, plural="entries") if is_list else ""
            kind = "array of tables" if is_list else "table"
            keys.append(
                Key(
                    name=name,
                    type=f"{kind}{bounds}, see [`{header}`](#{_slug(f'`{header}`')})",
                    default=_section_default(field, name, is_list=is_list),
                    env=f"`{variable}` (JSON)" if variable else "—",
                    description=_join(_text(sub.__doc__), _text(field.description)),
                )
            )
            sub_note = _section_note(field, variable, is_list=is_list)
            nested.append((sub, key_path, is_list, _text(field.description), sub_note))
            continue
        keys.append(
            Key(
                name=name,
                type=_type(field, annotation, name=name, nullable=nullable),
                default=_default(field, name),
                env=_env_cell(variable, annotation),
                description=_text(field.description),
            )
        )
    yield Section(path, array, _text(model.__doc__), role, note, tuple(keys))
    for sub, sub_path, is_list, sub_role, sub_note in nested:
        yield from _walk(
            sub, sub_path, array=is_list, env=env and not is_list, role=sub_role, note=sub_note
        )


def _env_cell(variable: str, annotation: Any) -> str:
    if not variable:
        return "—"
    return f"`{variable}`" + (" (JSON)" if takes_json(annotation) else "")


def _section_default(field: FieldInfo, name: str, *, is_list: bool) -> str:
    if is_list or field.is_required() or field.default is None:
        return _default(field, name)
    return "the defaults below"


def _section_note(field: FieldInfo, variable: str, *, is_list: bool) -> str:
    parts = [_text(field.description)]
    if is_list and variable:
        parts.append(
            f"In the environment only as a whole: `{variable}` holds a JSON array of these tables."
        )
    return _join(*parts)


def _join(*parts: str) -> str:
    """Sentences joined, each once."""
    return " ".join(dict.fromkeys(p for p in parts if p))


# --- types -------------------------------------------------------------------------------


def _strip(annotation: Any) -> tuple[Any, list[Any]]:
    """The type inside ``Annotated`` layers, and their metadata."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        for item in extra:
            metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return annotation, metadata


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` to ``(X, True)``; anything else to ``(it, False)``."""
    inner, metadata = _strip(annotation)
    if typing.get_origin(inner) in (Union, types.UnionType):
        members = [a for a in typing.get_args(inner) if a is not type(None)]
        if len(members) == 1 and len(members) < len(typing.get_args(inner)):
            return (typing.Annotated[members[0], *metadata] if metadata else members[0]), True
    return annotation, False


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model of a table (``X``) or an array of tables (``list[X]``)."""
    inner, _ = _strip(annotation)
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner, False
    if typing.get_origin(inner) is list:
        [item] = typing.get_args(inner)
        item, _ = _strip(item)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    return None, False


_SINGULAR: Final = {"characters": "character", "entries": "entry"}
_SCALARS: Final[dict[Any, str]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    Path: "path",
    Any: "any value",
}


def _type(field: FieldInfo, annotation: Any, *, name: str, nullable: bool) -> str:
    text = _type_text(annotation, list(field.metadata), hexadecimal=name.endswith("_id"))
    if nullable and field.default is not None:
        text += ", or `null` (environment only)"
    return text


def _type_text(annotation: Any, metadata: list[Any], *, hexadecimal: bool = False) -> str:
    inner, extra = _strip(annotation)
    metadata = metadata + extra
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is Literal or (isinstance(inner, type) and issubclass(inner, enum.Enum)):
        values = args if origin is Literal else [m.value for m in inner]
        return " or ".join(f"`{json.dumps(v)}`" for v in values)
    if origin is tuple:
        items = [_type_text(a, []) for a in args]
        if len(set(items)) == 1:
            return f"array of {len(args)} values, each {items[0]}"
        return "array of " + ", ".join(items)
    if origin is list:
        return f"array of {_type_text(args[0], [])}" + _bounds(metadata, plural="entries")
    if origin is dict:
        return _table_type(*args)
    base = _SCALARS.get(inner, getattr(inner, "__name__", str(inner)))
    plural = "characters" if inner is str else "entries"
    return base + _bounds(metadata, plural=plural, hexadecimal=hexadecimal)


def _table_type(key: Any, value: Any) -> str:
    """A free-form table (``dict[K, V]``)."""
    if value is Any:
        return "table of any keys and values"
    key_type, _ = _strip(key)
    if isinstance(key_type, type) and issubclass(key_type, enum.Enum):
        keys = ", ".join(f"`{m.value}`" for m in key_type)
    else:
        keys = _type_text(key, [])
    return f"table; keys: {keys}; values: {_type_text(value, [])}"


@dataclass
class _Limits:
    """The constraints found in a field's metadata."""

    low: Any = None
    high: Any = None
    low_strict: bool = False
    high_strict: bool = False
    min_len: int | None = None
    max_len: int | None = None
    pattern: str | None = None

    @classmethod
    def of(cls, metadata: Sequence[Any]) -> _Limits:
        limits = cls()
        for item in metadata:
            match item:
                case annotated_types.Ge(ge=value):
                    limits.low = value
                case annotated_types.Gt(gt=value):
                    limits.low, limits.low_strict = value, True
                case annotated_types.Le(le=value):
                    limits.high = value
                case annotated_types.Lt(lt=value):
                    limits.high, limits.high_strict = value, True
                case annotated_types.MinLen(min_length=value):
                    limits.min_len = value
                case annotated_types.MaxLen(max_length=value):
                    limits.max_len = value
                case _ if getattr(item, "pattern", None):
                    limits.pattern = item.pattern
        return limits


def _bounds(metadata: Sequence[Any], *, plural: str, hexadecimal: bool = False) -> str:
    """``" 1 to 10"``, ``" > 0, ≤ 60"``, ``", 1 to 64 characters"``, ``", matching `...`"``."""
    limits = _Limits.of(metadata)

    def number(value: Any) -> str:
        if hexadecimal and isinstance(value, int) and value > 9:
            return f"0x{value:X}"
        return f"{value:,}"

    values = []
    closed = not limits.low_strict and not limits.high_strict
    if limits.low is not None and limits.high is not None and closed:
        values.append(f"{number(limits.low)} to {number(limits.high)}")
    else:
        if limits.low is not None:
            values.append(f"{'>' if limits.low_strict else '≥'} {number(limits.low)}")
        if limits.high is not None:
            values.append(f"{'<' if limits.high_strict else '≤'} {number(limits.high)}")
    lengths = []
    if limits.min_len is not None and limits.max_len is not None:
        lengths.append(f"{limits.min_len} to {limits.max_len} {plural}")
    elif limits.min_len is not None:
        unit = plural if limits.min_len != 1 else _SINGULAR[plural]
        lengths.append(f"at least {limits.min_len} {unit}")
    elif limits.max_len is not None:
        lengths.append(f"at most {limits.max_len} {plural}")
    if limits.pattern is not None:
        lengths.append(f"matching `{limits.pattern}`")
    text = f" {', '.join(values)}" if values else ""
    return text + "".join(f", {part}" for part in lengths)


# --- defaults ----------------------------------------------------------------------------


def _default(field: FieldInfo, name: str) -> str:
    if field.is_required() or field.default is PydanticUndefined:
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "absent"
    text = f"`{_toml(value, hexadecimal=name.endswith('_id'))}`"
    return text + _human(value, name)


def _toml(value: Any, *, hexadecimal: bool = False) -> str:
    """A TOML literal for a default value."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = f"0x{value:X}" if hexadecimal else str(value)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str | Path):
        text = json.dumps(str(value), ensure_ascii=False)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_toml(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = ", ".join(
            f"{_key(k)} = {_toml(v, hexadecimal=str(k).endswith('_id'))}" for k, v in value.items()
        )
        text = "{" + text + "}"
    else:
        raise TypeError(f"no TOML form for {value!r}")
    return text


def _key(key: Any) -> str:
    """A TOML key: bare when it can be."""
    text = str(key.value if isinstance(key, enum.Enum) else key)
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text)


_UNITS: Final = ((86_400, "day"), (3600, "hour"), (60, "minute"))


def _human(value: Any, name: str) -> str:
    """A reading aid: ``" (14 days)"`` for seconds, ``" (64 MiB)"`` for bytes."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if name.endswith("_s") and value >= 60:
        for size, unit in _UNITS:
            if value >= size and value % size == 0:
                count = int(value // size)
                return f" ({count} {unit}{'s' if count != 1 else ''})"
    if "bytes" in name and value >= 1024:
        for size, unit in ((1024 * 1024, "MiB"), (1024, "KiB")):
            if value % size == 0:
                return f" ({int(value // size)} {unit})"
    return ""


# --- Markdown ----------------------------------------------------------------------------


def _text(text: str | None) -> str:
    """One line of Markdown from a description or docstring (double backticks to single)."""
    if not text:
        return ""
    return " ".join(text.split()).replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _wrap(paragraph: str) -> str:
    return textwrap.fill(paragraph, width=88, break_long_words=False, break_on_hyphens=False)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def render_document(all_sections: Sequence[Section] | None = None) -> str:
    """The text of ``docs/configuration.md``."""
    found = sections() if all_sections is None else all_sections
    example = env_variable(("store", "path"))
    delimiter = ENV_NESTED_DELIMITER
    lines = [
        (
            f"<!-- Generated from touchpoint/settings.py by `{COMMAND}`: do not edit by hand "
            "(a test checks that it is current). -->"
        ),
        "",
        "# Configuration reference",
        "",
        _wrap(
            "`touchpoint run --config FILE` reads a TOML file. Every setting can also be set "
            "in the environment, which wins over the file. The variable is the key's path "
            f"joined with `{delimiter}`, after the prefix `{env_variable(())}`, in upper or lower "
            f"case: `{example}=/tmp/t.db` sets `[store] path`. A table or an array is "
            f"written as JSON (`{env_variable(('policy', 'quiet_hours'))}='[23, 6]'`); the keys "
            "inside an array of tables have no variables of their own (set the whole array). "
            "`null` in the environment sets a value that may be absent to absent (TOML has "
            "no null). A variable whose first part names no table or top-level key is not a "
            f"setting and is ignored (`{env_variable(('kill_seed',))}` belongs to the test "
            f"suite); an unknown key inside a table (`{env_variable(('store', 'pth'))}`) is a "
            "wrong value."
        ),
        "",
        _wrap(
            "A file that cannot be read or is not TOML, and a wrong value in it or in the "
            "environment, stop the daemon with exit status 2 and one line per problem "
            "naming the file and line (`/etc/touchpoint/touchpoint.toml:12: "
            "policy.max_visible: Input should be less than or equal to 10`) or the "
            "variable; the unit does not restart it (`RestartPreventExitStatus=2`), and "
            "`touchpoint doctor` says the same. Running on defaults instead would look "
            "healthy while it wrote another database with no CAN, D-Bus or cloud."
        ),
        "",
        f"A complete example: [`{EXAMPLE}`](examples/touchpoint.toml) (a test loads it).",
        "",
        "Sections: " + ", ".join(f"[`{s.header}`](#{s.anchor})" for s in found if s.path) + ".",
    ]
    for section in found:
        lines += ["", f"## {section.heading}", ""]
        intro = _join(section.summary, section.note)
        if intro:
            lines += [intro, ""]
        lines += [
            "| key | type | default | environment | description |",
            "|---|---|---|---|---|",
        ]
        lines += [
            "| "
            + " | ".join(
                _cell(cell) for cell in (f"`{k.name}`", k.type, k.default, k.env, k.description)
            )
            + " |"
            for k in section.keys
        ]
    return "\n".join(lines) + "\n"


def render_readme_block(all_sections: Sequence[Section] | None = None) -> str:
    """The README's index of sections, markers included."""
    found = sections() if all_sections is None else all_sections
    lines = [
        START,
        f"<!-- generated by `{COMMAND}` from touchpoint/settings.py: do not edit by hand -->",
        "",
        "| section | what | keys |",
        "|---|---|---|",
    ]
    for section in found:
        link = f"[{section.header}](docs/configuration.md#{section.anchor})"
        if section.path:
            link = f"[`{section.header}`](docs/configuration.md#{section.anchor})"
        names = ", ".join(f"`{k.name}`" for k in section.keys if "see [`" not in k.type)
        what = _join(section.summary, section.role) if section.path else "outside any table"
        lines.append(f"| {link} | {_cell(what)} | {names} |")
    lines += [
        "",
        "Every key's type, default, environment variable and meaning:",
        "[`docs/configuration.md`](docs/configuration.md); a complete example:",
        f"[`{EXAMPLE}`]({EXAMPLE}).",
        END,
    ]
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    """``readme`` with the text between the markers (markers included) replaced by ``block``.

    Raises:
        ValueError: If the markers are missing, repeated or out of order.
    """
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start or readme.count(START) != 1 or readme.count(END) != 1:
        raise ValueError(f"the README needs exactly one {START} ... {END} pair")
    return readme[:start] + block + readme[end + len(END) :]


def readme_block(readme: str) -> str | None:
    """The block between the markers (markers included), or ``None`` without them."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        return None
    return readme[start : end + len(END)]


def main(argv: Sequence[str] | None = None) -> int:
    """Print, write or check the reference; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m touchpoint.docgen.config_reference",
        description="The configuration reference, generated from touchpoint/settings.py.",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--write", action="store_true", help=f"rewrite {DOCUMENT} and the README's block"
    )
    action.add_argument(
        "--check", action="store_true", help="exit status 1 if either is not current"
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the repository root (default: this checkout)"
    )
    args = parser.parse_args(argv)
    found = sections()
    document, block = render_document(found), render_readme_block(found)
    if not args.write and not args.check:
        sys.stdout.write(document)
        return 0
    doc_path, readme_path = args.root / DOCUMENT, args.root / README
    readme = readme_path.read_text(encoding="utf-8")
    if args.check:
        stale = []
        if not doc_path.is_file() or doc_path.read_text(encoding="utf-8") != document:
            stale.append(str(DOCUMENT))
        if readme_block(readme) != block:
            stale.append(f"{README} (between {START} and {END})")
        for name in stale:
            sys.stderr.write(f"{name} is stale: run {COMMAND}\n")
        return 1 if stale else 0
    try:
        updated = replace_block(readme, block)
    except ValueError as err:
        sys.stderr.write(f"{README}: {err}\n")
        return 1
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(document, encoding="utf-8")
    sys.stdout.write(f"wrote {DOCUMENT}\n")
    if updated != readme:
        readme_path.write_text(updated, encoding="utf-8")
        sys.stdout.write(f"updated the configuration reference in {README}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
