"""The sans-IO protocol core shared by :class:`~sluice.Source` and
:class:`~sluice.AsyncSource`.

:class:`Core` holds the window of unacked records and the state of the
current stream, and implements the whole contract of
``proto/sluice/v1/ingest.proto`` without doing any I/O:

- the drivers feed it what the engine sends (:meth:`Core.on_opened`,
  :meth:`Core.on_message`) and how streams end (:meth:`Core.on_stream_end`);
- they ask it what to write next (:meth:`Core.poll`), which answers with an
  action: bytes to write, a time to wait until, nothing for now, half-close,
  reopen, or fail;
- producers add records (:meth:`Core.add`) within the window's bounds
  (:meth:`Core.room`).

Version 1 and version 2 differ only here:

========================  ==================================  ==================================
                          version 1                           version 2
========================  ==================================  ==================================
batches                   ``first_seq``                       plus ``batch_id``, one ``BatchOutcome`` each
credit resync             ``Reject.credit``                   every ``BatchOutcome.credit``
rejects                   ``Reject`` messages                 inside the outcome
acks                      cumulative ``through_seq``          plus ``completed`` ranges (holes)
backlog / revoke          not sent / never received           ``Backlog`` when blocked, ``Release`` on ``Revoke``
reconnect                 resend after ``admitted_through``   plus ``Open.first_unacked_seq`` and ``Open.backlog``
========================  ==================================  ==================================

The core is not thread-safe: the sync driver calls it under one lock, the
async driver from one event loop.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_right
from collections import deque
from itertools import accumulate
from typing import Callable, Optional, Union, cast

from . import errors
from ._proto import ingest_pb2 as pb
from ._window import Window
from .events import Connected, Disconnected, Event, RecordTooLarge, Reject, Signal, Summary
from .options import Options
from .records import batch_message, varint

__all__ = ["Core", "SEND", "WAIT", "IDLE", "FINISH", "REOPEN", "FAIL", "End"]

# Actions of `Core.poll`: (kind, value).
SEND = 0  # value: bytes of one SourceMessage to write
WAIT = 1  # value: monotonic time before which nothing can be written
IDLE = 2  # nothing to write until something changes (records, a message)
FINISH = 3  # half-close the stream: everything is acked and the input closed
REOPEN = 4  # end this stream and open a new one at once (see `poll`)
FAIL = 5  # value: the error that stops the source

Action = tuple[int, Union[bytes, float, errors.SluiceError, None]]

#: Wait under SLOW_DOWN between batches when the signal suggests none.
DEFAULT_SLOW_DELAY = 0.020
#: Under PAUSE, wait before sending within held credit when none is suggested.
DEFAULT_PAUSE_DELAY = 0.250
#: Wait before resending after a reject that suggests none.
DEFAULT_REJECT_DELAY = 0.050
#: The engine's message size limit when `Opened` does not say.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Bytes of framing per record counted against the message size budget.
_FRAMING = 8

#: Status codes after which the source reconnects; any other is final.
RETRY_CODES = frozenset(
    {"UNAVAILABLE", "CANCELLED", "UNKNOWN", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL"}
)

#: How gRPC describes a failed TLS handshake (in an `UNAVAILABLE` status).
_TLS_FAILURE = re.compile(r"handshake failed|CERTIFICATE_VERIFY_FAILED|SSL_ERROR|TSI_", re.I)

_FOLLOWS = pb.REJECT_REASON_FOLLOWS_REJECT
_TOO_LARGE = pb.REJECT_REASON_RECORD_TOO_LARGE


class End:
    """What the driver does after a stream ended (:meth:`Core.on_stream_end`).

    Attributes:
        done: The source is finished (everything acked, input closed).
        retry_in: Seconds to wait before reconnecting (when not done and no error).
        error: The error that stops the source.
    """

    __slots__ = ("done", "retry_in", "error")

    def __init__(
        self, done: bool = False, retry_in: float = 0.0, error: Optional[errors.SluiceError] = None
    ) -> None:
        self.done = done
        self.retry_in = retry_in
        self.error = error


def _retry_after(ms: int, default: float) -> float:
    return ms / 1000.0 if ms else default


def _source_message(**body: object) -> bytes:
    return pb.SourceMessage(**body).SerializeToString()  # type: ignore[arg-type]


class Core:
    """The protocol state machine of one source (see the module docs).

    Args:
        addr: The engine address (for error messages).
        source_id: The source id.
        pipeline: The pipeline name ("" for the engine's default).
        options: The source's options.
        clock: Monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        addr: str,
        source_id: str,
        pipeline: str,
        options: Options,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not source_id:
            raise ValueError("source_id must not be empty")
        self.addr = addr
        self.source_id = source_id
        self.pipeline = pipeline
        self.opts = options
        self.clock = clock
        self.window = Window(options.first_seq or 1)
        self.started_at = clock()
        self.events: list[Event] = []
        #: Set once a first `Opened` arrived.
        self.started = False
        self.connected = False
        self.input_closed = False
        #: Callers waiting in `flush`: partial batches go out without linger.
        self.flushing = 0
        self.failure: Optional[errors.SluiceError] = None
        self.finished = False
        self.attempts = 0
        self._last_failure = ""
        # Counters of the summary.
        self.submitted = self.sent = self.resent = self.acked = 0
        self.delivered = self.dead_lettered = self.filtered = 0
        self.rejected = self.too_large = self.reconnects = 0
        self.slow_downs = self.pauses = self.resumes = 0
        self._highest_sent = self.window.front_seq - 1
        self._unsent_since = 0.0
        # Limits learned from the last `Opened` (kept across streams, for `add`).
        self.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self.max_record_bytes = 0
        self._reset_stream()

    # ------------------------------------------------------------------
    # Stream state

    def _reset_stream(self) -> None:
        self.version = 0
        self.cursor = self.window.front_seq
        self.credit_records = 0
        self.credit_bytes = 0
        self.max_credit_bytes = 0
        self.large_record_bytes = 0
        self.max_batch = self.opts.max_batch_records
        #: (batch_id, first, last, records charged, bytes charged), oldest
        #: first; a `Release` sent is an entry with the credit it gave back,
        #: between the batches sent before and after it.
        self.in_flight: deque[tuple[float, int, int, int, int]] = deque()
        self.next_batch_id = 1
        self.paused = False
        self.paused_until = 0.0
        self.slowed = False
        self.slow_delay = DEFAULT_SLOW_DELAY
        #: Under SLOW_DOWN: the rate at which the engine completes this
        #: source's records (records/s), 0 when unknown.
        self.slow_rate = 0.0
        self.not_before = 0.0
        self.control: deque[bytes] = deque()
        self.announced_backlog = 0
        self.half_closed = False

    def open_message(self) -> bytes:
        """The encoded ``Open`` of a new stream (version 2 fields included
        when version 2 is wanted; a version-1 engine ignores them)."""
        open_ = pb.Open(source_id=self.source_id, pipeline=self.pipeline)
        if self.opts.protocol_version >= 2:
            open_.protocol_version = 2
            if self.started or self.opts.first_seq is not None:
                open_.first_unacked_seq = self.window.front_seq
            unsent = len(self.window)
            if unsent:
                open_.backlog.records = unsent
                open_.backlog.bytes = self.window.held_bytes
        return _source_message(open=open_)

    def on_opened(self, o: pb.Opened) -> None:
        """The engine's ``Opened`` on a new stream."""
        self._reset_stream()
        w = self.window
        reconnect = self.started
        if not self.started:
            self.started = True
            if self.opts.first_seq is None and len(w) == 0:
                w.restart_at(o.admitted_through_seq + 1)
                self._highest_sent = o.admitted_through_seq
        else:
            self.reconnects += 1
        self.connected = True
        self.version = 2 if (o.protocol_version == 2 and self.opts.protocol_version >= 2) else 1
        c = o.credit
        self.credit_records, self.credit_bytes = c.records, c.bytes
        self.max_credit_bytes = max(c.bytes, o.window.bytes)
        if o.max_batch_records:
            self.max_batch = min(self.opts.max_batch_records, o.max_batch_records)
        self.max_message_bytes = o.max_message_bytes or DEFAULT_MAX_MESSAGE_BYTES
        self.max_record_bytes = o.max_record_bytes
        self.large_record_bytes = o.large_record_bytes
        self._absorb_ack(o.acked_through_seq)
        self.cursor = min(max(o.admitted_through_seq + 1, w.front_seq), w.next_seq)
        self._unsent_since = self.clock()
        self.events.append(
            Connected(self.attempts, reconnect, self.version, o.admitted_through_seq, o.acked_through_seq)
        )

    def on_stream_end(self, code: Optional[str], details: str) -> End:
        """A stream ended with gRPC status ``code`` (``None`` or ``"OK"``: the
        engine ended it normally). Returns what to do next."""
        self.connected = False
        if self.input_closed and self.window.held_records == 0:
            self.finished = True
            return End(done=True)
        if self.failure is not None:
            return End(error=self.failure)
        if code in (None, "OK"):
            reason = "engine ended the stream"
        elif code == "UNAVAILABLE" and _TLS_FAILURE.search(details):
            return End(error=self.fail(errors.TLSError(self.addr, f"{code}: {details}")))
        elif code in RETRY_CODES:
            reason = f"{code}: {details}"
        else:
            return End(error=self.fail(errors.refused(code, details)))
        self.attempts += 1
        if self.attempts > self.opts.reconnect.max_attempts:
            if not self.started:
                err: errors.SluiceError = errors.ConnectError(self.addr, reason)
            else:
                err = errors.GaveUpError(self.attempts - 1, reason)
            return End(error=self.fail(err))
        wait = self.opts.reconnect.backoff(self.attempts)
        self._last_failure = reason
        self.events.append(Disconnected(reason, wait))
        return End(retry_in=wait)

    def reopen(self) -> Optional[errors.SluiceError]:
        """The driver ended the stream for a ``REOPEN``; it opens the next one
        at once. Counted like a reconnect attempt (an engine that ignores
        ``first_unacked_seq`` would otherwise loop): returns the error once
        the attempts are used up."""
        self.connected = False
        self.attempts += 1
        if self.attempts > self.opts.reconnect.max_attempts:
            return self.fail(errors.GaveUpError(self.attempts - 1, "the engine does not resume after a hole"))
        return None

    def fail(self, error: errors.SluiceError) -> errors.SluiceError:
        """Stop the source with ``error`` (the first error wins); return the error in force."""
        if self.failure is None:
            self.failure = error
        return self.failure

    # ------------------------------------------------------------------
    # Producer side

    def validate(self, entries: list[bytes], sizes: list[int]) -> None:
        """Raise :class:`~sluice.RecordTooLargeError` if one of the records
        can never be admitted (by the limits of the last ``Opened``)."""
        if not sizes:
            return
        biggest = max(sizes)
        if self.max_record_bytes and biggest > self.max_record_bytes:
            raise errors.RecordTooLargeError(biggest, self.max_record_bytes, "max_record_bytes")
        longest = max(map(len, entries))
        if longest + 64 > self._message_budget():
            raise errors.RecordTooLargeError(longest, self.max_message_bytes, "max_message_bytes")

    def offer(self, entries: list[bytes], sizes: list[int], start: int) -> int:
        """Hold as many of ``entries[start:]`` as the window's bounds allow
        (at least one when the window is empty); return the index after the
        last one held (``start`` when none fits now)."""
        w, o = self.window, self.opts
        n = len(entries) - start
        k = min(n, o.max_unacked_records - w.held_records)
        total = 0
        if k > 0:
            seg = sizes if (start == 0 and k == n) else sizes[start : start + k]
            total = sum(seg)
            free = o.max_unacked_bytes - w.held_bytes
            if total > free:
                k = bisect_right(list(accumulate(seg)), free)
                total = sum(seg[:k])
        if k <= 0:
            if w.held_records:
                return start
            k, total = 1, sizes[start]
        if start == 0 and k == n:
            self._add(entries, sizes, total)
        else:
            self._add(entries[start : start + k], sizes[start : start + k], total)
        return start + k

    def _add(self, entries: list[bytes], sizes: list[int], total: int) -> None:
        w = self.window
        if self.cursor >= w.next_seq:
            self._unsent_since = self.clock()
        w.extend(entries, sizes, total)
        self.submitted += len(entries)

    def close_input(self) -> None:
        """No more records: send what is held without lingering, then half-close."""
        self.input_closed = True

    # ------------------------------------------------------------------
    # Engine messages

    def on_message(self, m: pb.EngineMessage) -> None:
        """Handle one message from the engine (after ``Opened``)."""
        kind = m.WhichOneof("body")
        if kind == "ack":
            self._on_ack(m.ack)
        elif kind == "credit":
            self.credit_records += m.credit.records
            self.credit_bytes += m.credit.bytes
            self.max_credit_bytes = max(self.max_credit_bytes, self.credit_bytes)
            self.paused = False
        elif kind == "outcome":
            self._on_outcome(m.outcome)
        elif kind == "signal":
            self._on_signal(m.signal)
        elif kind == "reject":
            self._on_reject_v1(m.reject)
        elif kind == "revoke":
            self._on_revoke(m.revoke)
        # A second `Opened` or an empty message is ignored.

    def _absorb_ack(self, through: int) -> None:
        n = self.window.ack_through(min(through, self.window.next_seq - 1))
        if n:
            self.acked += n
            self.attempts = 0

    def _on_ack(self, a: pb.Ack) -> None:
        self._absorb_ack(a.through_seq)
        if self.version == 2:
            for r in a.completed:
                n = self.window.complete(r.first, r.last)
                if n:
                    self.acked += n
                    self.attempts = 0
        else:
            # Version 1: a batch wholly acked was answered.
            acked = self.window.front_seq - 1
            while self.in_flight and self.in_flight[0][2] <= acked:
                self.in_flight.popleft()
        self.delivered, self.dead_lettered, self.filtered = a.delivered, a.dead_lettered, a.filtered

    def _on_signal(self, s: pb.Signal) -> None:
        now = self.clock()
        if s.kind == pb.SIGNAL_KIND_SLOW_DOWN:
            self.slowed = True
            self.slow_delay = _retry_after(s.retry_after_ms, DEFAULT_SLOW_DELAY)
            self.slow_rate = s.target_records_per_second
            self.slow_downs += 1
        elif s.kind == pb.SIGNAL_KIND_PAUSE:
            self.paused = True
            self.paused_until = now + _retry_after(s.retry_after_ms, DEFAULT_PAUSE_DELAY)
            self.pauses += 1
        elif s.kind == pb.SIGNAL_KIND_RESUME:
            self.paused = self.slowed = False
            self.not_before = 0.0
            self.resumes += 1
        else:
            return
        self.events.append(Signal.of(s))

    def _sync_credit(self, credit: pb.Credit) -> None:
        """Set the credit to the engine's authoritative count, minus what the
        batches still in flight (sent after the one answered) were charged."""
        recs = sum(b[3] for b in self.in_flight)
        nbytes = sum(b[4] for b in self.in_flight)
        self.credit_records = max(0, credit.records - recs)
        self.credit_bytes = max(0, credit.bytes - nbytes)
        self.max_credit_bytes = max(self.max_credit_bytes, credit.bytes)

    def _on_reject_v1(self, r: pb.Reject) -> None:
        last = r.first_seq + r.count - 1
        found = None
        for i, b in enumerate(self.in_flight):
            if b[2] == last and b[1] <= r.first_seq:
                found = i
                break
        if found is not None:
            for _ in range(found + 1):
                self.in_flight.popleft()
        if r.HasField("credit"):
            if found is None:
                self.credit_records, self.credit_bytes = r.credit.records, r.credit.bytes
            else:
                self._sync_credit(r.credit)
        else:
            # Engines that predate `Reject.credit`: give the charge back.
            sizes = self.window.sizes(max(r.first_seq, self.window.front_seq), r.count)
            self.credit_records += len(sizes)
            self.credit_bytes += sum(sizes)
        primary = r.first_seq == r.admitted_through_seq + 1
        self._reject(r, rewind=primary)

    def _on_outcome(self, o: pb.BatchOutcome) -> None:
        while self.in_flight:
            b = self.in_flight.popleft()
            if b[0] >= o.batch_id:
                break
        if o.HasField("credit"):
            self._sync_credit(o.credit)
        if o.HasField("reject") and o.reject.count:
            self._reject(o.reject, rewind=o.reject.reason != _FOLLOWS)

    def _reject(self, r: pb.Reject, rewind: bool) -> None:
        self.rejected += r.count
        w = self.window
        if rewind and w.front_seq <= r.first_seq < w.next_seq:
            if r.reason == _TOO_LARGE:
                entry, _ = w.take_out(r.first_seq)
                self.too_large += 1
                if self._highest_sent >= r.first_seq:
                    self._highest_sent -= 1
                self.events.append(RecordTooLarge(r.first_seq, entry, r.message))
                self.cursor = r.first_seq
            else:
                self.not_before = self.clock() + _retry_after(r.retry_after_ms, DEFAULT_REJECT_DELAY)
                resume = r.admitted_through_seq + 1 if r.admitted_through_seq else r.first_seq
                self.cursor = min(max(resume, w.front_seq), w.next_seq)
        self.events.append(Reject.of(r))

    def _on_revoke(self, r: pb.Revoke) -> None:
        records = min(r.records, self.credit_records)
        nbytes = min(r.bytes, self.credit_bytes)
        self.credit_records -= records
        self.credit_bytes -= nbytes
        # Until the engine reads the release, its counts (in outcomes of
        # batches sent before) still include the released credit: the
        # release waits in `in_flight`, after the last batch sent.
        self.in_flight.append((self.next_batch_id - 0.5, 0, 0, records, nbytes))  # type: ignore[arg-type]
        self.control.append(
            _source_message(release=pb.Release(revoke_id=r.revoke_id, records=records, bytes=nbytes))
        )
        # Ask again for what is still waiting.
        self.announced_backlog = 0

    # ------------------------------------------------------------------
    # What to write next

    def _message_budget(self) -> int:
        return self.max_message_bytes // 10 * 9 - 64

    def _backlog(self, unsent: int) -> Optional[bytes]:
        """A ``Backlog`` announcing ``unsent`` records, when worth sending
        (version 2 only: the first time, or when it changed by half)."""
        if self.version != 2:
            return None
        last = self.announced_backlog
        if unsent == last or (last and unsent and last // 2 < unsent < last * 2):
            return None
        self.announced_backlog = unsent
        nbytes = 0
        if unsent:
            nbytes = sum(self.window.sizes(self.cursor, unsent))
        return _source_message(backlog=pb.Backlog(records=unsent, bytes=nbytes))

    def poll(self, now: float) -> Action:
        """What the writer of the current stream does next (see the actions above).

        ``REOPEN`` comes after a reconnect to an engine that did not admit
        records which another engine (or the same one before a restart)
        completed out of order (version 2 selective acks): the window has a
        hole there, and batches must be contiguous. Once everything before
        the hole is acked, a new stream resumes after it
        (``Open.first_unacked_seq``).
        """
        if self.failure is not None:
            return FAIL, self.failure
        if not self.connected or self.half_closed:
            return IDLE, None
        if self.control:
            return SEND, self.control.popleft()
        w = self.window
        if self.input_closed and w.held_records == 0:
            self.half_closed = True
            return FINISH, None
        if self.cursor < w.front_seq:
            # The engine expects records that were completed out of order
            # elsewhere (see above): resume after them on a new stream.
            return REOPEN, None
        unsent = w.next_seq - self.cursor
        if unsent <= 0:
            msg = self._backlog(0) if self.announced_backlog else None
            return (SEND, msg) if msg else (IDLE, None)
        if self.paused and now < self.paused_until:
            return WAIT, self.paused_until
        if self.not_before:
            if now < self.not_before:
                return WAIT, self.not_before
            self.not_before = 0.0
        target = max(1, self.max_batch // 4) if self.slowed else self.max_batch
        if unsent < target and not self.input_closed and not self.flushing:
            due = self._unsent_since + self.opts.linger
            if now < due:
                return WAIT, due
        first = self.cursor
        held = w.entries(first, min(target, unsent))
        if held[0] is None:
            # A hole at the cursor (see above): wait for what is before it.
            return IDLE, None
        if None in held:
            held = held[: held.index(None)]
        entries = cast("list[bytes]", held)
        n = min(len(entries), self.credit_records)
        sizes = w.sizes(first, n)
        nbytes = sum(sizes)
        if nbytes > self.credit_bytes:
            n = bisect_right(list(accumulate(sizes)), self.credit_bytes)
            nbytes = sum(sizes[:n])
        budget = self._message_budget()
        if n and sum(map(len, entries[:n])) + _FRAMING * n > budget:
            lens = accumulate(len(e) + _FRAMING for e in entries[:n])
            n = bisect_right(list(lens), budget)
            nbytes = sum(sizes[:n])
        if n == 0:
            size = w.size_at(first)
            entry_len = len(entries[0])
            if entry_len + 64 > budget:
                return FAIL, self.fail(
                    errors.RecordTooLargeError(entry_len, self.max_message_bytes, "max_message_bytes")
                )
            large = self.large_record_bytes or self.max_credit_bytes // 2
            if self.credit_records and size > self.credit_bytes and size > large:
                # The large-record rule: alone, on one record credit and all
                # the byte credit held.
                n, nbytes = 1, min(size, self.credit_bytes)
            else:
                msg = self._backlog(unsent)
                return (SEND, msg) if msg else (IDLE, None)
        bid = 0
        if self.version == 2:
            bid = self.next_batch_id
            self.next_batch_id += 1
        last = first + n - 1
        msg = batch_message(first, entries[:n], bid)
        self.credit_records -= n
        charged = min(nbytes, self.credit_bytes)
        self.credit_bytes -= charged
        self.in_flight.append((bid, first, last, n, charged))
        fresh = max(0, last - max(self._highest_sent, first - 1))
        self.sent += fresh
        self.resent += n - fresh
        self._highest_sent = max(self._highest_sent, last)
        self.cursor = last + 1
        if self.slowed:
            # Space batches by the suggested wait, and keep below the rate
            # at which the pipeline drains when the signal says it.
            delay = self.slow_delay
            if self.slow_rate > 0:
                delay = max(delay, n / self.slow_rate)
            self.not_before = now + delay
        if self.cursor < w.next_seq:
            self._unsent_since = now
        return SEND, msg

    # ------------------------------------------------------------------
    # Reporting

    def take_events(self) -> list[Event]:
        """The events since the last call (the caller dispatches them)."""
        ev = self.events
        if ev:
            self.events = []
        return ev

    def summary(self) -> Summary:
        """The summary so far."""
        return Summary(
            submitted=self.submitted,
            sent=self.sent,
            resent=self.resent,
            acked=self.acked,
            acked_through=self.window.front_seq - 1,
            delivered=self.delivered,
            dead_lettered=self.dead_lettered,
            filtered=self.filtered,
            rejected=self.rejected,
            too_large=self.too_large,
            unacked=self.window.held_records,
            reconnects=self.reconnects,
            slow_downs=self.slow_downs,
            pauses=self.pauses,
            resumes=self.resumes,
            elapsed=self.clock() - self.started_at,
            protocol_version=self.version,
            error=self.failure,
        )


__all__ += ["varint", "RETRY_CODES"]
