"""``touchpoint rules``: what a rule document would do on a car, before a car sees it.

``touchpoint rules check FILE…`` validates rule documents against the schema and
against a car (its DBC and mapping, or a head unit's ``touchpoint.toml``) and the card
policy, and prints every problem at once as ``FILE:LINE: PATH: message``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from agent.policy import PolicyConfig
from agent.rule_check import Capabilities, Finding, KnownSignal, SignalKind, check_rule_set
from agent.rule_model import RuleSetDocument, builtin_rules
from agent.settings import PolicySettings
from can_signals.catalogue import CATALOGUE, DataType, SignalSpec
from touchpoint.errors import TouchpointError

Location = tuple[str | int, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's options."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="validate rule documents against the schema, a car and the policy",
        description="Validate rule documents against the schema, the car's signals (its "
        "mapping, or touchpoint's catalogue when no car is given) and the card policy; "
        "find rules that conflict. Prints every problem as FILE:LINE: PATH: message; "
        "exit status 1 when there is one, 2 when the car's files cannot be read.",
    )  # fmt: skip
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="rule documents")
    car = check.add_mutually_exclusive_group()
    car.add_argument("--config", type=Path, help="a head unit's touchpoint.toml ([can], [policy])")
    car.add_argument("--mapping", type=Path, help="the car's VSS mapping (with --dbc)")
    check.add_argument(
        "--dbc", action="append", default=[], metavar="[BUS=]FILE", help="a DBC file (repeatable)"
    )
    check.add_argument("--vss", type=Path, help="a VSS release's JSON export")
    check.add_argument(
        "--no-builtin", action="store_true",
        help="do not look for conflicts with touchpoint's built-in rules",
    )  # fmt: skip

    replay = actions.add_parser(
        "replay", help="run the real agent over drives with a rule set: what cards, when, why",
        description="Run the agent (its engines, rules and card policy; no D-Bus, no cloud, "
        "nobody tapping, every consent granted) over recorded or simulated drives and report "
        "which cards each rule would post and show, when, and what held each back.",
    )  # fmt: skip
    replay.add_argument("--rules", type=Path, required=True, help="the rule document to try")
    replay.add_argument("--baseline", type=Path, help="a rule document to compare it with")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--replay",
        type=Path,
        nargs="+",
        metavar="LOG",
        help="recorded logs (with --dbc and --mapping), one after the other",
    )
    source.add_argument(
        "--scenario",
        nargs="+",
        metavar="NAME",
        help=f"simulator scenarios, one after the other: {', '.join(_scenarios())}",
    )
    replay.add_argument("--dbc", action="append", default=[], metavar="[BUS=]FILE")
    replay.add_argument("--mapping", type=Path)
    replay.add_argument("--vss", type=Path)
    replay.add_argument(
        "--start", type=_moment, default=None, metavar="ISO8601",
        help="when the first update happens, e.g. 2027-01-04T08:00:00+08:00 (default: now); "
        "times are printed in its offset",
    )  # fmt: skip
    replay.add_argument(
        "--vehicle-id", metavar="ID",
        help="replay as this car: in a staged rollout only if the share picks it "
        "(default: in every rollout)",
    )  # fmt: skip
    replay.add_argument("--wallet", type=Path, help="a wallet document (coupons, tier)")
    replay.add_argument("--history", type=Path, help="a service history document")
    replay.add_argument("--json", action="store_true", help="print JSON instead of text")
    replay.add_argument("--html", type=Path, metavar="FILE", help="also write a timeline page")


def _scenarios() -> list[str]:
    from can_signals.simulator.scenarios import SCENARIOS  # noqa: PLC0415

    return sorted(SCENARIOS)


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from err
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run(args: argparse.Namespace) -> int:
    """Run the action; see the module's description for the exit status."""
    if args.action == "replay":
        return _replay(args)
    if args.mapping is not None and not args.dbc:
        print("error: --mapping needs --dbc", file=sys.stderr)
        return 2
    try:
        capabilities = _capabilities(args)
    except (TouchpointError, ValueError, OSError) as err:  # a car's files, a bad config
        print(f"error: {err}", file=sys.stderr)
        return 2
    builtin = None if args.no_builtin else builtin_rules()
    problems = 0
    for file in args.files:
        problems += check_file(file, capabilities, builtin, sys.stdout)
    return 1 if problems else 0


