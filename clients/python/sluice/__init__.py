"""sluice-client: a Python source SDK for the sluice ETL engine.

Sources push records over gRPC (``proto/sluice/v1/ingest.proto``) with
credit-based flow control; this package follows the whole contract (credit,
signals, acks, rejects, reconnect and resend, protocol versions 1 and 2) so
that a source is a few lines::

    import sluice

    with sluice.Source("http://127.0.0.1:50051", "my-source") as src:
        src.send({"id": 1, "status": "paid"})

:class:`Source` blocks; :class:`AsyncSource` is the same API for asyncio.
"""

from __future__ import annotations

from .aio import AsyncSource
from .errors import (
    AuthError,
    ClosedError,
    ConnectError,
    GaveUpError,
    PipelineNotFoundError,
    ProtocolError,
    RecordTooLargeError,
    RefusedError,
    SluiceError,
    TLSError,
    WindowFullError,
)
from .events import Connected, Disconnected, Event, Reject, RecordTooLarge, Signal, Summary
from .options import Options, Reconnect
from .records import Record, decode_record
from .source import Source

__version__ = "0.1.0"

__all__ = [
    "AsyncSource",
    "AuthError",
    "ClosedError",
    "ConnectError",
    "Connected",
    "Disconnected",
    "Event",
    "GaveUpError",
    "Options",
    "PipelineNotFoundError",
    "ProtocolError",
    "Reconnect",
    "Record",
    "RecordTooLarge",
    "RecordTooLargeError",
    "RefusedError",
    "Reject",
    "Signal",
    "SluiceError",
    "Source",
    "Summary",
    "TLSError",
    "WindowFullError",
    "decode_record",
]
