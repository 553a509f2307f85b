"""Where frames come from: live buses (socketcan, virtual, remote, ...) and recorded logs.

Live buses are read by python-can's :class:`can.Notifier`. A bus with a file descriptor
(socketcan) is watched by the event loop itself (``loop.add_reader``: no thread, no
hop). A bus without one (``virtual``, ``remote``) gets the Notifier's reader thread, and
its frames are decoded right there: handing every frame to the loop would cost about
13 µs of CPU per frame, against 2 µs for the thread alone (measured here), so only the
resulting updates cross to the loop (see :mod:`can_signals.stream`).

On socketcan the kernel filters frames by the mapped IDs (11- and 29-bit alike), so
unmapped traffic never reaches Python; a bus whose mapped messages are CAN FD (declared
so, or longer than 8 bytes) is opened with ``fd=True``, without which the kernel hands
no CAN FD frame to the socket. Other interfaces filter in python-can, which is slower
than our own table look-up, so they get no filter.

Replays read candump ``.log`` files with :mod:`can_signals.candump`, which skips the
python-can message of every line (unmapped frames never become one), and ``.asc``,
``.trc`` and ``.blf`` files with python-can's readers. A malformed line is counted and
skipped: the text readers are restarted past it, fed again with the file's header lines
so they keep its settings.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TextIO

import can
from can.io.blf import BLFParseError
from can.io.player import MESSAGE_READERS
from can.typechecking import CanFilter

from can_signals.bcm import KernelFilter, bcm_available, bcm_keys
from can_signals.candump import CandumpPlayer
from can_signals.errors import SourceError
from can_signals.layout import frame_key
from can_signals.processor import BusInput, FrameProcessor
from touchpoint.ratelimit import RateLimitedLog

_log = logging.getLogger(__name__)

_TEXT_FORMATS: Final = frozenset({".log", ".asc", ".trc"})
_READ_ERRORS: Final = (ValueError, IndexError, KeyError, TypeError, OverflowError, AttributeError)
#: What python-can's BLF reader raises on corrupt data, besides the errors above.
_BINARY_ERRORS: Final = (EOFError, can.CanError, BLFParseError, zlib.error, struct.error)
DEFAULT_BUS_NAME: Final = "can0"


@dataclass(frozen=True, slots=True)
class BusConfig:
    """A live CAN bus to read.

    Attributes:
        name: The name updates carry and DBC files are assigned by (often the channel).
        interface: The python-can interface (``socketcan``, ``virtual``, ``remote``, ...).
        channel: The interface's channel (``vcan0``, a virtual channel name, a URL).
        options: Further keyword arguments for :class:`can.Bus` (``bitrate``, ...).
        bcm: On socketcan, let the kernel's broadcast manager filter frames by content
            where it can (:mod:`can_signals.bcm`); ``False`` reads every mapped frame.
    """

    name: str
    interface: str
    channel: str
    options: Mapping[str, Any] = field(default_factory=dict)
    bcm: bool = True


class LiveBuses:
    """Opens live buses and feeds their frames to a processor until stopped.

    A bus whose reads fail (an interface taken down, an adapter unplugged, the
    python-can-remote server gone) is closed and reported to ``on_lost`` once, on the
    event loop; :meth:`reopen` brings it back.
    """

    def __init__(
        self,
        configs: tuple[BusConfig, ...],
        processor: FrameProcessor,
        kernel_filters: Callable[[str], list[tuple[int, bool]]],
        fd: Callable[[str], bool] = lambda _bus: False,
        on_lost: Callable[[str, Exception], None] = lambda _bus, _err: None,
    ) -> None:
        self._configs = {config.name: config for config in configs}
        self._processor = processor
        self._kernel_filters = kernel_filters
        self._fd = fd
        self._on_lost = on_lost
        self.buses: dict[str, can.BusABC] = {}
        self.notifiers: dict[str, can.Notifier] = {}
        #: The broadcast manager's socket of each socketcan bus using it.
        self.kernel: dict[str, KernelFilter] = {}
        #: Opened by :meth:`open`, started by :meth:`attach` (on the loop).
        self._opened_kernel: dict[str, KernelFilter] = {}
        self._held_back_before = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open every bus and attach it to the processor.

        Raises:
            SourceError: If a bus cannot be opened (every bus opened so far is closed).
        """
        try:
            for name in self._configs:
                self.attach(name, self.open(name), loop)
        except SourceError:
            self.stop()
            raise

    def open(self, name: str) -> can.BusABC:
        """Open the bus ``name`` (again); it may block a while, from any thread.

        Raises:
            SourceError: If it cannot be opened.
        """
        opened = _with_fd(self._configs[name], self._fd(name))
        kernel = _kernel_filter(opened, self._processor.bus(name))
        mapped = self._kernel_filters(name)
        if kernel is not None:
            kernel_keys = set(kernel.keys)
            mapped = [(i, x) for i, x in mapped if frame_key(i, extended=x) not in kernel_keys]
        try:
            bus = _open_bus(opened, mapped, pass_none=kernel is not None and not mapped)
        except SourceError:
            if kernel is not None:
                kernel.close()
            raise
        if kernel is not None:
            self._opened_kernel[name] = kernel
        return bus

    def attach(self, name: str, bus: can.BusABC, loop: asyncio.AbstractEventLoop) -> None:
        """Feed the frames of ``bus``, opened by :meth:`open`, to the processor (on the loop)."""
        self.buses[name] = bus
        listener = self._processor.bus(name)
        kernel = self._opened_kernel.pop(name, None)
        if kernel is not None:
            kernel.start(loop)
            self.kernel[name] = kernel
        self.notifiers[name] = _notifier(bus, listener, loop, lambda err: self._lost(name, err))

    def held_back(self) -> int:
        """Frames the kernel's broadcast manager kept from user space (0: not at work)."""
        return self._held_back_before + sum(k.held_back() for k in self.kernel.values())

    def kernel_operations(self) -> int:
        """The broadcast manager's operations at work now (one per frame and interval)."""
        return sum(k.operations for k in self.kernel.values())

    def _close_kernel(self, name: str) -> None:
        kernel = self.kernel.pop(name, None)
        if kernel is not None:
            self._held_back_before += kernel.held_back()
            kernel.close()

    def _lost(self, name: str, err: Exception) -> None:
        self._close_kernel(name)
        notifier, bus = self.notifiers.pop(name, None), self.buses.pop(name, None)
        if notifier is not None:
            notifier.stop(timeout=0)
        if bus is not None:
            _shut_down(name, bus)
        self._on_lost(name, err)

    def stop(self) -> None:
        """Detach and close every bus."""
        for name in list(self.kernel):
            self._close_kernel(name)
        for kernel in self._opened_kernel.values():
            kernel.close()
        self._opened_kernel.clear()
        for notifier in self.notifiers.values():
            notifier.stop(timeout=2.0)
        for name, bus in self.buses.items():
            _shut_down(name, bus)
        self.notifiers.clear()
        self.buses.clear()


