"""A development PKI and the broker configuration that trusts it.

For the tests, the benchmarks and the demo: a certificate authority, a server
certificate for loopback, and client certificates whose common name is the MQTT
identity (a vehicle id, or :data:`CLOUD_USER`). Keys are ECDSA P-256 because every TLS
stack a car might carry (OpenSSL, mbedTLS, wolfSSL, BoringSSL) accepts it for client
certificates, which is not yet true of Ed25519.

:func:`render_broker_config` fills in the reference Mosquitto configuration shipped in
``cloud_sync/reference/broker/``, so whatever runs a broker here runs the same configuration a
deployment starts from. Nothing here is meant to guard production keys: a real
deployment's CA lives in an HSM, not in a directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_sync.contract import CHANNELS, VEHICLE_ID, channel_filter, cloud_rights
from cloud_sync.reference import dynsec

#: The common name (and so the MQTT username) of the cloud's consumers; the ACL's
#: ``user`` section names it, so vehicle-id allocation must never hand it out.
CLOUD_USER: Final = "cloud"
#: How long development certificates last unless told otherwise.
DEFAULT_VALIDITY: Final = dt.timedelta(days=30)
#: Certificates start a little in the past, so a clock a few minutes behind (a
#: container, a VM just resumed) does not see them as not yet valid.
_BACKDATE: Final = dt.timedelta(minutes=5)
_CURVE: Final = ec.SECP256R1()
_BROKER_TEMPLATES: Final = resources.files("cloud_sync.reference") / "broker"


@dataclass(frozen=True)
class ServerFiles:
    """What a broker's TLS listener needs: trust anchor, own identity, revocations."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    crl: Path


