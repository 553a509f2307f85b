"""A private Mosquitto on loopback running the shipped reference configuration.

For the tests, the benchmarks and ``touchpoint demo``: it listens on free loopback
ports only, with certificates from a development PKI (:mod:`cloud_sync.reference.pki`), and never
touches a broker the machine may already run. :class:`PrivateBroker` starts, stops and
restarts it on the same ports and data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final

from cloud_sync.contract import RESERVED_IDS
from cloud_sync.errors import SyncError
from cloud_sync.link import client_tls_context
from cloud_sync.reference import dynsec
from cloud_sync.reference.pki import CLOUD_USER, BrokerConfig, DevPki, render_broker_config

LOOPBACK: Final = "127.0.0.1"
#: Where Debian puts the broker; /usr/sbin is often not on a normal user's PATH.
FALLBACK_BINARY: Final = Path("/usr/sbin/mosquitto")
#: How long to wait for anything the broker should do at once.
TIMEOUT: Final = 5.0
_START_TIMEOUT: Final = 10.0


class BrokerError(SyncError):
    """The broker is not installed, did not start, or a client could not connect to it."""


def mosquitto_binary() -> str:
    """The ``mosquitto`` executable.

    Raises:
        BrokerError: If it is not installed.
    """
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    if os.access(FALLBACK_BINARY, os.X_OK):
        return str(FALLBACK_BINARY)
    raise BrokerError("mosquitto is not installed (Debian package: mosquitto)")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on the loopback address just now."""
    # All sockets stay bound until every port is picked, so the kernel cannot hand
    # out the same port twice; the broker binds them moments later.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


