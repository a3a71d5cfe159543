"""The options of a source: the unacked window, batching, reconnects,
timeouts, the bearer token and TLS."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

__all__ = ["Options", "Reconnect"]

PemSource = Union[bytes, str, os.PathLike]


def _pem(value: Optional[PemSource]) -> Optional[bytes]:
    """PEM bytes from bytes, or from a file path (``str`` or ``PathLike``)."""
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class Reconnect:
    """How the source reconnects after its stream ends early (and retries a
    first connection that fails for a transient reason).

    Attributes:
        max_attempts: Attempts in a row without an ack in between before the
            source gives up (:class:`~sluice.GaveUpError`); 0 never reconnects.
        initial_backoff: Seconds before the first attempt; doubled each time.
        max_backoff: Longest wait between attempts, in seconds.
    """

    max_attempts: int = 10
    initial_backoff: float = 0.1
    max_backoff: float = 5.0

    def backoff(self, attempt: int) -> float:
        """The wait before attempt number ``attempt`` (from 1), in seconds."""
        return min(self.initial_backoff * (2 ** max(0, min(attempt - 1, 30))), self.max_backoff)


@dataclass(frozen=True)
class Options:
    """Options of a :class:`~sluice.Source` or :class:`~sluice.AsyncSource`.

    Attributes:
        max_unacked_records: Most records held (queued or sent, not acked);
            ``send`` waits while the window is full.
        max_unacked_bytes: Most record bytes held (same rule). A single
            record larger than this is still accepted into an empty window.
        send_timeout: Seconds ``send``/``send_many`` wait for room before
            raising :class:`~sluice.WindowFullError`; ``None`` waits forever.
        max_batch_records: Most records per batch (``Opened.max_batch_records``
            caps it further).
        linger: Seconds a partial batch waits for more records (``flush`` and
            ``close`` send at once).
        reconnect: The reconnect policy.
        connect_timeout: Seconds allowed to connect and get ``Opened``.
        close_timeout: Seconds ``close`` waits for the engine to end the
            stream once everything is acked.
        token: Bearer token, sent as ``authorization: Bearer <token>``.
        ca_pem: CA certificate(s) trusted for an ``https://`` address (PEM
            bytes or a file path); ``None`` uses the system roots.
        cert_pem: The client certificate chain for mutual TLS (bytes or path).
        key_pem: Its private key (bytes or path).
        protocol_version: Highest protocol version to speak (2, or 1 to force
            version 1); the engine may answer with a lower one.
        first_seq: Sequence number of the first record; ``None`` continues
            after what the engine already admitted from this source id. A
            producer that keeps its own position across its restarts passes
            it here (version 2 sends it as ``Open.first_unacked_seq``, so a
            restarted engine or another replica resumes there without a gap).
    """

    max_unacked_records: int = 100_000
    max_unacked_bytes: int = 64 * 1024 * 1024
    send_timeout: Optional[float] = None
    max_batch_records: int = 1000
    linger: float = 0.005
    reconnect: Reconnect = field(default_factory=Reconnect)
    connect_timeout: float = 10.0
    close_timeout: float = 5.0
    token: Optional[str] = None
    ca_pem: Optional[PemSource] = None
    cert_pem: Optional[PemSource] = None
    key_pem: Optional[PemSource] = None
    protocol_version: int = 2
    first_seq: Optional[int] = None

    def __post_init__(self) -> None:
        if self.max_unacked_records < 1 or self.max_unacked_bytes < 1:
            raise ValueError("max_unacked_records and max_unacked_bytes must be at least 1")
        if self.max_batch_records < 1:
            raise ValueError("max_batch_records must be at least 1")
        if self.protocol_version not in (1, 2):
            raise ValueError("protocol_version must be 1 or 2")
        if (self.cert_pem is None) != (self.key_pem is None):
            raise ValueError("cert_pem and key_pem go together (mutual TLS)")
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ValueError("token must be non-empty and without whitespace")
        if self.first_seq is not None and self.first_seq < 1:
            raise ValueError("first_seq must be at least 1")
        # Read PEM files once, so that reconnects do not touch the file system.
        for name in ("ca_pem", "cert_pem", "key_pem"):
            object.__setattr__(self, name, _pem(getattr(self, name)))

    def __repr__(self) -> str:
        token = None if self.token is None else "<redacted>"
        return (
            f"Options(max_unacked_records={self.max_unacked_records}, "
            f"max_unacked_bytes={self.max_unacked_bytes}, send_timeout={self.send_timeout}, "
            f"max_batch_records={self.max_batch_records}, linger={self.linger}, "
            f"reconnect={self.reconnect}, token={token}, tls={self.ca_pem is not None}, "
            f"mtls={self.cert_pem is not None}, protocol_version={self.protocol_version})"
        )