@dataclass(frozen=True)
class BrokerConfig:
    """A rendered configuration: the files to start ``mosquitto -c`` with."""

    config: Path
    acl: Path
    data_dir: Path
    #: The dynamic-security plugin's file (the cars' access control; the broker keeps it).
    dynsec: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, also when ``path`` already exists."""
    # The mode is set at creation so the key is never briefly world-readable, and
    # again afterwards because O_CREAT's mode does not apply to an existing file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs only; a leaf signs handshakes only (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _check_cn(common_name: str) -> None:
    # The CN becomes the MQTT username and a topic level (``%u`` in the ACL) and names
    # the files: the vehicle-id alphabet keeps out '/', '+', '#' and anything else
    # that would mean something there.
    if not VEHICLE_ID.match(common_name):
        raise ValueError(f"not usable as a certificate common name: {common_name!r}")


class DevPki:
    """A certificate authority in a directory, with a server certificate for loopback.

    Build one with :meth:`create` (a new CA) or :meth:`load` (one made before). Two
    :meth:`create` calls make two unrelated CAs: certificates of one are refused by a
    broker trusting the other.
    """

    def __init__(
        self,
        directory: Path,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
    ) -> None:
        self.directory = directory
        self._ca = ca_cert
        self._ca_key = ca_key
        self._revoked: dict[int, dt.datetime] = {}
        self._cloud: DevPki | None = None
        #: Whether this is the cloud's CA (:attr:`cloud`) rather than the fleet's.
        self.is_cloud_ca = False

    # -- file layout -----------------------------------------------------------------

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (PEM): what clients and the broker pin."""
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA's private key (PEM, mode 0600)."""
        return self.directory / "ca.key"

    @property
    def crl(self) -> Path:
        """The CA's certificate revocation list (PEM); empty until :meth:`revoke`."""
        return self.directory / "ca.crl"

    @property
    def server_cert(self) -> Path:
        """The broker's certificate (PEM)."""
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        """The broker's private key (PEM, mode 0600)."""
        return self.directory / "server.key"

    @property
    def server_files(self) -> ServerFiles:
        """The files a broker listener needs, for :func:`render_broker_config`."""
        return ServerFiles(self.ca_cert, self.server_cert, self.server_key, self.crl)

    @property
    def cloud_server_files(self) -> ServerFiles:
        """The cloud listener's files: the broker's own certificate, the cloud CA's trust.

        Clients of either listener verify the broker against the fleet CA; the broker
        verifies clients of the cloud listener against the cloud CA (:attr:`cloud`).
        """
        return ServerFiles(self.cloud.ca_cert, self.server_cert, self.server_key, self.cloud.crl)

    @property
    def subject(self) -> x509.Name:
        """The CA's name: the issuer of every certificate it issues."""
        return self._ca.subject

    @property
    def cloud(self) -> DevPki:
        """The CA of the cloud's consumers, in ``cloud-ca/`` (made on first use).

        The broker's cloud listener trusts this CA only, so no car certificate (issued by
        the fleet CA) can connect there. Its server certificate is not used: the broker
        presents the fleet CA's one on every listener.
        """
        if self.is_cloud_ca:
            return self
        if self._cloud is None:
            directory = self.directory / "cloud-ca"
            if (directory / "ca.key").exists():
                self._cloud = DevPki.load(directory)
            else:
                self._cloud = DevPki.create(directory, name="touchpoint development cloud CA")
            self._cloud.is_cloud_ca = True
        return self._cloud

    def _issuer_for(self, common_name: str) -> DevPki:
        return self.cloud if common_name == CLOUD_USER else self

    def client_files(self, common_name: str) -> tuple[Path, Path]:
        """Where the certificate and key of ``common_name`` are (issued or not).

        The cloud's (:data:`CLOUD_USER`) are the cloud CA's (:attr:`cloud`).
        """
        _check_cn(common_name)
        issuer = self._issuer_for(common_name)
        if issuer is not self:
            return issuer.client_files(common_name)
        return (
            self.directory / f"client-{common_name}.crt",
            self.directory / f"client-{common_name}.key",
        )

    # -- making and loading ------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        name: str = "touchpoint development CA",
        server_dns: Sequence[str] = ("localhost",),
        server_ips: Sequence[str] = ("127.0.0.1", "::1"),
        validity: dt.timedelta = DEFAULT_VALIDITY,
    ) -> DevPki:
        """A new CA in ``directory`` (made if missing), with a server certificate.

        Files already there are replaced.

        Args:
            directory: Where the PEM files go.
            name: The CA's common name.
            server_dns: DNS names of the server certificate.
            server_ips: IP addresses of the server certificate.
            validity: How long the CA, the server certificate and the CRL last.
        """
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(_CURVE)
        start = _now() - _BACKDATE
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + validity)
            # A CA for leaf certificates only: path length 0 means it cannot be used
            # to mint an intermediate that would issue further identities.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(directory / "ca.key", _key_pem(key))
        (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pki = cls(directory, cert, key)
        pki._write_crl(validity)
        pki._issue(
            "localhost",
            pki.server_cert,
            pki.server_key,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            validity=validity,
            san=[x509.DNSName(n) for n in server_dns]
            + [x509.IPAddress(ipaddress.ip_address(a)) for a in server_ips],
        )
        return pki

    @classmethod
    def load(cls, directory: Path) -> DevPki:
        """The CA :meth:`create` made in ``directory`` before, with its revocations."""
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{directory / 'ca.key'} is not an EC private key")
        pki = cls(directory, cert, key)
        if pki.crl.exists():
            crl = x509.load_pem_x509_crl(pki.crl.read_bytes())
            for revoked in crl:
                pki._revoked[revoked.serial_number] = revoked.revocation_date_utc
        return pki

    # -- issuing ---------------------------------------------------------------------

    def issue_client(
        self,
        common_name: str,
        *,
        validity: dt.timedelta = DEFAULT_VALIDITY,
        not_before: dt.datetime | None = None,
    ) -> tuple[Path, Path]:
        """Issue a client certificate for ``common_name``; return its (cert, key) paths.

        Args:
            common_name: The MQTT identity: a vehicle id, or :data:`CLOUD_USER`.
            validity: How long it lasts from ``not_before``.
            not_before: When it starts (a little before now by default); a time in the
                past with a short ``validity`` makes an expired certificate.
        """
        issuer = self._issuer_for(common_name)
        if issuer is not self:
            return issuer.issue_client(common_name, validity=validity, not_before=not_before)
        cert_path, key_path = self.client_files(common_name)
        self._issue(
            common_name,
            cert_path,
            key_path,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            validity=validity,
            not_before=not_before,
        )
        return cert_path, key_path

    def revoke(self, cert_path: Path) -> None:
        """Add the certificate at ``cert_path`` to the CRL and rewrite it.

        A running broker reads the CRL again when it reloads its configuration.
        """
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.issuer != self._ca.subject and not self.is_cloud_ca:
            cloud = self.cloud
            if cert.issuer == cloud.subject:
                cloud.revoke(cert_path)
                return
        if cert.issuer != self._ca.subject:
            raise ValueError(f"{cert_path} was not issued by this CA")
        self._revoked[cert.serial_number] = _now()
        self._write_crl(self._ca.not_valid_after_utc - _now())

    def _issue(
        self,
        common_name: str,
        cert_path: Path,
        key_path: Path,
        *,
        usage: x509.ObjectIdentifier,
        validity: dt.timedelta,
        not_before: dt.datetime | None = None,
        san: Sequence[x509.GeneralName] = (),
    ) -> None:
        key = ec.generate_private_key(_CURVE)
        start = _now() - _BACKDATE if not_before is None else not_before
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            # One purpose per certificate: a car's certificate cannot serve TLS and
            # the broker's cannot log in as a client.
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _write_crl(self, validity: dt.timedelta) -> None:
        # A CRL past its next update makes OpenSSL refuse every client, so a real
        # deployment must reissue it well before then; here it lasts as long as the CA.
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._ca.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + validity)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        for serial, when in self._revoked.items():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(self._ca_key, hashes.SHA256())
        self.crl.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


