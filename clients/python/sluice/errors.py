"""The exceptions of the sluice client.

Every exception derives from :class:`SluiceError`. Those caused by the engine
carry its gRPC status code (``code``) and its message (``message``) unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .events import Summary

__all__ = [
    "SluiceError",
    "ConnectError",
    "TLSError",
    "RefusedError",
    "AuthError",
    "PipelineNotFoundError",
    "ProtocolError",
    "RecordTooLargeError",
    "WindowFullError",
    "GaveUpError",
    "ClosedError",
]


class SluiceError(Exception):
    """Base class of every error raised by the sluice client.

    Attributes:
        summary: The client's :class:`~sluice.Summary` when the error ended
            it (set by ``close()``), else ``None``.
    """

    summary: "Optional[Summary]" = None


class ConnectError(SluiceError):
    """The engine could not be reached (or did not answer ``Open`` in time)
    within the reconnect policy's attempts.

    Attributes:
        addr: The engine address.
        reason: The last failure.
    """

    def __init__(self, addr: str, reason: str) -> None:
        super().__init__(f"cannot connect to {addr}: {reason}")
        self.addr = addr
        self.reason = reason


class TLSError(ConnectError):
    """The TLS handshake failed (an untrusted or invalid certificate, no
    client certificate for an engine that requires one, TLS against a
    plaintext port): trying again cannot fix it, so it is raised at once."""


class RefusedError(SluiceError):
    """The engine ended the stream with a status that retrying cannot fix.

    Attributes:
        code: The gRPC status code name (``"NOT_FOUND"``, ``"OUT_OF_RANGE"``, …).
        message: The engine's message, unchanged.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"engine refused the stream ({code}): {message}")
        self.code = code
        self.message = message


class AuthError(RefusedError):
    """``UNAUTHENTICATED`` (no or unknown token) or ``PERMISSION_DENIED``
    (the token does not cover this source id)."""


class PipelineNotFoundError(RefusedError):
    """``NOT_FOUND``: the engine has no pipeline of that name."""


class ProtocolError(SluiceError):
    """The engine broke the protocol (for example its first message was not ``Opened``)."""


class RecordTooLargeError(SluiceError, ValueError):
    """A record the engine can never admit: larger than ``Opened.max_record_bytes``
    or, encoded, than its ``max_message_bytes``.

    Attributes:
        size: The record's size (or its encoded size for the message limit).
        limit: The limit it exceeds.
        what: Which limit (``"max_record_bytes"`` or ``"max_message_bytes"``).
    """

    def __init__(self, size: int, limit: int, what: str) -> None:
        super().__init__(f"record of {size} bytes exceeds the engine's {what} ({limit})")
        self.size = size
        self.limit = limit
        self.what = what


class WindowFullError(SluiceError, TimeoutError):
    """``send`` waited ``send_timeout`` seconds for room in the unacked window
    (records or bytes) and got none: the engine is not acking (down, or stalled).

    Attributes:
        held_records: Records held (sent or queued, not acked) at the time.
        held_bytes: Their bytes.
    """

    def __init__(self, timeout: float, held_records: int, held_bytes: int) -> None:
        super().__init__(
            f"no room in the unacked window within {timeout:g} s "
            f"({held_records} records, {held_bytes} bytes held unacked)"
        )
        self.held_records = held_records
        self.held_bytes = held_bytes


class GaveUpError(SluiceError):
    """The stream kept ending and the reconnect attempts (without an ack in
    between) are used up.

    Attributes:
        attempts: Reconnect attempts made.
        last: The last failure.
    """

    def __init__(self, attempts: int, last: str) -> None:
        super().__init__(f"gave up after {attempts} reconnect attempts: {last}")
        self.attempts = attempts
        self.last = last


class ClosedError(SluiceError):
    """The source was closed: nothing more can be sent (or ``close`` timed
    out before every record was acked)."""

    def __init__(self, message: str = "the source is closed") -> None:
        super().__init__(message)


_AUTH = {"UNAUTHENTICATED", "PERMISSION_DENIED"}


def refused(code: str, message: str) -> RefusedError:
    """The :class:`RefusedError` subclass for status ``code``."""
    if code in _AUTH:
        return AuthError(code, message)
    if code == "NOT_FOUND":
        return PipelineNotFoundError(code, message)
    return RefusedError(code, message)
