"""CPU per CAN frame of the raw SocketCAN path against the kernel's broadcast manager.

It needs kernel CAN: on the host ``make bench`` boots the test VM (tests/vm) and runs
``python -m bench.kernel_bcm --guest`` inside it, which prints its figures as JSON;
without the VM the section says why it has no figures.

Inside the guest: a bus of the RAV4 mapping's IDs on vcan0, each ID cycling through the
payloads the recording has for it, every payload sent :data:`REPEAT` times in a row (so
values change slowly: one frame in :data:`REPEAT` of an ID carries news). A separate
sender process paces the frames; the rate doubles from :data:`START_FPS` while the raw
path still counts every frame (no drops), and the highest such rate is the one
reported. At that rate the same frames go through the raw path and the BCM path; the
CPU per frame is the process CPU time of the pipeline's process (decoding, the update
stream and its consumer, and the idle wake-ups of both) divided by the frames sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Final

from bench.report import Row, Section, realdata_dir

PROJECT: Final = Path(__file__).resolve().parents[1]
MAPPING: Final = PROJECT / "docs" / "cars" / "rav4_2016" / "mapping.yaml"
REPEAT: Final = 20
START_FPS: Final = 1000
MAX_FPS: Final = 64000
SEND_S: Final = 3.0
TARGET_RATIO: Final = 10.0
_FRAME: Final = struct.Struct("@IB3x8s")

# The sender: a bare Python process (no python-can, which takes seconds to import under
# emulation) sending pre-packed frames in 10 ms batches.
_SENDER: Final = """
import socket, sys, time
data = open(sys.argv[1], "rb").read()
rate = float(sys.argv[2])
frames = [data[i:i + 16] for i in range(0, len(data), 16)]
sock = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
sock.bind(("vcan0",))
start = time.monotonic()
for n, frame in enumerate(frames):
    due = start + n / rate
    delay = due - time.monotonic()
    if delay > 0.002:
        time.sleep(delay)
    while True:
        try:
            sock.send(frame)
            break
        except BlockingIOError:
            time.sleep(0.0005)