# -- the broker's configuration ------------------------------------------------------------


def _template(name: str) -> str:
    return (_BROKER_TEMPLATES / name).read_text(encoding="utf-8")


def _config_value(value: object) -> str:
    text = str(value)
    # Mosquitto reads one option per line: a line break in a path would smuggle in an
    # option of its own.
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"not usable in a mosquitto.conf line: {text!r}")
    return text


def _check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise ValueError(f"not a TCP port: {port}")
    return port


def render_acl() -> str:
    """The ``acl`` file: the shipped template with the rule lines from the MQTT contract."""
    # Patterns with %u for the cars (on the plain benchmark listener only), plain topics
    # with + for the cloud, the same channel list either way.
    vehicle = [
        f"pattern {'write' if c.direction == 'up' else 'read'} {channel_filter(c, '%u')}"
        for c in CHANNELS
    ]
    rights = cloud_rights()
    cloud = [f"topic read {t}" for t in rights.subscribe]
    cloud += [f"topic write {t}" for t in rights.publish]
    return _template("acl").format(vehicle_rules="\n".join(vehicle), cloud_rules="\n".join(cloud))


def render_broker_config(
    directory: Path,
    server: ServerFiles,
    *,
    port: int,
    cloud_port: int,
    data_dir: Path,
    host: str = "127.0.0.1",
    cloud_host: str = "127.0.0.1",
    plain_port: int | None = None,
    run_as: str | None = None,
    cloud_server: ServerFiles | None = None,
    vehicles: Iterable[str] = (),
) -> BrokerConfig:
    """Write ``mosquitto.conf``, ``acl`` and ``dynsec.json`` into ``directory``.

    ``mosquitto.conf`` and ``acl`` come from the shipped templates; ``dynsec.json`` (the
    cars' access control, see :mod:`cloud_sync.reference.dynsec`) is written only if it
    is not there yet, since the broker keeps the cars registered since in it.

    Args:
        directory: Where the files go (made if missing).
        server: The CA, server certificate, key and CRL the vehicles' listener uses.
        port: The vehicles' TLS listener.
        cloud_port: The cloud's TLS listener (client ids not tied to the certificate,
            so several consumers can share one identity).
        data_dir: The persistence directory (made if missing).
        host: The address the vehicles' listener binds.
        cloud_host: The address the cloud's listener binds.
        plain_port: A plain-TCP listener on 127.0.0.1 that believes the username a
            client claims, for benchmarks measuring without TLS; none by default.
        run_as: The user mosquitto switches to when started as root; the current user
            by default (so a broker started as root can still read the files it made).
        cloud_server: The cloud listener's files (:attr:`DevPki.cloud_server_files`:
            the cloud's own CA and CRL); ``server`` by default, which lets car
            certificates reach the cloud's listener: only where the network keeps them
            off it.
        vehicles: Cars to register in a new ``dynsec.json``.
    """
    acl = directory / "acl"
    dynsec_file = directory / "dynsec.json"
    cloud = cloud_server or server
    values = {
        "user": run_as if run_as is not None else pwd.getpwuid(os.geteuid()).pw_name,
        "data_dir": data_dir,
        "host": host,
        "port": _check_port(port),
        "cloud_host": cloud_host,
        "cloud_port": _check_port(cloud_port),
        "ca_cert": server.ca_cert,
        "server_cert": server.server_cert,
        "server_key": server.server_key,
        "crl": server.crl,
        "cloud_ca_cert": cloud.ca_cert,
        "cloud_crl": cloud.crl,
        "acl_file": acl,
        "dynsec_plugin": dynsec.plugin_path(),
        "dynsec_file": dynsec_file,
    }
    # Everything is checked before anything is written.
    text = _template("mosquitto.conf").format(**{k: _config_value(v) for k, v in values.items()})
    if plain_port is not None:
        text += _template("plain-listener.conf").format(
            plain_port=_check_port(plain_port), acl_file=_config_value(acl)
        )
    acl_text = render_acl()
    directory.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    acl.write_text(acl_text, encoding="utf-8")
    if not dynsec_file.exists():
        dynsec.write_document(dynsec_file, vehicles)
    config = directory / "mosquitto.conf"
    config.write_text(text, encoding="utf-8")
    return BrokerConfig(config=config, acl=acl, data_dir=data_dir, dynsec=dynsec_file)
