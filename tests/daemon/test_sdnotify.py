"""sd_notify and the journal log format, against a real datagram socket."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from touchpoint.logsetup import JournalFormatter
from touchpoint.sdnotify import Notifier, watchdog_interval


def test_ready_status_watchdog_stopping_reach_the_socket(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notifier = Notifier(path)
    assert notifier.enabled
    notifier.ready("serving")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=serving"]
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_abstract_namespace_address() -> None:
    name = f"touchpoint-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        notifier = Notifier("@" + name)
        notifier.status("hello")
        assert sock.recv(4096) == b"STATUS=hello"
        notifier.close()
    finally:
        sock.close()


def test_without_a_service_manager_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("no-op")  # must not raise


def test_a_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING):
        notifier.watchdog()
    assert "sd_notify failed" in caplog.text
    notifier.close()


def test_watchdog_interval_is_half_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None


def test_journal_lines_carry_the_syslog_priority() -> None:
    formatter = JournalFormatter("%(name)s: %(message)s")
    record = logging.LogRecord("touchpoint.x", logging.ERROR, __file__, 1, "two\nlines", (), None)
    assert formatter.format(record) == "<3>touchpoint.x: two\n<3>lines"
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "hi", (), None)
    assert formatter.format(record) == "<6>t: hi"
