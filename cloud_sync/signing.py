"""Ed25519 signatures of the cloud's documents.

The signature covers the exact UTF-8 bytes of the document's ``signed`` text (see
:class:`cloud_sync.contract.SignedDocument`), so the cloud may serialise its JSON any
way it likes. Keys are raw 32-byte Ed25519 keys written as base64: that is what goes
in the car's configuration (``[cloud] signing_keys``), one or more with their ids, so a
key can be rotated by provisioning the next one before the cloud starts using it.

PyNaCl (libsodium) does the signing and verifying: on the car it costs about 1 MiB of
resident memory where ``cryptography``'s Ed25519 cost about 7.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.exceptions import ValueError as NaclValueError
from nacl.signing import SigningKey as NaclSigningKey
from nacl.signing import VerifyKey

from cloud_sync.contract import DocumentKind, SignedDocument
from cloud_sync.errors import SignatureError


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key the cloud (or the development cloud) signs with."""

    key_id: str
    private: NaclSigningKey

    @classmethod
    def generate(cls, key_id: str) -> SigningKey:
        """A new random key."""
        return cls(key_id, NaclSigningKey.generate())

    @classmethod
    def from_base64(cls, key_id: str, text: str) -> SigningKey:
        """A key from the base64 of its 32 raw bytes (the Ed25519 seed)."""
        return cls(key_id, NaclSigningKey(_unbase64(text, 32)))

    def private_base64(self) -> str:
        """The 32 raw bytes of the private key, in base64 (keep it secret)."""
        return base64.b64encode(bytes(self.private)).decode("ascii")

    def public_base64(self) -> str:
        """The 32 raw bytes of the public key, in base64: what a car is provisioned with."""
        return base64.b64encode(bytes(self.private.verify_key)).decode("ascii")

    def sign(
        self,
        kind: DocumentKind,
        body: Mapping[str, Any],
        *,
        version: int,
        vehicle_id: str = "*",
        issued_at: float,
    ) -> SignedDocument:
        """A signed document of ``kind`` carrying ``body``."""
        header = {
            "kind": kind.value,
            "vehicle_id": vehicle_id,
            "version": version,
            "issued_at": issued_at,
            "body": dict(body),
        }
        signed = json.dumps(header, ensure_ascii=False, separators=(",", ":"))
        signature = self.private.sign(signed.encode("utf-8")).signature
        return SignedDocument(
            key_id=self.key_id,
            signed=signed,
            signature=base64.b64encode(signature).decode("ascii"),
        )


class Verifier:
    """Checks signatures against the public keys the car was provisioned with."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        """``keys``: key id -> base64 of the 32-byte Ed25519 public key.

        Raises:
            SignatureError: A key is not 32 bytes of base64.
        """
        self._keys: dict[str, VerifyKey] = {}
        for key_id, text in keys.items():
            try:
                self._keys[key_id] = VerifyKey(_unbase64(text, 32))
            except (SignatureError, NaclValueError, ValueError) as err:
                raise SignatureError(f"signing key {key_id!r} is not usable: {err}") from err

    def verify(self, document: SignedDocument) -> None:
        """Check ``document``'s signature.

        Raises:
            SignatureError: Unknown key, malformed signature, or it does not verify.
        """
        key = self._keys.get(document.key_id)
        if key is None:
            raise SignatureError(f"unknown signing key {document.key_id!r}")
        signature = _unbase64(document.signature, 64)
        try:
            key.verify(document.signed.encode("utf-8"), signature)
        except BadSignatureError as err:
            raise SignatureError("the signature does not verify") from err


def _unbase64(text: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise SignatureError(f"not base64: {err}") from err
    if len(raw) != length:
        raise SignatureError(f"expected {length} bytes, got {len(raw)}")
    return raw
