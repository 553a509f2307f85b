"""The cloud: the broker answers, and the car's TLS files are usable and belong together.

The broker takes a client certificate's common name as the MQTT username
(``use_identity_as_username``) and its ACL lets a car use only ``tp/v2/<CN>/...``
(``cloud_sync/reference/broker/``), so the certificate's CN must be the vehicle id. The TLS
handshake is made without an MQTT CONNECT: the broker forces a car's client id to its
CN, so connecting as the car would take over the running agent's session.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_sync.settings import CloudSettings
from touchpoint.doctor.report import Check, Status, fail, ok, warn

#: A certificate expiring sooner than this is worth a warning.
EXPIRY_WARNING: Final = dt.timedelta(days=30)
#: After the handshake, how long to wait for a refusal of the certificate (TLS 1.3
#: servers check it after the handshake completes on the client's side).
REFUSAL_WAIT_S: Final = 1.0


def check_cloud(
    settings: CloudSettings | None,
    vehicle_id: str,
    *,
    timeout: float = 3.0,
    now: dt.datetime | None = None,
) -> Iterator[Check]:
    """``cloud.broker``, then ``tls.ca``, ``tls.cert``, ``tls.key`` and ``tls.handshake``."""
    if settings is None:
        yield warn(
            "cloud",
            "no [cloud] section: events stay in the outbox (up to its budget) "
            "and no campaigns, wallet or bookings arrive",
            "add [cloud] with host, port and the TLS files",
        )
        return
    moment = now or dt.datetime.now(dt.UTC)
    broker = _check_broker(settings, timeout)
    yield broker
    if not settings.tls:
        yield check_plain(settings.host)
        return
    files = [
        _check_ca(settings.ca_file, moment),
        _check_cert(settings.cert_file, settings.ca_file, vehicle_id, moment),
        _check_key(settings.key_file, settings.cert_file),
    ]
    yield from files
    if broker.status is Status.OK and all(c.status is not Status.FAIL for c in files):
        yield _check_handshake(settings, timeout)


def _check_broker(settings: CloudSettings, timeout: float) -> Check:
    where = f"{settings.host}:{settings.port}"
    started = time.monotonic()
    try:
        socket.create_connection((settings.host, settings.port), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        return fail(
            "cloud.broker",
            f"{where} does not accept connections ({reason})",
            "check [cloud] host and port, the network (APN, DNS) and whether the broker runs",
        )
    took = (time.monotonic() - started) * 1000
    return ok("cloud.broker", f"{where} accepts TCP connections ({took:.0f} ms)")


def check_plain(host: str) -> Check:
    """``tls = false``: fine towards loopback (development), a warning anywhere else."""
    if _is_loopback(host):
        return ok("tls", f"off: plain MQTT to {host} (loopback, development)")
    return warn(
        "tls",
        f"off towards {host}: events and the member's data cross the network in clear, "
        "and anyone can claim to be this car",
        "tls = true with ca_file, cert_file and key_file",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(name: str, path: Path | None, what: str) -> bytes | Check:
    if path is None:
        return fail(name, f"no {what} configured", f"set it in [cloud] ({name.split('.')[1]}_file)")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return fail(
            name,
            f"{path}: no such file",
            f"provision the {what} to {path}, or fix the path in [cloud]",
        )
    except PermissionError:
        return fail(
            name,
            f"{path}: not readable by this user (uid {os.getuid()})",
            "make it readable by the daemon's user (owner touchpoint, mode 0400 or "
            "0440), and run the doctor as that user or root",
        )
    except OSError as err:
        return fail(name, f"{path}: {err.strerror}", f"check {path}")


def _validity(cert: x509.Certificate, now: dt.datetime) -> tuple[Status, str]:
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    if now > after:
        return Status.FAIL, f"expired on {after:%Y-%m-%d}"
    if now < before:
        return Status.FAIL, f"not valid before {before:%Y-%m-%d %H:%M} UTC (is the clock right?)"
    left = after - now
    status = Status.WARN if left < EXPIRY_WARNING else Status.OK
    return status, f"valid until {after:%Y-%m-%d} ({left.days} days)"


def _load_cas(path: Path | None) -> list[x509.Certificate] | Check:
    data = _read("tls.ca", path, "CA certificate")
    if isinstance(data, Check):
        return data
    try:
        cas = x509.load_pem_x509_certificates(data)
    except ValueError as err:
        return fail(
            "tls.ca",
            f"{path}: not a PEM certificate ({err})",
            "install the fleet CA's certificate (PEM) there",
        )
    return cas


def _check_ca(path: Path | None, now: dt.datetime) -> Check:
    cas = _load_cas(path)
    if isinstance(cas, Check):
        return cas
    notes: list[str] = []
    worst = Status.OK
    for ca in cas:
        status, note = _validity(ca, now)
        try:
            is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            status, note = max(status, Status.WARN, key=_rank), f"{note}, not marked as a CA"
        notes.append(f"{_cn(ca)}: {note}")
        worst = max(worst, status, key=_rank)
    described = f"{path}: {len(cas)} certificate(s); " + "; ".join(notes)
    fix = "install the fleet CA's current certificate (the broker's must chain to it)"
    return Check("tls.ca", worst, described, None if worst is Status.OK else fix)


def _check_cert(
    path: Path | None, ca_path: Path | None, vehicle_id: str, now: dt.datetime
) -> Check:
    data = _read("tls.cert", path, f"car's certificate (CN {vehicle_id!r})")
    if isinstance(data, Check):
        return data
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as err:
        return fail(
            "tls.cert",
            f"{path}: not a PEM certificate ({err})",
            "provision the car's certificate (PEM) there",
        )
    status, note = _validity(cert, now)
    reissue = f"issue a new certificate with CN {vehicle_id!r} from the fleet CA"
    problems: list[str] = []
    fix = reissue
    if _cn(cert) != vehicle_id:
        problems.append(
            f"[vehicle] id is {vehicle_id!r}: the broker takes the CN as the username and "
            "lets a car use only tp/v2/<CN>/..., so this car would publish where it may not"
        )
        fix = f"set [vehicle] id = {_cn(cert)!r}, or {reissue}"
    cas = _load_cas(ca_path)
    if isinstance(cas, list) and not any(_issued_by(cert, ca) for ca in cas):
        problems.append(f"not issued by the CA in {ca_path}: the broker refuses it")
    if not _client_usage(cert):
        problems.append("not usable for TLS clients (extended key usage)")
    described = "; ".join([f"{path}: CN {_cn(cert)!r}, {note}", *problems])
    if status is Status.FAIL or problems:
        return fail("tls.cert", described, fix)
    if status is Status.WARN:
        return warn("tls.cert", described, f"renew it soon: {reissue}")
    return ok("tls.cert", described)


def _client_usage(cert: x509.Certificate) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no restriction
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages


def _check_key(path: Path | None, cert_path: Path | None) -> Check:
    data = _read("tls.key", path, "car's private key")
    if isinstance(data, Check):
        return data
    assert path is not None  # _read failed otherwise
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return fail(
            "tls.key",
            f"{path}: encrypted with a passphrase, which the agent cannot give",
            "store the key unencrypted, readable by the daemon's user only",
        )
    except (ValueError, UnsupportedAlgorithm) as err:
        return fail(
            "tls.key",
            f"{path}: not a PEM private key ({err})",
            "provision the car's private key (PEM) there",
        )
    described = f"{path}: {_key_kind(key)} key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes()) if cert_path else None
    except (OSError, ValueError):
        cert = None  # reported by the certificate's check
    if cert is not None and _public(cert.public_key()) != _public(key.public_key()):
        return fail(
            "tls.key",
            f"{described}; does not match the certificate {cert_path}",
            "install the key the certificate was issued for (or a new pair)",
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o007:
        return warn(
            "tls.key",
            f"{described}; readable by every user (mode {mode:04o})",
            f"chmod 0400 {path} (owner: the daemon's user)",
        )
    matched = "matches the certificate" if cert is not None else "certificate not loaded"
    return ok("tls.key", f"{described}, {matched}, mode {mode:04o}")


def _check_handshake(settings: CloudSettings, timeout: float) -> Check:  # noqa: PLR0911 - one per outcome
    from agent.ports import TimeBounds  # noqa: PLC0415
    from cloud_sync.link import (  # noqa: PLC0415 - paho only when needed
        certificate_problem,
        client_tls_context,
    )

    assert settings.ca_file is not None  # checked by the settings model
    where = f"{settings.host}:{settings.port}"
    try:
        context = client_tls_context(settings.ca_file, settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError, ValueError) as err:
        return fail(
            "tls.handshake",
            f"the TLS files do not load together: {err}",
            "fix what the checks above name",
        )
    try:
        with (
            socket.create_connection((settings.host, settings.port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=settings.host) as tls,
        ):
            version = tls.version()
            # The daemon judges the dates by its clock model; here the system clock is
            # what there is (the clock checks say whether it can be believed).
            now = time.time()
            dated = certificate_problem(dict(tls.getpeercert() or {}), TimeBounds(now, now))
            tls.settimeout(REFUSAL_WAIT_S)
            try:
                data = tls.recv(1)
            except TimeoutError:
                data = None  # the broker waits for CONNECT: the certificate was accepted
    except ssl.SSLCertVerificationError as err:
        return fail(
            "tls.handshake",
            f"{where}: the broker's certificate does not verify ({err.verify_message})",
            "the broker's certificate must chain to ca_file and name the host in [cloud] host",
        )
    except ssl.SSLError as err:
        return fail(
            "tls.handshake",
            f"{where}: refused ({err.reason or err})",
            "the broker refuses this certificate: revoked, or issued by another CA?",
        )
    except OSError as err:
        return fail("tls.handshake", f"{where}: {err}", "check the broker and the network")
    if dated is not None:
        return fail(
            "tls.handshake",
            f"{where}: {dated}",
            "the broker needs a certificate valid now (or this head unit's clock is wrong)",
        )
    if data == b"":
        return fail(
            "tls.handshake",
            f"{where}: the broker closed the connection after the "
            "handshake (the certificate refused: revoked?)",
            "ask the fleet operator whether this car's certificate is revoked; issue a new one",
        )
    return ok(
        "tls.handshake",
        f"{where}: {version} with the car's certificate accepted (no MQTT session opened)",
    )


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _public(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    encoded: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return encoded


def _key_kind(key: PrivateKeyTypes) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}-bit"
    return type(key).__name__.removesuffix("PrivateKey")


def _rank(status: Status) -> int:
    return (Status.OK, Status.WARN, Status.FAIL).index(status)
