"""What a source tells its caller: events as they happen, and the summary
it ends with (the same numbers and line as ``sluice send``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ._proto import ingest_pb2 as pb

__all__ = [
    "Connected",
    "Disconnected",
    "Signal",
    "Reject",
    "RecordTooLarge",
    "Event",
    "Summary",
]


@dataclass(frozen=True)
class Connected:
    """A stream is open.

    Attributes:
        attempt: Failed attempts before this one (since the last ack).
        reconnect: Whether this is a reconnect (not the first connection).
        protocol_version: The version the engine serves on it (1 or 2).
        admitted_through_seq: ``Opened.admitted_through_seq``.
        acked_through_seq: ``Opened.acked_through_seq``.
    """

    attempt: int
    reconnect: bool
    protocol_version: int
    admitted_through_seq: int
    acked_through_seq: int

    def describe(self) -> Optional[str]:
        """A line like ``sluice send`` prints, or ``None`` for the first connection."""
        if not self.reconnect:
            return None
        return (
            f"reconnected (attempt {self.attempt}); engine admitted through seq "
            f"{self.admitted_through_seq}, acked through {self.acked_through_seq}"
        )


@dataclass(frozen=True)
class Disconnected:
    """The stream ended early (or a connection attempt failed); the source
    reconnects after ``retry_in`` seconds and resends what was not acked."""

    error: str
    retry_in: float

    def describe(self) -> str:
        """A line like ``sluice send`` prints."""
        return f"disconnected ({self.error}); reconnecting in {self.retry_in:.3f}s"


@dataclass(frozen=True)
class Signal:
    """A flow-control signal from the engine.

    Attributes:
        kind: ``"SLOW_DOWN"``, ``"PAUSE"`` or ``"RESUME"``.
        reason: ``"GLOBAL"``, ``"STAGE"``, ``"SOURCE"``, ``"MEMORY"``,
            ``"SHUTDOWN"``, ``"SINK"`` or ``"UNSPECIFIED"``.
        utilization: Of the level that caused it, 0.0–1.0.
        retry_after_ms: The engine's suggested wait (0: none).
        stage: The stage, for reasons STAGE and SINK.
        sink: The stalled sink, for reason SINK.
        target_records_per_second: For SLOW_DOWN, the rate at which the engine
            completes this source's records (records/s; 0 when unknown).
    """

    kind: str
    reason: str
    utilization: float
    retry_after_ms: int
    stage: str
    sink: str
    target_records_per_second: float

    @classmethod
    def of(cls, s: pb.Signal) -> "Signal":
        """The event for a ``Signal`` message."""
        return cls(
            kind=pb.SignalKind.Name(s.kind).removeprefix("SIGNAL_KIND_"),
            reason=pb.SignalReason.Name(s.reason).removeprefix("SIGNAL_REASON_"),
            utilization=s.utilization,
            retry_after_ms=s.retry_after_ms,
            stage=s.stage,
            sink=s.sink,
            target_records_per_second=s.target_records_per_second,
        )

    def describe(self) -> str:
        """A line like ``sluice send`` prints."""
        what = {
            "SINK": f"sink {self.sink!r} stalled (stage {self.stage!r})",
            "STAGE": f"stage {self.stage!r}",
            "GLOBAL": "global buffer",
            "SOURCE": "source buffer",
            "MEMORY": "memory gate",
            "SHUTDOWN": "engine shutting down",
        }.get(self.reason, "unspecified")
        after = f", retry after {self.retry_after_ms} ms" if self.retry_after_ms else ""
        return f"signal {self.kind}: {what} at {self.utilization * 100:.0f}%{after}"


@dataclass(frozen=True)
class Reject:
    """Records the engine did not admit (the source resends them).

    Attributes:
        first_seq: First sequence number not admitted.
        count: How many.
        reason: The ``RejectReason`` name without its prefix (``"NO_CREDIT"``…).
        message: The engine's detail.
        retry_after_ms: The engine's suggested wait (0: none).
    """

    first_seq: int
    count: int
    reason: str
    message: str
    retry_after_ms: int

    @classmethod
    def of(cls, r: pb.Reject) -> "Reject":
        """The event for a ``Reject`` message (or a batch outcome's reject)."""
        return cls(
            first_seq=r.first_seq,
            count=r.count,
            reason=pb.RejectReason.Name(r.reason).removeprefix("REJECT_REASON_"),
            message=r.message,
            retry_after_ms=r.retry_after_ms,
        )

    def describe(self) -> str:
        """A line like ``sluice send`` prints."""
        last = self.first_seq + self.count - 1
        return (
            f"reject seq {self.first_seq}..={last} ({self.count} records): "
            f"REJECT_REASON_{self.reason} {self.message}"
        )


@dataclass(frozen=True)
class RecordTooLarge:
    """A record the engine can never admit (``REJECT_REASON_RECORD_TOO_LARGE``):
    taken out of the stream, the records after it renumbered. The caller keeps
    it itself (its own dead letters).

    Attributes:
        seq: The sequence number it had.
        entry: Its encoded ``Record`` (parse with ``sluice.decode_record``).
        message: The engine's detail.
    """

    seq: int
    entry: bytes
    message: str

    def describe(self) -> str:
        """A line like ``sluice send`` prints."""
        return f"record seq {self.seq} is too large for the engine and was not sent ({self.message})"


#: Any event.
Event = Union[Connected, Disconnected, Signal, Reject, RecordTooLarge]


@dataclass(frozen=True)
class Summary:
    """The outcome of a source, returned by ``close()`` (and ``summary()``).

    Attributes:
        submitted: Records handed to ``send``.
        sent: Distinct records sent at least once.
        resent: Records sent again (after a reject or reconnect).
        acked: Records acked (and forgotten).
        acked_through: Highest sequence number up to which every record is acked.
        delivered: Committed by the sink (per engine process, from the last ``Ack``).
        dead_lettered: Written to dead letters (from the last ``Ack``).
        filtered: Filtered out by a transform (from the last ``Ack``).
        rejected: Records named in rejects (twice if rejected twice).
        too_large: Records taken out as never admissible.
        unacked: Records held, not acked, when the summary was taken.
        reconnects: Successful reconnects.
        slow_downs: ``SLOW_DOWN`` signals.
        pauses: ``PAUSE`` signals.
        resumes: ``RESUME`` signals.
        elapsed: Seconds from the start to the summary.
        protocol_version: The version of the last stream (1 or 2; 0 before any).
        error: What stopped the source early, if anything.
    """

    submitted: int
    sent: int
    resent: int
    acked: int
    acked_through: int
    delivered: int
    dead_lettered: int
    filtered: int
    rejected: int
    too_large: int
    unacked: int
    reconnects: int
    slow_downs: int
    pauses: int
    resumes: int
    elapsed: float
    protocol_version: int
    error: Optional[Exception] = None

    @property
    def is_complete(self) -> bool:
        """Everything handed to the source was acked and nothing failed."""
        return self.unacked == 0 and self.error is None

    def format(self) -> str:
        """The summary line of ``sluice send``."""
        rate = self.acked / self.elapsed if self.elapsed > 0 else 0.0
        out = (
            f"sent {self.sent} | acked {self.acked} | delivered {self.delivered} | "
            f"dead-lettered {self.dead_lettered} | filtered {self.filtered} | "
            f"rejected {self.rejected} | resent {self.resent} | reconnects {self.reconnects} | "
            f"elapsed {self.elapsed:.2f}s | {rate:.0f} records/s"
        )
        if self.unacked:
            out += f" | NOT ACKED {self.unacked}"
        if self.too_large:
            out += f" | too large {self.too_large}"
        if self.error is not None:
            out += f" | error: {self.error}"
        return out

    __str__ = format
