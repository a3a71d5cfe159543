"""The blocking source: :class:`Source`.

One background thread per source runs the streams (connect, read the
engine's messages, reconnect with backoff); gRPC's own thread writes the
requests, taken from the protocol core (:mod:`sluice._core`). The caller's
threads only encode records and put them into the window, waiting while it is
full. One lock (a :class:`threading.Condition`) guards the core.
"""

from __future__ import annotations

import threading
import time
from itertools import islice
from typing import Callable, ContextManager, Iterable, Iterator, Optional

import grpc

from . import _transport as transport
from ._base import CHUNK, SourceBase
from ._core import FAIL, FINISH, IDLE, REOPEN, SEND, WAIT
from ._proto import ingest_pb2 as pb
from .errors import ProtocolError, SluiceError, WindowFullError
from .events import Event, Summary
from .options import Options
from .records import RecordLike, encode, encode_many

__all__ = ["Source"]

_UNSET: float = -1.0


class _Stream:
    """One stream's flags, shared by its reader and its request iterator."""

    __slots__ = ("call", "stop", "reopen", "timed_out", "closing", "timer")

    def __init__(self) -> None:
        self.call: Optional[grpc.Call] = None
        self.stop = False
        self.reopen = False
        self.timed_out = False
        self.closing = False
        self.timer: Optional[threading.Timer] = None

    def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()  # type: ignore[attr-defined]


