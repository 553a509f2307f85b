"""Power loss for real: SIGKILL QEMU while the daemon writes its store on a virtual disk.

The store lives on a raw image file, ext4, that the guest sees as /dev/vda. Each boot
runs :func:`tests.vm.soak.guest.power_boot`; once the daemon is up, the host waits a
random 0-12 s (the car drives, the driver taps, the daemon commits, sends and is
acknowledged) and SIGKILLs QEMU. The next boot, on the same disk, first records what
the store holds (integrity, outbox, dead letters, open cards) before anything starts.

What the guest saw happen was written to a host directory as it happened (the
observer outside the VM): every event it saw committed, every card the driver
dismissed, every event the cloud received. :func:`check` holds the boots' records
against it:

- ``integrity``: ``PRAGMA integrity_check`` says ok after every power loss;
- ``lost``: every event seen committed before a power loss is, after it, in the
  store, at the cloud, a dead letter or a request the car gave up on;
- ``duplicated``: no two ids for one (boot id, sequence number) of the car's; an event
  the cloud received again after a power loss (its acknowledgement was lost with the
  power) is counted, not a fault: the cloud's de-duplication by id absorbs it;
- ``dismissed``: no card the driver dismissed is open in the store after a power
  loss, and none came back on screen (the checker inside each boot);
- at the end, a boot without a power cut drains the outbox: then every event ever
  seen committed is at the cloud.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tests.invariants.checker import GAVE_UP
from tests.vm.machine import Machine

PROJECT: Final = Path(__file__).resolve().parents[3]
DISK_MB: Final = 256
#: How long after the daemon is up the power may go (uniformly at random).
MAX_LIFE_S: Final = 12.0
#: A boot whose daemon is not up by then is cut anyway (and counted as such).
BOOT_LIMIT_S: Final = 240.0


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    """JSON lines; a line the power cut short is skipped."""
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


def make_disk(path: Path) -> None:
    """A raw image file with an empty ext4 on it."""
    mkfs = shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4"
    with path.open("wb") as image:
        image.truncate(DISK_MB * 1024 * 1024)
    subprocess.run([mkfs, "-F", "-q", str(path)], check=True)


@dataclass(slots=True)
class PowerResult:
    """The loop's figures and findings."""

    cuts: int = 0
    cuts_before_up: int = 0
    boots: int = 0
    boot_s: list[float] = field(default_factory=list)
    committed: int = 0
    at_cloud: int = 0
    redelivered: int = 0
    dismissed: int = 0
    drained_s: float | None = None
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    checked: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not any(self.problems.values())


def run_loop(machine: Machine, work: Path, kills: int, seed: int, log: Any) -> PowerResult:
    """``kills`` power cuts, then a boot that drains; the findings."""
    rng = random.Random(seed)
    share = work / "share"
    share.mkdir(parents=True, exist_ok=True)
    disk = work / "store.img"
    make_disk(disk)
    machine.disks = [disk]
    machine.writable = [share]
    result = PowerResult()
    python = str(PROJECT / ".venv" / "bin" / "python")
    for boot in range(kills + 1):
        final = boot == kills
        up_file = share / f"up-{boot:03d}"
        life = rng.uniform(0.0, MAX_LIFE_S)
        launched = time.monotonic()

        seen_up: list[float] = []  # when the host saw the daemon up (the guest's clock differs)

        def cut(
            up_file: Path = up_file, life: float = life, launched: float = launched,
            seen_up: list[float] = seen_up,
        ) -> bool:  # fmt: skip
            now = time.monotonic()
            if now - launched > BOOT_LIMIT_S:
                return True
            if not seen_up and up_file.exists():
                seen_up.append(now)
            return bool(seen_up) and now > seen_up[0] + life

        argv = [python, "-m", "tests.vm.soak.guest", "power", str(share), str(boot),
                "--seed", str(seed)] + (["--final"] if final else [])  # fmt: skip
        with (work / f"guest-{boot:03d}.log").open("wb") as guest_log:
            ran = machine.run(argv, cwd=PROJECT, stdout=guest_log, stderr=guest_log,
                              timeout=900, power_cut=None if final else cut)  # fmt: skip
        result.boots += 1
        if ran.boot_s is not None:
            result.boot_s.append(ran.boot_s)
        if ran.power_cut:
            result.cuts += 1
            if not up_file.exists():
                result.cuts_before_up += 1
            print(f"  power cut {result.cuts:>3}: {time.monotonic() - launched:5.1f} s after "
                  f"launch, {life:4.1f} s after the daemon was up",
                  file=log, flush=True)  # fmt: skip
        elif not final or ran.returncode != 0:
            result.problems["boots"].append(
                f"boot {boot} ended by itself (status {ran.returncode}): see "
                f"{work / f'guest-{boot:03d}.log'}"
            )
    check(share, kills, result)
    return result