def _shut_down(name: str, bus: can.BusABC) -> None:
    try:
        bus.shutdown()
    except (can.CanError, OSError) as err:
        _log.warning("closing CAN bus %s: %s", name, err)
        # The interface failed half way (python-can-remote on a dead connection): mark
        # the bus closed, or python-can tries again, and fails again, when it is collected.
        can.BusABC.shutdown(bus)
    # python-can-remote ends its websocket but leaves the socket to the garbage
    # collector; closing a socket twice (socketcan's) is harmless.
    sock = getattr(bus, "socket", None)
    if isinstance(sock, socket.socket):
        sock.close()


def _with_fd(config: BusConfig, fd: bool) -> BusConfig:  # noqa: FBT001 - one flag, named
    """A socketcan bus carrying mapped CAN FD messages needs the socket's CAN FD frames."""
    if not fd or config.interface != "socketcan" or "fd" in config.options:
        return config
    return replace(config, options={**config.options, "fd": True})


def _kernel_filter(config: BusConfig, listener: BusInput) -> KernelFilter | None:
    """The broadcast manager's socket for the bus's eligible frames, if it can have one."""
    if config.interface != "socketcan" or not config.bcm or config.options.get("fd"):
        return None
    keys = bcm_keys(listener.table)
    if not keys or not bcm_available():
        return None
    try:
        return KernelFilter(config.channel, listener, keys)
    except OSError as err:
        _log.debug("CAN bus %s: no CAN_BCM on %s (%s)", config.name, config.channel, err)
        return None


