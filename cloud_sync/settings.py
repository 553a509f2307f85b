"""Cloud sync's settings (``[cloud]`` of the daemon's configuration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CloudSettings(_Section):
    """Cloud sync over MQTT 5 (the contract: ``docs/asyncapi.yaml``)."""

    host: Annotated[str, Field(min_length=1, description="The MQTT broker's host name.")] = (
        "localhost"
    )
    port: Annotated[int, Field(ge=1, le=65535, description="The broker's port.")] = 8883
    # Mutual TLS: the CA the broker's certificate must chain to (pinned), and the car's
    # own certificate and key.
    tls: Annotated[
        bool,
        Field(
            description="Mutual TLS; `false` only for a broker on loopback during development. "
            "With TLS, `ca_file`, `cert_file` and `key_file` are all required."
        ),
    ] = True
    ca_file: Annotated[
        Path | None,
        Field(
            description="The CA the broker's certificate must chain to (pinned: the system's "
            "CAs are not used)."
        ),
    ] = None
    cert_file: Annotated[
        Path | None,
        Field(description="The car's certificate (its common name is `[vehicle] id`)."),
    ] = None
    key_file: Annotated[Path | None, Field(description="The car's private key.")] = None
    keepalive_s: Annotated[
        int, Field(ge=5, le=3600, description="MQTT keep-alive interval, in seconds.")
    ] = 60
    session_expiry_s: Annotated[
        int,
        Field(
            ge=0,
            le=0xFFFFFFFF,
            description="How long the broker keeps the car's session (subscriptions, queued "
            "downlink) while it is offline: garages and tunnels last hours, a holiday weeks.",
        ),
    ] = 14 * 86_400
    reconnect_min_s: Annotated[
        float,
        Field(
            gt=0,
            le=60,
            description="The reconnect back-off after a first failure; it doubles with "
            "each failure, and each wait is a random part of it (full jitter).",
        ),
    ] = 1.0
    reconnect_max_s: Annotated[
        float,
        Field(gt=0, le=3600, description="The back-off's ceiling (not below `reconnect_min_s`)."),
    ] = 120.0
    batch_events: Annotated[
        int, Field(ge=1, le=1000, description="Events per uplink message, at most.")
    ] = 200
    batch_bytes: Annotated[
        int,
        Field(ge=1024, le=256 * 1024, description="Bytes of events per uplink message, at most."),
    ] = 128 * 1024
    window: Annotated[
        int,
        Field(ge=1, le=1000, description="Messages published and not yet acknowledged, at most."),
    ] = 16
    max_attempts: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description="Attempts before an event the broker keeps refusing goes to the "
            "dead-letter table.",
        ),
    ] = 5
    signing_keys: Annotated[
        dict[Annotated[str, Field(min_length=1, max_length=64)], str],
        Field(
            description="The cloud's Ed25519 public keys: key id = base64 of the 32 raw bytes. "
            "Several let a key be rotated; a document signed by any other key is refused."
        ),
    ] = {}
    request_expiry_s: Annotated[
        int,
        Field(
            ge=10,
            le=30 * 86_400,
            description="Requests (booking slots, booking, redemption) expire from the broker "
            "after this long, in seconds.",
        ),
    ] = 7 * 86_400

    ack_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="A batch the broker took but the cloud has not acknowledged as stored "
            "within this many seconds is sent again (same event ids; the cloud drops "
            "duplicates).",
        ),
    ] = 30.0

    @model_validator(mode="after")
    def _tls_files(self) -> Self:
        if self.tls and None in (self.ca_file, self.cert_file, self.key_file):
            raise ValueError("with tls, ca_file, cert_file and key_file are all needed")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self