def check(share: Path, kills: int, result: PowerResult) -> None:
    """Hold each boot's recovered store against what was seen before its power cut."""
    committed = list(_lines(share / "committed.jsonl"))
    cloud = list(_lines(share / "cloud.jsonl"))
    dismissed = list(_lines(share / "dismissed.jsonl"))
    result.committed = len({e["id"] for e in committed})
    result.at_cloud = len({e["id"] for e in cloud})
    result.redelivered = sum(n - 1 for n in Counter(e["id"] for e in cloud).values())
    result.dismissed = len({d["card_id"] for d in dismissed})
    problems = result.problems
    gave_up = {str(e["payload"].get("request_id")) for e in committed if e["type"] in GAVE_UP}

    def excused(event: dict[str, Any]) -> bool:
        return str(event["payload"].get("request_id") or event["request_id"]) in gave_up

    for boot in range(1, kills + 1):
        path = share / f"boot-{boot:03d}.json"
        if not path.exists():
            problems["boots"].append(f"boot {boot} left no record of the recovered store")
            continue
        recovered = json.loads(path.read_text(encoding="utf-8"))
        result.checked["integrity"] += 1
        if recovered["integrity"] != "ok":
            problems["integrity"].append(f"boot {boot}: {recovered['integrity']}")
        held = set(recovered["outbox"]) | set(recovered["dead"])
        held |= {e["id"] for e in cloud if e["vm_boot"] < boot}
        result.checked["lost"] += 1
        for event in committed:
            if event["vm_boot"] < boot and event["id"] not in held and not excused(event):
                problems["lost"].append(
                    f"after power cut {boot}: {event['type']} {event['id']} (committed in "
                    f"boot {event['vm_boot']}) is gone"
                )
        result.checked["dismissed"] += 1
        gone = {d["card_id"] for d in dismissed if d["vm_boot"] < boot}
        for card in set(recovered["cards"]) & gone:
            problems["dismissed"].append(f"after power cut {boot}: dismissed card {card} is open")
    result.checked["duplicated"] += 1
    ids_by_order: dict[tuple[str, int], set[str]] = defaultdict(set)
    for event in committed + cloud:
        ids_by_order[(event["boot_id"], event["seq"])].add(event["id"])
    for order, ids in ids_by_order.items():
        if len(ids) > 1:
            problems["duplicated"].append(f"{order}: {len(ids)} ids {sorted(ids)}")
    closed_at: dict[str, int] = {}
    for index, event in enumerate(committed):
        card_id = str(event["payload"].get("card_id", ""))
        if event["type"] == "card.dismissed":
            closed_at.setdefault(card_id, index)
        elif card_id in closed_at and event["type"] in ("card.created", "card.displayed"):
            problems["dismissed"].append(f"card {card_id}: {event['type']} after its dismissal")
    for line in _lines(share / "violations.jsonl"):
        problems["checker (in the guest)"].append(f"boot {line['vm_boot']}: {line['violation']}")
    final_path = share / "final.json"
    if not final_path.exists():
        problems["final drain"].append("the final boot left no result")
        return
    final = json.loads(final_path.read_text(encoding="utf-8"))
    result.drained_s = final["drained_s"]
    result.checked["final drain"] += 1
    if final["outbox"]:
        problems["final drain"].append(f"{len(final['outbox'])} events never left the outbox")
    at_cloud = {e["id"] for e in cloud}
    for event in committed:
        if event["id"] not in at_cloud and not excused(event):
            problems["final drain"].append(f"{event['type']} {event['id']} never reached the cloud")


def summary(result: PowerResult, kills: int) -> list[str]:
    """The lines ``make vcan-soak`` prints."""
    boots = sorted(result.boot_s)
    lines = [
        f"power loss: {result.cuts} power cuts (QEMU SIGKILLed) of {kills} planned, "
        f"{result.cuts_before_up} before the daemon was up; {result.boots} boots"
        + (f" (kernel to command {boots[len(boots) // 2]:.1f} s median)" if boots else ""),
        (
            f"  observed outside the VM: {result.committed} events committed, "
            f"{result.dismissed} cards dismissed; the cloud received {result.at_cloud} events "
            f"({result.redelivered} again after a power cut, absorbed by its de-duplication)"
        ),
        "  final drain: outbox empty after "
        + ("never" if result.drained_s is None else f"{result.drained_s:.0f} s"),
        "  checks: " + ", ".join(f"{name} {n}" for name, n in sorted(result.checked.items())),
    ]
    for name, found in result.problems.items():
        if found:
            lines.append(f"  FAILED {name}: {len(found)}")
            lines += [f"    {detail}" for detail in found[:10]]
    lines.append(f"  result: {'every check held' if result.ok else 'FAILED'}")
    return lines


if __name__ == "__main__":
    sys.exit("run it through python -m tests.vm.soak")