def _open_bus(
    config: BusConfig, mapped_ids: list[tuple[int, bool]], *, pass_none: bool = False
) -> can.BusABC:
    options = dict(config.options)
    if config.interface == "socketcan" and mapped_ids:
        options["can_filters"] = kernel_filters(mapped_ids)
    backend = can.interfaces.BACKENDS.get(config.interface, ("", ""))[0]
    if backend == "can.interfaces.socketcan":
        # python-can leaves its socket open when the interface is missing; a daemon
        # retrying every few seconds would leave one per attempt to the garbage collector.
        try:
            socket.if_nametoindex(config.channel)
        except OSError as err:
            raise SourceError(
                f"cannot open CAN bus {config.name!r} (socketcan {config.channel}): "
                f"no such interface ({err.strerror or err})"
            ) from err
    try:
        bus = can.Bus(interface=config.interface, channel=config.channel, **options)
    except (can.CanError, OSError, ValueError, ImportError, NotImplementedError) as err:
        raise SourceError(
            f"cannot open CAN bus {config.name!r} ({config.interface} {config.channel}): {err}"
        ) from err
    if pass_none:
        _pass_nothing(bus)
    return bus


def _pass_nothing(bus: can.BusABC) -> None:
    """Every mapped frame goes to the broadcast manager: the raw socket takes none.

    python-can takes an empty filter list for "everything"; the kernel takes no filter
    at all for "nothing". Frames queued before are dropped (the other socket has them).
    """
    raw = getattr(bus, "socket", None)
    if isinstance(raw, socket.socket):
        raw.setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_FILTER, b"")
        while bus.recv(0) is not None:
            pass


def kernel_filters(mapped_ids: list[tuple[int, bool]]) -> list[CanFilter]:
    """python-can filters passing exactly the mapped IDs: 11-bit and 29-bit kept apart."""
    return [
        {"can_id": can_id, "can_mask": 0x1FFFFFFF if extended else 0x7FF, "extended": extended}
        for can_id, extended in mapped_ids
    ]


def _notifier(
    bus: can.BusABC,
    listener: BusInput,
    loop: asyncio.AbstractEventLoop,
    on_lost: Callable[[Exception], None],
) -> can.Notifier:
    try:
        has_descriptor = bus.fileno() >= 0
    except NotImplementedError:
        has_descriptor = False
    # With a descriptor the Notifier reads on the loop; without one, in its own thread.
    if has_descriptor:
        return LoopNotifier(bus, [listener], timeout=0.5, loop=loop, on_lost=on_lost)
    return BatchingNotifier(bus, [listener], timeout=0.5)


#: Receive errors of an interface that went down: its socket stays bound and delivers
#: again once the interface is up (the kernel reports the error once).
_DOWN: Final = frozenset({errno.ENETDOWN})


def _errno(err: BaseException) -> int | None:
    code = getattr(err, "error_code", None) or getattr(err, "errno", None)
    if code is None and err.__cause__ is not None:
        return _errno(err.__cause__)
    return code if isinstance(code, int) else None


class LoopNotifier(can.Notifier):
    """A Notifier reading a bus on the event loop that survives the bus failing.

    python-can's own lets the exception of a failed read out to the loop and keeps the
    descriptor watched: a closed socket is readable for ever, so the loop would spin,
    logging a traceback per turn. Here an interface that went down (``ENETDOWN``) is
    told to the listeners and read on (its socket delivers again once it is up); any
    other failure (a vanished interface, a dead python-can-remote connection) stops
    watching the bus and tells ``on_lost`` (once), which decides what next. It overrides
    python-can's private ``_on_message_available`` (python-can is pinned below 5).
    """

    def __init__(
        self,
        bus: can.BusABC,
        listeners: list[BusInput],
        *,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
        on_lost: Callable[[Exception], None],
    ) -> None:
        super().__init__(bus, listeners, timeout=timeout, loop=loop)
        self._on_lost = on_lost

    def _on_message_available(self, bus: can.BusABC) -> None:
        try:
            super()._on_message_available(bus)
        except Exception as err:  # noqa: BLE001 - whatever the interface raises, the bus is gone
            if self._stopped:
                return
            if _errno(err) in _DOWN:
                _log.warning("CAN bus %s: the interface is down (%s)", bus.channel_info, err)
                return
            self.exception = err
            self.stop(timeout=0)
            self._on_lost(err)


