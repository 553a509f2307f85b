"""``touchpoint explain CARD``: why a card is there, from the car's own store.

Reads the store without disturbing a running daemon (see :mod:`agent.store.readonly`):
the card's rule, what made it fire (the trigger and the facts its conditions read), and
where it is in its life.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import StoreError
from agent.store.readonly import open_readonly, read_section
from touchpoint.settings import ConfigError, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    parser.add_argument("card", nargs="?", metavar="CARD",
                        help="a card's id, or its key (maintenance, fault:P0301); "
                             "absent: every open card")  # fmt: skip
    parser.add_argument("--config", type=Path, metavar="FILE", help="the daemon's settings")
    parser.add_argument(
        "--db", type=Path, metavar="FILE",
        help="the database file (default: [store] path of the settings)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="the cards as JSON, for machines")


def run(args: argparse.Namespace) -> int:
    """Explain; 0 when the card was found, 1 when not (or no store), 2 for bad settings."""
    path: Path | None = args.db
    if path is None or args.config is not None:
        try:
            path = path or load_settings(args.config).store.path
        except ConfigError as err:
            print(f"touchpoint explain: unusable settings: {err}", file=sys.stderr)
            return 2
    try:
        connection = open_readonly(path)
    except StoreError as err:
        print(f"touchpoint explain: {err}", file=sys.stderr)
        return 1
    try:
        section = read_section(connection, "cards")
    except (sqlite3.DatabaseError, ValueError) as err:
        print(f"touchpoint explain: cannot read {path}: {err}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    cards = [c for c in (section[0] if section else {}).get("cards", []) if isinstance(c, dict)]
    if args.card is not None:
        cards = [c for c in cards if args.card in (c.get("id"), c.get("key"))]
        if not cards:
            print(f"touchpoint explain: no open card {args.card!r} in {path}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps([_plain(c) for c in cards], indent=1, ensure_ascii=False))
    else:
        print("\n\n".join(_text(c) for c in cards) if cards else "no open cards")
    return 0


def _plain(card: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("id", "key", "kind", "rule", "state", "created", "posted_at", "expires", "why")
    return {k: card.get(k) for k in keys} | {"title": (card.get("title") or {}).get("en")}


def _text(card: Mapping[str, Any]) -> str:
    why = card.get("why") or {}
    lines = [
        f"{card.get('key')} ({card.get('id')}): {(card.get('title') or {}).get('en', '')}",
        f"  rule:    {card.get('rule') or 'none (posted by the cloud)'}",
        f"  trigger: {why.get('trigger', 'not recorded (a card from before touchpoint kept it)')}",
    ]
    if "value" in why:
        lines.append(f"  value:   {why['value']}")
    for fact, value in (why.get("facts") or {}).items():
        lines.append(f"  fact:    {fact} = {json.dumps(value, ensure_ascii=False)}")
    state = str(card.get("state", "")).lower()
    lines.append(f"  state:   {state}, created {_when(card.get('created'))}, "
                 f"first on screen {_when(card.get('posted_at'))}")  # fmt: skip
    if card.get("expires") is not None:
        lines.append(f"  expires: {_when(card.get('expires'))}")
    return "\n".join(lines)


def _when(value: object) -> str:
    if not isinstance(value, int | float):
        return "never"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