print(f"{time.monotonic() - start:.3f}")
"""


def _bus_frames(count: int) -> bytes:
    """``count`` packed frames of the mapped IDs, each payload repeated :data:`REPEAT` times."""
    from can_signals.pipeline import SignalPipeline  # noqa: PLC0415 - only in the guest

    dbc = realdata_dir() / "rav4_2016" / "toyota_new_mc_pt.dbc"
    pipeline = SignalPipeline.from_files(MAPPING, [(None, dbc)], replay=os.devnull)
    mapped = {i for i, _ in pipeline.binding.frame_ids_for_bus("can0")}
    payloads: dict[int, list[bytes]] = defaultdict(list)
    log = realdata_dir() / "rav4_2016" / "drive_seg40_excerpt.log"
    for line in log.read_text(encoding="ascii").splitlines():
        name, _, data = line.split()[2].partition("#")
        if int(name, 16) in mapped:
            payloads[int(name, 16)].append(bytes.fromhex(data))
    ids = sorted(payloads)
    out = bytearray()
    for n in range(count):
        ident = ids[n % len(ids)]
        turn = n // len(ids)
        cycle = payloads[ident]
        payload = cycle[(turn // REPEAT) % len(cycle)]
        out += _FRAME.pack(ident, len(payload), payload.ljust(8, b"\0"))
    return bytes(out)


async def _measure(frames_file: Path, count: int, rate: float, *, bcm: bool) -> dict[str, float]:
    from can_signals.pipeline import SignalPipeline  # noqa: PLC0415 - only in the guest
    from can_signals.sources import BusConfig  # noqa: PLC0415

    dbc = realdata_dir() / "rav4_2016" / "toyota_new_mc_pt.dbc"
    bus = BusConfig("can0", "socketcan", "vcan0", bcm=bcm)
    pipeline = SignalPipeline.from_files(MAPPING, [(None, dbc)], buses=[bus])
    updates = 0

    async def consume() -> None:
        nonlocal updates
        async for batch in pipeline.batches():
            updates += len(batch)

    async with pipeline:
        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.5)
        cpu = time.process_time()
        sender = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SENDER, str(frames_file), str(rate),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await sender.communicate()
        seen = 0
        for _ in range(100):  # the backlog, and a held change at the end of a throttle
            stats = pipeline.stats()
            seen = stats.processor.frames + stats.kernel_held_back
            if seen >= count:
                break
            await asyncio.sleep(0.05)
        cpu = time.process_time() - cpu
        stats = pipeline.stats()
    await consumer
    return {
        "rate": rate, "sent_s": float(out.decode().strip() or "nan"), "frames": count,
        "seen": seen, "passed": stats.processor.frames, "held_back": stats.kernel_held_back,
        "cpu_s": cpu, "updates": updates,
    }  # fmt: skip


def guest_main() -> dict[str, object]:
    """Inside the VM: find the rate, then measure both paths at it."""
    best: dict[str, float] | None = None
    rate = float(START_FPS)
    with tempfile.TemporaryDirectory() as tmp:
        while rate <= MAX_FPS:
            count = int(rate * SEND_S)
            frames_file = Path(tmp) / "frames.bin"
            frames_file.write_bytes(_bus_frames(count))
            raw = asyncio.run(_measure(frames_file, count, rate, bcm=False))
            print(f"# raw path at {rate:.0f} frames/s: {raw}", file=sys.stderr, flush=True)
            # Kept up: every frame counted, sent on time (not slowed by a busy guest).
            if raw["seen"] < count or raw["sent_s"] > SEND_S * 1.1:
                break
            best = raw
            rate *= 2
        if best is None:
            return {"error": f"the raw path dropped frames at {START_FPS} frames/s already"}
        count = int(best["frames"])
        frames_file = Path(tmp) / "frames.bin"
        frames_file.write_bytes(_bus_frames(count))
        bcm = asyncio.run(_measure(frames_file, count, best["rate"], bcm=True))
        print(f"# BCM path at {best['rate']:.0f} frames/s: {bcm}", file=sys.stderr, flush=True)
    return {"raw": best, "bcm": bcm}


def _sections(figures: dict[str, object], boot_note: str) -> list[Section]:
    title = "SocketCAN in the test VM: raw path vs CAN_BCM (RAV4 mapped IDs, slow values)"
    if "error" in figures:
        return [Section(title, (), (f"no figures: {figures['error']}",))]
    raw, bcm = figures["raw"], figures["bcm"]
    assert isinstance(raw, dict)
    assert isinstance(bcm, dict)
    us = 1e6
    raw_cost = raw["cpu_s"] / raw["frames"] * us
    bcm_cost = bcm["cpu_s"] / bcm["frames"] * us
    rows = (
        Row("highest rate the raw path keeps up with", raw["rate"], "frames/s", digits=0),
        Row("raw path: CPU per frame on the bus", raw_cost, "µs", digits=1),
        Row("BCM path: CPU per frame on the bus", bcm_cost, "µs", digits=1),
        Row("CPU per frame, raw / BCM", raw_cost / bcm_cost, "x", TARGET_RATIO, at_least=True),
        Row("BCM: frames passed to user space", bcm["passed"] / bcm["frames"] * 100, "%", digits=1),
        Row("BCM: frames the kernel held back", bcm["held_back"], "", digits=0),
        Row("BCM: frames unaccounted for", bcm["frames"] - bcm["seen"], "", digits=0),
    )
    notes = (
        (
            f"{raw['frames']:.0f} frames in {SEND_S:.0f} s per path; each payload of an ID "
            f"repeated {REPEAT} times; CPU: the pipeline process's (decoding, stream, "
            "consumer, idle wake-ups), by the frames sent."
        ),
        (
            f"updates: raw {raw['updates']:.0f}, BCM {bcm['updates']:.0f} (interval routes: "
            "the kernel's throttle sends the latest change, KUKSA's rule the first after the "
            "interval)."
        ),
        boot_note,
    )
    return [Section(title, rows, notes)]


def run() -> list[Section]:
    """On the host: the figures from inside the test VM, or why there are none."""
    title = "SocketCAN in the test VM: raw path vs CAN_BCM"
    if os.environ.get("TOUCHPOINT_IN_VM") == "1":
        return _sections(guest_main(), "measured in this guest")
    try:
        from tests.vm.image import find_image  # noqa: PLC0415 - the test harness
        from tests.vm.machine import Machine, accelerator  # noqa: PLC0415
    except ImportError as err:
        return [Section(title, (), (f"not measured: the VM harness is missing ({err})",))]
    accel, image = accelerator(), find_image()
    if accel is None or image is None:
        why = "no QEMU" if accel is None else "no VM image (run: make vcan-prepare)"
        return [Section(title, (), (f"not measured: {why}",))]
    with tempfile.TemporaryFile() as out:
        result = Machine(image, accel).run(
            [str(PROJECT / ".venv" / "bin" / "python"), "-m", "bench.kernel_bcm", "--guest"],
            cwd=PROJECT, stdout=out, timeout=900,
        )  # fmt: skip
        out.seek(0)
        text = out.read().decode(errors="replace")
    if result.returncode != 0:
        return [Section(title, (), (f"not measured: the guest run failed ({result.returncode})",))]
    figures = json.loads(text.strip().splitlines()[-1])
    note = f"measured in the test VM ({accel}), {result.total_s:.0f} s with its boot"
    return _sections(figures, note)


if __name__ == "__main__":
    if "--guest" in sys.argv:
        print(json.dumps(guest_main()))
    else:
        from bench.report import format_table

        for section in run():
            print(format_table(section))
    sys.exit(0)