class BatchingNotifier(can.Notifier):
    """A Notifier that reads a bus without a file descriptor in batches.

    python-can's reader thread blocks in ``recv`` once per frame, so on a busy bus every
    frame wakes the thread, which costs more than decoding it. This reader waits for a
    frame, then takes everything already queued in one go, and sleeps a few milliseconds
    so that the next batch can gather. It stays a :class:`can.Notifier` (ISO-TP stacks
    attach listeners to it); only the reader thread's loop differs, which is why it
    overrides python-can's private ``_rx_thread`` (python-can is pinned below 5).
    """

    #: Seconds to let frames gather between batches (the latency it adds, at most).
    gather = 0.005

    def _rx_thread(self, bus: can.BusABC) -> None:
        while not self._stopped:
            try:
                msg = bus.recv(self.timeout)
                if msg is None:
                    continue
                with self._lock:
                    while msg is not None:
                        self._on_message_received(msg)
                        msg = bus.recv(0)
            except Exception as exc:
                self.exception = exc
                if not self._on_error(exc):
                    raise
                continue
            time.sleep(self.gather)


def check_log(path: Path) -> None:
    """Open a recorded log as a replay would, and close it again.

    Raises:
        SourceError: If the file is missing or of a format python-can cannot read.
    """
    if not path.is_file():
        raise SourceError(f"no such log file: {path}")
    try:
        if path.suffix.lower() == ".blf":
            # Our own handle: closed even when the reader refuses the file's header.
            with path.open("rb") as handle:
                can.BLFReader(handle).stop()
        else:
            can.LogReader(path).stop()
    except (OSError, *_READ_ERRORS, *_BINARY_ERRORS) as err:
        raise SourceError(f"cannot read log {path}: {err}") from err


