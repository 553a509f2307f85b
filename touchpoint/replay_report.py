"""A rule replay as people read it: a text table, JSON, and a timeline page.

See :mod:`touchpoint.rule_replay` for what the figures mean.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime, tzinfo
from typing import Any, Final

from touchpoint.rule_replay import CardLife, Replay, RuleSummary

#: The timeline picture's geometry, in pixels.
_WIDTH: Final = 1000
_LEFT: Final = 260
_ROW: Final = 28
_TOP: Final = 40


def text(result: Replay, zone: tzinfo, baseline: Replay | None = None) -> str:
    """The per-rule table and every card's life, as lines of text."""
    lines = [
        (
            f"replayed {result.updates:,} signal updates from {_when(result.start, zone)} to "
            f"{_when(result.end, zone)}: {len(result.driving)} drives, {len(result.cards)} cards"
        ),
        "",
    ]
    header = f"{'rule':<40} {'posted':>6} {'shown':>6} {'updated':>7}  held back; not fired"
    if baseline is not None:
        header = f"{'rule':<40} {'posted':>10} {'shown':>10}  (baseline -> this rule set)"
    lines += [header, "-" * len(header)]
    rules = sorted(set(result.rules) | set(baseline.rules if baseline else ()))
    for name in rules:
        now = result.rules.get(name, RuleSummary(name))
        if baseline is not None:
            before = baseline.rules.get(name, RuleSummary(name))
            lines.append(f"{name:<40} {_change(before.posted, now.posted):>10} "
                         f"{_change(before.shown, now.shown):>10}")  # fmt: skip
            continue
        held = ", ".join(f"{reason} {seconds:,.0f} s" for reason, seconds in
                         sorted(now.held_s.items(), key=lambda p: -p[1]))  # fmt: skip
        why = ", ".join(f"{reason} x{n}" for reason, n in
                        (now.skipped + now.suppressed).most_common())  # fmt: skip
        detail = "; ".join(p for p in (held, why) if p)
        if not (detail or now.posted or now.updated):
            detail = "never triggered"
        lines.append(
            f"{name:<40} {now.posted:>6} {now.shown:>6} {now.updated:>7}  {detail}".rstrip()
        )
    lines += ["", f"{'posted':<19} {'km':>9} {'while':<7} {'shown':<8} {'ended':<8} card (rule)"]
    for card in sorted(result.cards, key=lambda c: c.posted):
        km = "" if card.posted_km is None else f"{card.posted_km:,.1f}"
        lines.append(
            f"{_when(card.posted, zone):<19} {km:>9} "
            f"{'parked' if card.posted_parked else 'driving':<7} "
            f"{_clock(card.shown, zone):<8} {_clock(card.ended, zone):<8} "
            f"{card.key} ({card.rule}){f', {card.end.lower()}' if card.end else ''}"
        )
    return "\n".join(lines)


def as_json(result: Replay, baseline: Replay | None = None) -> dict[str, Any]:
    """Everything, for machines (times in seconds since the epoch)."""
    document = _plain(result)
    return document if baseline is None else {"rules": document, "baseline": _plain(baseline)}


def page(result: Replay, zone: tzinfo, title: str, baseline: Replay | None = None) -> str:
    """A self-contained HTML page: the table, and a timeline a person reads at a glance."""
    pictures = [("this rule set", result)] + ([("baseline", baseline)] if baseline else [])
    body = "".join(
        f"<h2>{html.escape(name)}</h2>{_svg(replayed, zone)}" for name, replayed in pictures
    )
    table = html.escape(text(result, zone, baseline))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "pre{font-size:12px}.legend span{margin-right:1.5em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='legend'><span>○ posted</span>"
        "<span>● shown</span><span>━ open</span><span style='background:#ddd'>driving"
        f"</span></p>{body}<pre>{table}</pre></body></html>"
    )


def _svg(result: Replay, zone: tzinfo) -> str:
    rules = sorted({c.rule for c in result.cards} | set(result.rules))
    height = _TOP + _ROW * len(rules) + 20
    span = max(result.end - result.start, 1.0)

    def x(t: float) -> float:
        return _LEFT + (t - result.start) / span * (_WIDTH - _LEFT - 20)

    parts = [(f"<svg xmlns='http://www.w3.org/2000/svg' width='{_WIDTH}' height='{height}' "
             "font-size='12'>")]  # fmt: skip
    for start, end in result.driving:
        parts.append(f"<rect class='driving' x='{x(start):.1f}' y='{_TOP - 10}' "
                     f"width='{max(x(end) - x(start), 1):.1f}' height='{_ROW * len(rules)}' "
                     "fill='#ddd'/>")  # fmt: skip
    for at, anchor in ((result.start, "start"), (result.end, "end")):
        parts.append(f"<text x='{x(at):.1f}' y='{_TOP - 16}' text-anchor='{anchor}'>"
                     f"{html.escape(_when(at, zone))}</text>")  # fmt: skip
    for row, rule in enumerate(rules):
        y = _TOP + row * _ROW + 8
        parts.append(f"<text x='4' y='{y + 4}'>{html.escape(rule)}</text>")
        parts.extend(_card(c, y, x, result.end) for c in result.cards if c.rule == rule)
    parts.append("</svg>")
    return "".join(parts)


def _card(card: CardLife, y: float, x: Any, end: float) -> str:
    closed = card.ended if card.ended is not None else end
    shown = "" if card.shown is None else (
        f"<circle class='shown' cx='{x(card.shown):.1f}' cy='{y}' r='5' fill='#1565c0'/>"
    )  # fmt: skip
    tip = html.escape(f"{card.key}: {card.end.lower() or 'open at the end'}")
    return (
        f"<g><title>{tip}</title><line x1='{x(card.posted):.1f}' y1='{y}' x2='{x(closed):.1f}' "
        f"y2='{y}' stroke='#1565c0' stroke-width='3'/><circle class='posted' "
        f"cx='{x(card.posted):.1f}' cy='{y}' r='6' fill='white' stroke='#1565c0'/>{shown}</g>"
    )


def _plain(result: Replay) -> dict[str, Any]:
    return {
        "start": result.start,
        "end": result.end,
        "updates": result.updates,
        "driving": [list(span) for span in result.driving],
        "rules": {name: _summary(s) for name, s in result.rules.items()},
        "cards": [asdict(card) for card in sorted(result.cards, key=lambda c: c.posted)],
    }


def _summary(summary: RuleSummary) -> Mapping[str, Any]:
    return {
        "posted": summary.posted,
        "shown": summary.shown,
        "updated": summary.updated,
        "held_s": dict(summary.held_s),
        "not_fired": dict(summary.skipped),
        "suppressed": dict(summary.suppressed),
    }


def _change(before: int, after: int) -> str:
    return str(after) if before == after else f"{before} -> {after}"


def _when(t: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d %H:%M:%S")


def _clock(t: float | None, zone: tzinfo) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, zone).strftime("%H:%M:%S")
