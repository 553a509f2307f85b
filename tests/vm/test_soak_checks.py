"""The host's checks of ``make vcan-soak`` (no VM): they find what they are there to find."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.invariants.views import Recorded
from tests.vm.soak.guest import backoff_figures, cpu_s, request_figures
from tests.vm.soak.powerloss import PowerResult, check


def _event(event_id: str, seq: int, boot: int, kind: str = "trip.ended", **payload: Any) -> str:
    return json.dumps({"id": event_id, "type": kind, "boot_id": "b1", "seq": seq,
                       "request_id": None, "payload": payload, "vm_boot": boot})  # fmt: skip


def _share(
    tmp_path: Path,
    *,
    committed: list[str],
    cloud: list[str],
    recovered: dict[int, dict[str, Any]],
    dismissed: tuple[str, ...] = (),
) -> Path:
    (tmp_path / "committed.jsonl").write_text("\n".join(committed) + "\n")
    (tmp_path / "cloud.jsonl").write_text("\n".join(cloud) + '\n{"cut short')
    (tmp_path / "dismissed.jsonl").write_text("\n".join(dismissed) + "\n")
    for boot, held in recovered.items():
        record = {"integrity": "ok", "outbox": [], "dead": [], "cards": []} | held
        (tmp_path / f"boot-{boot:03d}.json").write_text(json.dumps(record))
    (tmp_path / "final.json").write_text(json.dumps({"drained_s": 3.0, "outbox": []}))
    return tmp_path


def test_a_clean_run_passes(tmp_path: Path) -> None:
    share = _share(
        tmp_path,
        committed=[_event("e1", 1, 0), _event("e2", 2, 0), _event("e3", 3, 1)],
        cloud=[_event("e1", 1, 0), _event("e2", 2, 1), _event("e2", 2, 1), _event("e3", 3, 2)],
        recovered={1: {"outbox": ["e2"]}, 2: {"outbox": ["e3"]}},
    )
    result = PowerResult()
    check(share, 2, result)
    assert result.ok, dict(result.problems)
    assert (result.committed, result.at_cloud, result.redelivered) == (3, 3, 1)


def test_an_event_gone_after_a_power_cut_is_lost(tmp_path: Path) -> None:
    share = _share(
        tmp_path,
        committed=[_event("e1", 1, 0), _event("e2", 2, 0)],
        cloud=[_event("e1", 1, 0), _event("e2", 2, 1)],
        recovered={1: {"outbox": []}},
    )
    result = PowerResult()
    check(share, 1, result)
    assert [p for p in result.problems["lost"] if "e2" in p]
    assert not result.problems["final drain"]


def test_integrity_duplicates_and_returned_cards_are_found(tmp_path: Path) -> None:
    share = _share(
        tmp_path,
        committed=[
            _event("e1", 1, 0),
            _event("x1", 1, 1),
            _event("c1", 2, 0, "card.dismissed", card_id="k"),
            _event("c2", 3, 1, "card.displayed", card_id="k"),
        ],
        cloud=[_event("e1", 1, 0), _event("x1", 1, 1), _event("c1", 2, 0), _event("c2", 3, 1)],
        recovered={1: {"integrity": "*** page 3: btree broken", "cards": ["k"]}},
        dismissed=(json.dumps({"card_id": "k", "vm_boot": 0}),),
    )
    result = PowerResult()
    check(share, 1, result)
    assert result.problems["integrity"]
    assert result.problems["duplicated"]  # e1 and x1: one (boot, seq), two ids
    assert len(result.problems["dismissed"]) == 2  # open after the cut, displayed again
    assert not result.ok


def test_the_reconnect_gaps_are_measured_between_failures() -> None:
    events = [(0.0, "failed"), (1.0, "failed"), (3.0, "failed"), (4.0, "connected"),
              (50.0, "closed"), (60.0, "failed"), (95.0, "failed")]  # fmt: skip
    figures = backoff_figures(events)
    assert figures["failed_attempts"] == 5
    assert figures["max_gap_s"] == 35.0
    assert not figures["bounded"]
    assert backoff_figures(events[:4])["bounded"]


def test_requests_are_answered_failed_or_open() -> None:
    def recorded(event_id: str, kind: str, **payload: Any) -> Recorded:
        return Recorded(event_id, kind, 0.0, True, "b", 0, payload, payload.get("rid"))

    events = [recorded("r1", "request.booking", rid="r1"),
              recorded("r2", "request.redemption", rid="r2"),
              recorded("r3", "request.booking", rid="r3"),
              recorded("a1", "booking.confirmed", request_id="r1"),
              recorded("a2", "redemption.unanswered", request_id="r2")]  # fmt: skip
    figures = request_figures(events)
    assert figures == {"requests": 3, "answered": 1, "unanswered (visible)": 1, "open": 1}


def test_cpu_seconds_of_this_process_grow() -> None:
    before = cpu_s(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert cpu_s(os.getpid()) > before