class Replay:
    """Plays a recorded log into a processor from a worker thread.

    Args:
        path: The log file.
        processor: Where the frames go; each log channel is a bus of that name.
        speed: 1 for real time, 2 for twice as fast, 0 for as fast as possible.
        on_done: Called from the worker thread when the log is finished or stopped.
        after_frame: Called from the worker thread after each frame that may have
            produced updates, outside the processor's lock (where a replay may wait for
            its consumer).
        python_can_only: Read a candump log with python-can's reader too (the slow way,
            to check the fast one against).
    """

    def __init__(
        self,
        path: str | Path,
        processor: FrameProcessor,
        speed: float = 1.0,
        on_done: Callable[[], None] = lambda: None,
        after_frame: Callable[[], None] = lambda: None,
        *,
        python_can_only: bool = False,
    ) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0")
        self.path = Path(path)
        self._processor = processor
        self._speed = speed
        self._on_done = on_done
        self._after_frame = after_frame
        self._python_can_only = python_can_only
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = RateLimitedLog(_log, interval=10.0)
        self.frames = 0
        self.bad_lines = 0
        self.error: str | None = None

    def check(self) -> None:
        """Fail early on a log that cannot be opened (:func:`check_log`)."""
        check_log(self.path)

    def play(self) -> None:
        """Play in the calling thread until the log ends (or :meth:`stop` is called)."""
        self._run()

    def start(self) -> None:
        """Start playing in a worker thread."""
        self._thread = threading.Thread(target=self._run, name=f"replay {self.path.name}")
        self._thread.start()

    def stop(self) -> None:
        """Stop playing and wait for the worker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        inputs: dict[object, BusInput] = {}

        def input_for(channel: str | int | None) -> BusInput:
            listener = inputs.get(channel)
            if listener is None:
                name = DEFAULT_BUS_NAME if channel is None else str(channel)
                listener = inputs[channel] = self._processor.bus(name)
            return listener

        pace = self._pacer() if self._speed else None
        try:
            if self.path.suffix.lower() == ".log" and not self._python_can_only:
                self._play_candump(input_for, pace)
                return
            for msg in self._frames():
                if self._stop.is_set() or (pace is not None and pace(msg.timestamp)):
                    break
                channel = msg.channel
                input_for(channel if isinstance(channel, str | int) else None)(msg)
                self.frames += 1
                self._after_frame()
        except OSError as err:
            self.error = f"reading {self.path} failed: {err}"
            _log.error("%s", self.error)
        finally:
            self._on_done()

    def _pacer(self) -> Callable[[float], bool]:
        """Waits until a frame's time has come at the replay's speed; ``True``: stopped."""
        start_wall = 0.0
        first_stamp: float | None = None

        def pace(timestamp: float) -> bool:
            nonlocal first_stamp, start_wall
            if first_stamp is None:
                first_stamp, start_wall = timestamp, time.monotonic()
            delay = start_wall + (timestamp - first_stamp) / self._speed - time.monotonic()
            return delay > 0 and self._stop.wait(delay)

        return pace

    def _play_candump(
        self,
        input_for: Callable[[str | int | None], BusInput],
        pace: Callable[[float], bool] | None,
    ) -> None:
        def bad_line(number: int, err: Exception) -> None:
            self.bad_lines += 1
            self._log.warning(
                "bad-line", "%s line %d: skipped a malformed line (%s)", self.path, number, err
            )

        player = CandumpPlayer(input_for, self._after_frame, pace, self._stop.is_set, bad_line)
        with self.path.open(encoding="utf-8", errors="replace", newline=None) as handle:
            try:
                player.play(handle)
            finally:
                self.frames += player.frames

    def _frames(self) -> Iterator[can.Message]:
        if self.path.suffix.lower() not in _TEXT_FORMATS:
            yield from self._binary_frames()
            return
        reader_type = MESSAGE_READERS[self.path.suffix.lower()]
        with self.path.open(encoding="utf-8", errors="replace", newline=None) as handle:
            lines = _ResumableLines(handle)
            while True:
                reader = reader_type(lines)  # type: ignore[arg-type]
                try:
                    for msg in reader:
                        lines.mark_started()
                        yield msg
                except _READ_ERRORS as err:
                    self.bad_lines += 1
                    self._log.warning(
                        "bad-line", "%s line %d: skipped a malformed line (%s)",
                        self.path, lines.number, err,
                    )  # fmt: skip
                    lines.resume()
                else:
                    return

    def _binary_frames(self) -> Iterator[can.Message]:
        reader = can.LogReader(self.path)
        try:
            yield from reader
        except (*_READ_ERRORS, *_BINARY_ERRORS) as err:
            # A binary log cannot be resynchronised after corrupt data: keep what we have.
            self.bad_lines += 1
            self.error = f"{self.path}: corrupt data after {self.frames} frames ({err})"
            _log.error("%s", self.error)
        finally:
            reader.stop()


class _ResumableLines:
    """A text file's lines, which a new reader can pick up after a malformed line.

    The lines before the first frame (the file's header: number base, time format,
    version) are kept, so a reader created after a bad line reads them again first.
    """

    def __init__(self, handle: TextIO) -> None:
        self._handle = handle
        self._header: list[str] = []
        self._pending: list[str] = []
        self.started = False
        self.number = 0

    def __iter__(self) -> _ResumableLines:
        return self

    def __next__(self) -> str:
        if self._pending:
            return self._pending.pop()
        line = next(self._handle)
        self.number += 1
        if not self.started:
            self._header.append(line)
        return line

    def mark_started(self) -> None:
        if not self.started:
            self.started = True
            # The last line read produced the first frame: it is data, not header.
            self._header.pop()

    def resume(self) -> None:
        """Serve the header again before the remaining lines, for a new reader."""
        if not self.started and self._header:
            # Before the first frame the malformed line was taken for header: drop it, or
            # every new reader would choke on it again (an endless loop).
            self._header.pop()
        self._pending = list(reversed(self._header))

    def close(self) -> None:
        """Readers close their file when done; the replay owns the handle."""