def check_file(
    file: Path, capabilities: Capabilities, builtin: RuleSetDocument | None, out: TextIO
) -> int:
    """Print the problems of one rule document; how many there were."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        print(f"{file}: cannot read: {err}", file=out)
        return 1
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        print(f"{file}:{err.lineno}: not valid JSON: {err.msg}", file=out)
        return 1
    lines = _line_index(text)
    try:
        document = RuleSetDocument.model_validate(data)
    except ValidationError as err:
        findings = _schema_findings(err)
    else:
        findings = check_rule_set(document, capabilities, builtin)
    for _line, text in sorted((_format(file, f, lines, data) for f in findings),
                              key=lambda pair: pair[0]):  # fmt: skip
        print(text, file=out)
    if not findings:
        count = len(document.rules)
        print(f"{file}: {count} rule{'s' * (count != 1)}, no problems "
              f"(signals: {capabilities.source})", file=out)  # fmt: skip
    return len(findings)


def _schema_findings(err: ValidationError) -> list[Finding]:
    """The schema's errors, less those of the union members the author did not mean.

    For a trigger ``{"event": "lunch"}`` pydantic also says that a signal trigger's
    ``signal`` and a time trigger's ``time_of_day`` are missing.
    """
    return [
        Finding(_location(e["loc"]), str(e["msg"]).removeprefix("Value error, "))
        for e in _meant(list(err.errors()))
    ]


def _meant(errors: list[Any], start: int = 0) -> list[Any]:
    """At each union (nested ones first), the errors of the member closest to the input."""
    kept: list[Any] = []
    unions: dict[Location, dict[str, list[Any]]] = {}
    depth: dict[Location, int] = {}
    for error in errors:
        loc = tuple(error["loc"])
        tag = next((i for i in range(start, len(loc)) if _is_tag(loc[i])), None)
        if tag is None:
            kept.append(error)
        else:
            unions.setdefault(loc[:tag], {}).setdefault(str(loc[tag]), []).append(error)
            depth[loc[:tag]] = tag
    for prefix, members in unions.items():
        candidates: list[list[Any]] = [_meant(m, depth[prefix] + 1) for m in members.values()]
        best = min(candidates, key=_wrong_shape)
        kept += best
    return kept


def _wrong_shape(errors: Sequence[Any]) -> tuple[int, int]:
    """How far a union member is from what was written: missing or extra keys first."""
    shape = sum(e["type"] in ("missing", "extra_forbidden", "model_type") for e in errors)
    return shape, len(errors)


def _is_tag(part: object) -> bool:
    # pydantic names the union member it tried ("SignalTrigger", "function-after[...]"):
    # not a key of the document.
    return isinstance(part, str) and (part[:1].isupper() or "[" in part)


def _location(loc: Sequence[Any]) -> Location:
    return tuple(p for p in loc if not _is_tag(p))


def _format(
    file: Path, finding: Finding, lines: Mapping[Location, int], data: Any
) -> tuple[int, str]:
    """The finding's line (0 if unknown) and its text."""
    location = finding.location
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in location).lstrip(".")
    rule = _rule_id(data, location)
    if rule:
        path = f"{path} ({rule})"
    line = next((lines[location[:end]] for end in range(len(location), 0, -1)
                 if location[:end] in lines), None)  # fmt: skip
    where = f"{file}:{line}" if line else str(file)
    text = f"{where}: {path}: {finding.message}" if path else f"{where}: {finding.message}"
    return line or 0, text


def _rule_id(data: Any, location: Location) -> str:
    if len(location) < 2 or location[0] != "rules" or not isinstance(location[1], int):
        return ""
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list) or location[1] >= len(rules):
        return ""
    rule = rules[location[1]]
    return str(rule.get("id", "")) if isinstance(rule, dict) else ""


def _line_index(text: str) -> dict[Location, int]:
    """The line of every key path (JSON is YAML: its composer keeps positions)."""
    from can_signals.yaml_reader import index_lines  # noqa: PLC0415 - problems only

    return {
        tuple(int(p) if p.isdigit() else p for p in path): line
        for path, line in index_lines(text).items()
    }


# -- the car --------------------------------------------------------------------------------