class Source(SourceBase):
    """A sluice source that blocks: records in, flow control handled.

    Connects on construction (retrying transient failures by the reconnect
    policy) and raises if the engine refuses the source, for example
    :class:`~sluice.PipelineNotFoundError` or :class:`~sluice.AuthError`::

        with Source("http://127.0.0.1:50051", "orders") as src:
            src.send({"id": 1})
            src.send_many(b"line %d" % i for i in range(1000))
        # leaving the block flushed and closed it; src.summary() tells how it went

    Several threads may send on one source at once (records keep the order
    of the calls). Close it (or use it as a context manager): its thread
    holds unacked records until then.

    Args:
        addr: Engine address, ``http://host:port`` or ``https://host:port``.
        source_id: Stable identity of the source (sequence numbers, acks and
            credit are per source id).
        pipeline: Pipeline name; "" selects the engine's default.
        options: The options; keyword arguments override its fields.
        on_event: Called with each :class:`~sluice.Event` (signals, rejects,
            reconnects, records taken out), from the source's thread; keep it
            short. Events are also kept for :meth:`drain_events`.
        **overrides: Fields of :class:`~sluice.Options`.
    """

    def __init__(
        self,
        addr: str,
        source_id: str,
        pipeline: str = "",
        *,
        options: Optional[Options] = None,
        on_event: Optional[Callable[[Event], None]] = None,
        **overrides: object,
    ) -> None:
        self._cond = threading.Condition()  # an RLock inside: `_guard` nests
        super().__init__(addr, source_id, pipeline, options, on_event, overrides)
        self._stream: Optional[_Stream] = None
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sluice-source-{source_id}", daemon=True)
        self._thread.start()
        with self._cond:
            while not self._core.started and self._core.failure is None:
                self._cond.wait()
            failure = self._core.failure
        if failure is not None:
            self._thread.join()
            raise failure

    def _guard(self) -> ContextManager[object]:
        return self._cond

    # ------------------------------------------------------------------
    # Public API

    def send(self, record: RecordLike, timeout: Optional[float] = _UNSET) -> None:
        """Hold one record for sending; waits while the unacked window is full.

        Args:
            record: A :class:`~sluice.Record`, or a payload (bytes, str,
                JSON-serialisable dict or list).
            timeout: Most seconds to wait for room (default: the
                ``send_timeout`` option; ``None`` waits forever).

        Raises:
            WindowFullError: No room within the timeout.
            RecordTooLargeError: The engine can never admit the record.
            ClosedError: After :meth:`close`.
            SluiceError: The error that stopped the source.
        """
        entry, size = encode(record)
        self._put([entry], [size], timeout)

    def send_many(self, records: Iterable[RecordLike], timeout: Optional[float] = _UNSET) -> None:
        """Hold many records for sending, in order: the fast path (one
        encoding pass, one lock round trip while the window has room).
        Waits as :meth:`send` does; on an error, the records before the one
        that did not fit are held and will be sent. A list or tuple is taken
        at once; any other iterable in chunks of 10 000 records."""
        if isinstance(records, (list, tuple)):
            entries, sizes = encode_many(records)
            self._put(entries, sizes, timeout)
            return
        # An iterator is taken in chunks, so that a long one is never all in memory.
        it = iter(records)
        while chunk := list(islice(it, CHUNK)):
            entries, sizes = encode_many(chunk)
            self._put(entries, sizes, timeout)

    def flush(self, timeout: Optional[float] = None) -> None:
        """Send what is held at once and wait until all of it is acked.

        Raises:
            TimeoutError: Not all acked within ``timeout`` seconds.
            SluiceError: The error that stopped the source.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._core
        with self._cond:
            core.flushing += 1
            self._cond.notify_all()
            try:
                while self._unflushed():
                    if not self._wait(deadline):
                        raise TimeoutError(
                            f"flush: {core.window.held_records} records not acked within {timeout} s"
                        )
            finally:
                core.flushing -= 1
            if core.failure is not None:
                raise core.failure

    def close(self, timeout: Optional[float] = None) -> Summary:
        """Send what is held, wait for every ack, end the stream and return the summary.

        Args:
            timeout: Most seconds to wait; then the stream is cancelled and
                the summary counts what was not acked.

        Raises:
            SluiceError: The error that stopped the source (its ``summary``
                attribute holds the summary).
        """
        with self._cond:
            self._begin_close()
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._timed_out_closing(timeout)
                self._abort.set()
                if self._stream is not None:
                    self._stream.cancel()
                self._cond.notify_all()
            self._thread.join()
        return self._end_close()

    def __enter__(self) -> "Source":
        """The source itself (it is connected already)."""
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """:meth:`close`; after an exception in the block, within ``close_timeout``
        and without raising over it."""
        if exc_type is None:
            self.close()
        else:
            try:
                self.close(timeout=self._opts.close_timeout)
            except SluiceError:
                pass  # the exception of the block wins

    # ------------------------------------------------------------------
    # Producer side

    def _wait(self, deadline: Optional[float]) -> bool:
        """Wait for a change (lock held); False once ``deadline`` passed."""
        if deadline is None:
            self._cond.wait()
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self._cond.wait(left)
        return True

    def _put(self, entries: list[bytes], sizes: list[int], timeout: Optional[float]) -> None:
        if not entries:
            return
        core = self._core
        core.validate(entries, sizes)
        if timeout == _UNSET:
            timeout = self._opts.send_timeout
        deadline = None
        start = 0
        with self._cond:
            while True:
                nxt = self._step(entries, sizes, start)
                if nxt != start:
                    self._cond.notify_all()
                    start = nxt
                    if start == len(entries):
                        return
                    continue
                if deadline is None and timeout is not None:
                    deadline = time.monotonic() + timeout
                if not self._wait(deadline):
                    w = core.window
                    raise WindowFullError(timeout or 0.0, w.held_records, w.held_bytes)

    # ------------------------------------------------------------------
    # The source's thread

    def _run(self) -> None:
        core, cond = self._core, self._cond
        while True:
            try:
                code, details, reopen = self._serve()
            except Exception as e:  # noqa: BLE001 - a bug must stop the source, not hang it
                with cond:
                    core.fail(SluiceError(f"internal error in the source's thread: {e!r}"))
                    self._stopped = True
                    cond.notify_all()
                return
            with cond:
                if reopen and core.failure is None and core.reopen() is None:
                    continue
                end = core.on_stream_end(code, details)
                if end.done or end.error is not None:
                    self._stopped = True
                cond.notify_all()
                events = core.take_events()
            self._deliver(events)
            if end.done or end.error is not None:
                return
            if self._abort.wait(end.retry_in):
                return

    def _serve(self) -> tuple[Optional[str], str, bool]:
        """Open one stream and serve it to its end: (status code, details, reopen)."""
        core, cond, opts = self._core, self._cond, self._opts
        target, tls = transport.target(self._addr)
        options = transport.channel_options(opts)
        if tls:
            channel = grpc.secure_channel(target, transport.credentials(opts), options)
        else:
            channel = grpc.insecure_channel(target, options)
        stream = _Stream()
        with cond:
            self._stream = stream
            open_msg = core.open_message()
        try:
            rpc = channel.stream_stream(
                transport.METHOD,
                request_serializer=None,
                response_deserializer=pb.EngineMessage.FromString,
            )
            call = rpc(self._requests(stream, open_msg), metadata=transport.metadata(opts))
            stream.call = call
            timer = threading.Timer(opts.connect_timeout, self._open_timed_out, (stream,))
            timer.daemon = True
            timer.start()
            stream.timer = timer
            first = True
            for m in call:
                with cond:
                    if first:
                        first = False
                        timer.cancel()
                        if m.WhichOneof("body") != "opened":
                            core.fail(ProtocolError(f"first message from the engine is not Opened: {m}"))
                            cond.notify_all()
                            stream.cancel()
                            break
                        core.on_opened(m.opened)
                    else:
                        core.on_message(m)
                    cond.notify_all()
                    events = core.take_events()
                if events:
                    self._deliver(events)
            return "OK", "", stream.reopen
        except grpc.RpcError as e:
            code = transport.status_name(e.code())  # type: ignore[attr-defined]
            details = e.details() or ""  # type: ignore[attr-defined]
            if stream.timed_out:
                code, details = "DEADLINE_EXCEEDED", f"no Opened within {opts.connect_timeout} s"
            return code, details, stream.reopen
        finally:
            if stream.timer is not None:
                stream.timer.cancel()
            with cond:
                stream.stop = True
                self._stream = None
                cond.notify_all()
            channel.close()

    def _open_timed_out(self, stream: _Stream) -> None:
        stream.timed_out = True
        stream.cancel()

    def _requests(self, stream: _Stream, open_msg: bytes) -> Iterator[bytes]:
        """The request stream: ``Open``, then what the core says to write."""
        yield open_msg
        core, cond = self._core, self._cond
        clock = core.clock
        while True:
            with cond:
                while True:
                    if stream.stop:
                        return
                    now = clock()
                    kind, value = core.poll(now)
                    if kind == SEND:
                        break
                    if kind == WAIT:
                        cond.wait(max(0.0, value - now))  # type: ignore[operator]
                    elif kind == IDLE:
                        cond.wait(0.5)
                    elif kind == FINISH:
                        timer = threading.Timer(self._opts.close_timeout, stream.cancel)
                        timer.daemon = True
                        timer.start()
                        stream.timer = timer
                        return
                    elif kind == REOPEN:
                        stream.reopen = True
                        stream.cancel()
                        return
                    elif kind == FAIL:
                        cond.notify_all()
                        stream.cancel()
                        return
            yield value  # type: ignore[misc]