class PrivateBroker:
    """A private ``mosquitto`` on loopback, with the reference configuration.

    Two TLS listeners, as in a deployment: :attr:`port` for vehicles (client id forced
    to the certificate's CN, access control by the dynamic-security plugin) and
    :attr:`cloud_port` for the cloud (trusting the cloud's CA only); with ``plain`` also
    a plain-TCP :attr:`plain_port` for benchmarks. Certificates for any common name are
    issued from :attr:`pki` on first use, and a car is registered with the broker then
    (:meth:`register`), as provisioning would; ``vehicles`` are registered before the
    first start (quicker for many). Ports are free loopback ports, but ``port`` (the
    vehicles', which a caller found free) when given.
    """

    host: Final = LOOPBACK

    def __init__(
        self,
        directory: Path,
        pki: DevPki,
        *,
        plain: bool = False,
        vehicles: Iterable[str] = (),
        preexec_fn: Callable[[], None] | None = None,
        port: int | None = None,
    ) -> None:
        self.directory = directory
        self.preexec_fn = preexec_fn
        self.pki = pki
        self.binary = mosquitto_binary()
        # The kernel may offer a wanted port that is free just now as a free one too.
        ports = [p for p in free_ports(4 if plain else 3) if p != port]
        self.port, self.cloud_port = port or ports[0], ports[1]
        self.plain_port = ports[2] if plain else None
        self.config: BrokerConfig = render_broker_config(
            directory / "conf",
            pki.server_files,
            port=self.port,
            cloud_port=self.cloud_port,
            data_dir=directory / "data",
            plain_port=self.plain_port,
            cloud_server=pki.cloud_server_files,
            vehicles=vehicles,
        )
        self.log = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._registrar: dynsec.Registrar | None = None
        self._registered = dynsec.registered(self.config.dynsec)

    # -- the process ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (for resource figures)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self, timeout: float = _START_TIMEOUT) -> None:
        """Start the broker (same ports, same data) and wait until it accepts connections.

        Raises:
            BrokerError: If it exits or does not get going within ``timeout``.
        """
        if self.running:
            raise BrokerError("the broker is already running")
        offset = self.log.stat().st_size if self.log.exists() else 0
        # The log is a file, not a pipe: nobody has to read it for the broker to go on,
        # and nothing is left open to warn about.
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our binary, our config
                [self.binary, "-c", str(self.config.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.directory,
                preexec_fn=self.preexec_fn,  # noqa: PLW1509 - given only by a single-threaded caller
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        # Mosquitto says "running" once every listener is open; a port taken meanwhile by
        # someone else makes it exit instead, which the poll sees.
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise BrokerError(f"mosquitto exited at start:\n{self.log_text(offset)}")
            if " running" in self.log_text(offset) and self._accepting():
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not start within {timeout} s:\n{self.log_text(offset)}")

    def _accepting(self) -> bool:
        ports = [self.port, self.cloud_port] + ([self.plain_port] if self.plain_port else [])
        try:
            for port in ports:
                socket.create_connection((self.host, port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self, *, crash: bool = False, timeout: float = 10.0) -> None:
        """Stop the broker (idempotent).

        Args:
            crash: Kill it (SIGKILL) instead of asking it to stop: it then keeps only
                what it last saved (autosave), as after a power cut.
            timeout: How long to wait before killing it anyway.
        """
        if self._registrar is not None:
            self._registrar.close()
            self._registrar = None
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # SIGTERM makes mosquitto save its persistence file before exiting.
            process.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self, *, crash: bool = False) -> None:
        """Stop and start again on the same ports and data directory."""
        self.stop(crash=crash)
        self.start()

    def ensure_running(self) -> None:
        """Start the broker if a test left it stopped."""
        if not self.running:
            self.stop()
            self.start()

    def reload(self, timeout: float = TIMEOUT) -> None:
        """Have the broker reread its configuration, ACL and CRL (SIGHUP), and wait."""
        if self._process is None:
            raise BrokerError("the broker is not running")
        before = self.log_text().count("Reloading config.")
        self._process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        # The reload runs in mosquitto's single thread as it logs this line, so any
        # connection made after the line appears meets the new configuration.
        while self.log_text().count("Reloading config.") <= before:
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not reload within {timeout} s")
            time.sleep(0.02)

    def log_text(self, offset: int = 0) -> str:
        """What the broker has logged (from byte ``offset``)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")

    # -- clients ---------------------------------------------------------------------------

    def credentials(self, common_name: str) -> tuple[Path, Path]:
        """The certificate and key of ``common_name``, issued on first use.

        A car (any name but the reserved ones) is registered with the broker too.
        """
        cert, key = self.pki.client_files(common_name)
        if not cert.exists():
            self.pki.issue_client(common_name)
        if common_name not in RESERVED_IDS:
            self.register(common_name)
        return cert, key

    def register(self, *vehicles: str) -> None:
        """Give cars their rights on the vehicles' listener (idempotent).

        While the broker runs, through its ``$CONTROL`` topic as the administrator;
        while it is stopped, in the plugin's file, which it reads when it starts.
        """
        new = [v for v in vehicles if v not in self._registered]
        if not new:
            return
        if self.running:
            if self._registrar is not None and not self._registrar.alive:
                self._registrar.close()
                self._registrar = None
            if self._registrar is None:
                admin = self.tls_context(dynsec.ADMIN_USER)
                self._registrar = dynsec.Registrar(self.host, self.port, admin)
            self._registrar.register(new)
        else:
            dynsec.add_to_file(self.config.dynsec, new)
        self._registered.update(new)

    def port_for(self, common_name: str | None) -> int:
        """The listener an identity uses: the cloud's for :data:`CLOUD_USER`."""
        return self.cloud_port if common_name == CLOUD_USER else self.port

    def tls_context(
        self, common_name: str | None, *, certificate: tuple[Path, Path] | None = None
    ) -> ssl.SSLContext:
        """A client TLS context trusting the broker's CA only.

        Args:
            common_name: Whose certificate to present (issued if needed); ``None`` for
                none.
            certificate: A (cert, key) pair to present instead, e.g. from another CA.
        """
        if certificate is None and common_name is not None:
            certificate = self.credentials(common_name)
        if certificate is None:
            return client_tls_context(self.pki.ca_cert)
        return client_tls_context(self.pki.ca_cert, *certificate)


@contextlib.contextmanager
def running_broker(
    directory: Path, pki: DevPki, *, plain: bool = False, vehicles: Iterable[str] = ()
) -> Iterator[PrivateBroker]:
    """A started :class:`PrivateBroker` for the block, stopped after it.

    ``vehicles`` are registered before it starts (quicker than one by one for many).
    """
    broker = PrivateBroker(directory, pki, plain=plain, vehicles=vehicles)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
