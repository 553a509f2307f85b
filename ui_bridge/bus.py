"""The bridge's bus connection: dbus-fast's ``MessageBus`` with three changes.

1. **A full socket waits instead of dropping the connection** (a workaround for a
   defect of dbus-fast 5.2, ``dbus_fast/aio/message_bus.py``, ``_MessageWriter``).
   ``schedule_write`` writes a message at once when its queue is empty, without asking
   whether the socket can take it; when the dbus-daemon is busy and the socket's buffer
   is full, ``sock.send`` raises ``BlockingIOError`` (EAGAIN), and ``write_callback``
   treats every exception as the end of the connection (``bus._finalize``): the name is
   released and every call in flight fails. A peer that floods the agent with calls
   whose answers are large (``Introspect``, ``GetManagedObjects``) or with ``Set
   Locale`` (a signal per card each) provoked it within seconds. The writer already
   handles a partial write (it keeps the rest and waits until the socket is writable),
   so the workaround gives it a socket whose ``send`` reports a full buffer as 0 bytes
   written: the message stays queued and goes out when the socket drains. Only the
   writer sees that socket; the reader and ``close`` use the real one. No file
   descriptors are passed (``negotiate_unix_fd`` is off), so ``sendmsg`` is not involved.
   The fix belongs upstream (catch ``BlockingIOError``/``InterruptedError`` around the
   ``send``/``sendmsg`` in ``write_callback`` and wait for the writer callback); when
   dbus-fast has it, :func:`_let_the_writer_wait` can go.
2. **Calls that wait for the agent are bounded per peer** (:mod:`ui_bridge.limits`):
   beyond the limit a call is answered with ``LimitsExceeded`` at once and never
   started. The caller's unique name is available to the call's code as :func:`caller`.
3. ``InterfacesAdded``/``InterfacesRemoved`` are left to the bridge: dbus-fast emits them
   on export from the object's own path and with every property, the specification
   wants them from the object manager and the bridge sends public properties only.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import socket
from collections.abc import Callable
from typing import Any, Final

from dbus_fast import Message, MessageFlag
from dbus_fast.aio import MessageBus
from dbus_fast.constants import ErrorType
from dbus_fast.send_reply import SendReply
from dbus_fast.service import ServiceInterface

from ui_bridge.limits import PeerLimits

_log = logging.getLogger(__name__)

#: The unique bus name of the peer whose call is running ("" outside a call).
_CALLER: Final[contextvars.ContextVar[str]] = contextvars.ContextVar("dbus_caller", default="")
LIMITS_EXCEEDED: Final = ErrorType.LIMITS_EXCEEDED.value


def caller() -> str:
    """The unique bus name of the peer whose method call is being carried out."""
    return _CALLER.get()


class _PatientSocket:
    """The writer's view of the socket: a full buffer is 0 bytes written, not an error."""

    def __init__(self, sock: socket.socket, backlog: Callable[[], int]) -> None:
        self._sock = sock
        self._backlog = backlog
        #: How often the socket was full when the writer tried it (for the figures).
        self.full = 0
        #: The most messages seen waiting to be written.
        self.peak_backlog = 0

    def send(self, data: bytes | memoryview) -> int:
        # Sampled at every write: after a wait, the first write sees the whole backlog.
        self.peak_backlog = max(self.peak_backlog, self._backlog())
        try:
            return self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.full += 1
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class AgentBus(MessageBus):
    """The bus connection the bridge serves on (see the module doc).

    Args:
        limits: The per-peer limits (shared by every connection of the bridge).
        **kwargs: ``MessageBus`` arguments (``bus_address`` or ``bus_type``).
    """

    def __init__(self, limits: PeerLimits, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limits = limits
        self._patient: _PatientSocket | None = None

    async def connect(self) -> AgentBus:
        """Connect (``MessageBus.connect``) and let the writer wait for a full socket."""
        await super().connect()
        self._let_the_writer_wait()
        return self

    def _let_the_writer_wait(self) -> None:
        writer = getattr(self, "_writer", None)
        sock = getattr(writer, "sock", None)
        if not isinstance(sock, socket.socket) or self._negotiate_unix_fd:
            # Another dbus-fast: without the workaround a full socket drops the connection.
            _log.warning("dbus-fast %s: cannot guard its writer against EAGAIN", type(writer))
            return
        self._patient = _PatientSocket(sock, lambda: self.queued)
        writer.sock = self._patient  # type: ignore[union-attr]

    @property
    def socket_full(self) -> int:
        """How often the writer found the socket full (and waited)."""
        return 0 if self._patient is None else self._patient.full

    @property
    def peak_queued(self) -> int:
        """The most messages seen waiting in the writer (behind a full socket)."""
        return 0 if self._patient is None else self._patient.peak_backlog

    @property
    def queued(self) -> int:
        """Messages waiting in the writer for the socket to drain."""
        writer = getattr(self, "_writer", None)
        return len(getattr(writer, "messages", ()))

    def _make_method_handler(
        self, interface: ServiceInterface, method: Any
    ) -> Callable[[Message, Any], None]:
        inner = super()._make_method_handler(interface, method)
        if not inspect.iscoroutinefunction(method.fn):
            return inner  # answered before the next message is read: nothing is held
        limits = self.limits

        def bounded(msg: Message, send_reply: Any) -> None:
            peer = msg.sender or ""
            wants_reply = not msg.flags & MessageFlag.NO_REPLY_EXPECTED
            if not limits.admit_call(peer):
                _log.debug("refused %s.%s from %s: too many in flight", interface.name,
                           msg.member, peer)  # fmt: skip
                if wants_reply:
                    send_reply(Message.new_error(
                        msg, LIMITS_EXCEEDED,
                        f"too many calls waiting for an answer (at most "
                        f"{limits.max_in_flight} per connection): wait for the answers",
                    ))  # fmt: skip
                return
            token = _CALLER.set(peer)  # copied into the call's task by ensure_future
            try:
                if wants_reply:
                    inner(msg, _ReleasingReply(self, msg, lambda: limits.release_call(peer)))
                else:
                    self._run_unanswered(method.fn(interface, *msg.body), peer)
            except BaseException:
                limits.release_call(peer)
                raise
            finally:
                _CALLER.reset(token)

        return bounded

    def _run_unanswered(self, call: Any, peer: str) -> None:
        """A call that wants no answer: run it, log its failure, free its slot."""
        task: asyncio.Future[Any] = asyncio.ensure_future(call)
        self._pending_futures.add(task)

        def done(fut: asyncio.Future[Any]) -> None:
            self._pending_futures.discard(fut)
            self.limits.release_call(peer)
            if not fut.cancelled() and fut.exception() is not None:
                _log.warning("a D-Bus call without reply failed: %s", fut.exception())

        task.add_done_callback(done)

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:  # noqa: ARG002
        return

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:  # noqa: ARG002
        return


class _ReleasingReply(SendReply):
    """dbus-fast's reply sender that first frees the caller's slot (once)."""

    __slots__ = ("_release",)

    def __init__(self, bus: MessageBus, msg: Message, release: Callable[[], None]) -> None:
        super().__init__(bus, msg)
        self._release: Callable[[], None] | None = release

    def __call__(self, reply: Message) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
        super().__call__(reply)