def _capabilities(args: argparse.Namespace) -> Capabilities:
    policy = PolicySettings()
    mapping, dbcs, vss = args.mapping, list(args.dbc), args.vss
    if args.config is not None:
        from touchpoint.settings import load_settings  # noqa: PLC0415 - only with --config

        settings = load_settings(args.config)
        policy = settings.policy
        if settings.can is not None:
            mapping = settings.can.mapping
            dbcs = [f"{d.bus}={d.file}" if d.bus else str(d.file) for d in settings.can.dbc]
            vss = settings.can.vss or vss
    caps = PolicyConfig().daily_caps
    common: dict[str, Any] = {
        "daily_caps": {kind.name.lower(): cap for kind, cap in caps.items()},
        "quiet_hours": policy.quiet_hours,
        "now": time.time(),
    }
    if mapping is not None:
        return Capabilities(_mapped(mapping, dbcs, vss), source=f"the mapping {mapping}", **common)
    if vss is not None:
        from can_signals.vss import load_vss  # noqa: PLC0415

        release = load_vss(vss)
        signals = {path: _known(leaf.datatype, leaf.minimum, leaf.maximum, leaf.allowed)
                   for path, leaf in release.leaves.items()}  # fmt: skip
        return Capabilities(signals, source=f"the VSS release {vss}", **common)
    return Capabilities({p: _from_spec(s) for p, s in CATALOGUE.items()}, **common)


def _mapped(mapping: Path, dbcs: Sequence[str], vss: Path | None) -> dict[str, KnownSignal]:
    from can_signals.binding import bind_files  # noqa: PLC0415 - cantools only when needed
    from can_signals.dbc import parse_dbc_argument  # noqa: PLC0415

    binding = bind_files(mapping, [parse_dbc_argument(d) for d in dbcs], vss)
    return {b.spec.path: _from_spec(b.spec) for b in binding.bindings}


def _from_spec(spec: SignalSpec) -> KnownSignal:
    return _known(spec.datatype.value, spec.minimum, spec.maximum, spec.allowed)


def _known(
    datatype: str, minimum: float | None, maximum: float | None, allowed: tuple[str, ...] | None
) -> KnownSignal:
    kind: SignalKind
    if datatype == DataType.BOOLEAN:
        kind = "boolean"
    elif datatype in (DataType.STRING, DataType.STRING_ARRAY) or datatype.endswith("[]"):
        kind = "list" if datatype.endswith("[]") else "string"
    else:
        kind = "number"
    return KnownSignal(kind, minimum, maximum, allowed)


# -- replay ----------------------------------------------------------------------------------


def _replay(args: argparse.Namespace) -> int:
    from agent.benefits import Wallet  # noqa: PLC0415
    from agent.plan import ServiceHistory  # noqa: PLC0415
    from can_signals.dbc import parse_dbc_argument  # noqa: PLC0415
    from touchpoint import replay_report  # noqa: PLC0415
    from touchpoint.rule_replay import (  # noqa: PLC0415
        replay,
        updates_from_logs,
        updates_from_scenarios,
    )

    if args.replay and (args.mapping is None or not args.dbc):
        print("error: --replay needs --dbc and --mapping", file=sys.stderr)
        return 2
    moment: datetime = args.start or datetime.now(UTC).astimezone()
    zone = moment.tzinfo or UTC
    try:
        documents = [_rule_set(args.rules)] + ([_rule_set(args.baseline)] if args.baseline else [])
        wallet = Wallet.model_validate_json(args.wallet.read_bytes()) if args.wallet else None
        history = (
            ServiceHistory.model_validate_json(args.history.read_bytes()) if args.history else None
        )
        if args.replay:
            dbcs = [parse_dbc_argument(d) for d in args.dbc]
            updates = updates_from_logs(args.replay, args.mapping, dbcs, args.vss)
        else:
            updates = updates_from_scenarios(args.scenario, moment.timestamp())
    except (TouchpointError, ValidationError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not updates:
        print("error: the drives gave no signal updates (is it the car's DBC and mapping?)",
              file=sys.stderr)  # fmt: skip
        return 2
    results = [replay(updates, start=moment.timestamp(), rules=d, wallet=wallet,
                      history=history, vehicle_id=args.vehicle_id) for d in documents]  # fmt: skip
    result, baseline = results[0], (results[1] if len(results) > 1 else None)
    if args.json:
        print(json.dumps(replay_report.as_json(result, baseline), indent=1))
    else:
        print(replay_report.text(result, zone, baseline))
    if args.html:
        title = f"touchpoint rules replay: {args.rules.name}"
        args.html.write_text(replay_report.page(result, zone, title, baseline), encoding="utf-8")
    return 0


def _rule_set(path: Path) -> RuleSetDocument:
    try:
        return RuleSetDocument.model_validate_json(path.read_bytes())
    except ValidationError as err:
        raise ValueError(
            f"{path} is not a valid rule document ({err.error_count()} problems: "
            f"`touchpoint rules check {path}` lists them)"
        ) from None
