"""The asyncio source: :class:`AsyncSource`, the same API as
:class:`~sluice.Source` with coroutines.

Everything runs on the caller's event loop: one task serves the streams
(connect, read, reconnect with backoff), one writes each stream's requests,
both driving the same protocol core (:mod:`sluice._core`) as the blocking
source. Waiters (producers for room, flushers, the writer) wait for a
change of the core through :class:`_Changes`.
"""

from __future__ import annotations

import asyncio
import time
from itertools import islice
from typing import AsyncIterable, Callable, Iterable, Optional, Union

import grpc
import grpc.aio

from . import _transport as transport
from ._base import CHUNK, SourceBase
from ._core import FAIL, FINISH, IDLE, REOPEN, SEND, WAIT
from ._proto import ingest_pb2 as pb
from .errors import ProtocolError, SluiceError, WindowFullError
from .events import Event, Summary
from .options import Options
from .records import RecordLike, encode, encode_many

__all__ = ["AsyncSource"]

_UNSET: float = -1.0


class _Changes:
    """Wakes every waiter when the core changed: a future per round."""

    def __init__(self) -> None:
        self._fut: Optional[asyncio.Future[None]] = None

    def notify(self) -> None:
        """Wake everyone waiting now."""
        fut, self._fut = self._fut, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, timeout: Optional[float]) -> None:
        """Wait for the next change, at most ``timeout`` seconds."""
        if self._fut is None:
            self._fut = asyncio.get_running_loop().create_future()
        fut = self._fut
        if timeout is None:
            await asyncio.shield(fut)
        else:
            await asyncio.wait((fut,), timeout=max(0.0, timeout))


class AsyncSource(SourceBase):
    """A sluice source for asyncio; see :class:`~sluice.Source` for the
    arguments. Connect with ``await AsyncSource.connect(...)`` or
    ``async with AsyncSource(...) as src``::

        async with AsyncSource("http://127.0.0.1:50051", "orders") as src:
            await src.send({"id": 1})
            await src.send_many([b"a", b"b"])
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
        super().__init__(addr, source_id, pipeline, options, on_event, overrides)
        self._changes = _Changes()
        self._task: Optional[asyncio.Task[None]] = None
        self._call: Optional[grpc.aio.StreamStreamCall] = None

    @classmethod
    async def connect(
        cls, addr: str, source_id: str, pipeline: str = "", **kwargs: object
    ) -> "AsyncSource":
        """Create a source and connect it (see :meth:`start`)."""
        src = cls(addr, source_id, pipeline, **kwargs)  # type: ignore[arg-type]
        await src.start()
        return src

    async def start(self) -> None:
        """Connect: return once the first stream is open; raise if the engine
        refuses the source or cannot be reached within the reconnect policy."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        core = self._core
        while not core.started and core.failure is None:
            await self._changes.wait(None)
        if core.failure is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            raise core.failure

    # ------------------------------------------------------------------
    # Public API

    async def send(self, record: RecordLike, timeout: Optional[float] = _UNSET) -> None:
        """Hold one record for sending; see :meth:`Source.send <sluice.Source.send>`."""
        entry, size = encode(record)
        await self._put([entry], [size], timeout)

    async def send_many(
        self,
        records: Union[Iterable[RecordLike], AsyncIterable[RecordLike]],
        timeout: Optional[float] = _UNSET,
    ) -> None:
        """Hold many records, in order; see :meth:`Source.send_many <sluice.Source.send_many>`."""
        if isinstance(records, (list, tuple)):
            entries, sizes = encode_many(records)
            await self._put(entries, sizes, timeout)
            return
        # Iterators are taken in chunks, so that a long one is never all in memory.
        chunk: list[RecordLike] = []
        if hasattr(records, "__aiter__"):
            async for r in records:  # type: ignore[union-attr]
                chunk.append(r)
                if len(chunk) >= CHUNK:
                    await self._put(*encode_many(chunk), timeout)
                    chunk = []
        else:
            it = iter(records)  # type: ignore[arg-type]
            while chunk := list(islice(it, CHUNK)):
                await self._put(*encode_many(chunk), timeout)
            return
        if chunk:
            await self._put(*encode_many(chunk), timeout)

    async def flush(self, timeout: Optional[float] = None) -> None:
        """Send what is held at once and wait until all of it is acked;
        see :meth:`Source.flush <sluice.Source.flush>`."""
        core = self._core
        deadline = None if timeout is None else time.monotonic() + timeout
        core.flushing += 1
        self._changes.notify()
        try:
            while self._unflushed():
                if not await self._wait(deadline):
                    raise TimeoutError(
                        f"flush: {core.window.held_records} records not acked within {timeout} s"
                    )
        finally:
            core.flushing -= 1
        if core.failure is not None:
            raise core.failure

    async def close(self, timeout: Optional[float] = None) -> Summary:
        """Send what is held, wait for every ack, end the stream and return
        the summary; see :meth:`Source.close <sluice.Source.close>`."""
        self._begin_close()
        self._changes.notify()
        if self._task is not None:
            done, _ = await asyncio.wait((self._task,), timeout=timeout)
            if not done:
                self._timed_out_closing(timeout)
                if self._call is not None:
                    self._call.cancel()
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        return self._end_close()

    async def __aenter__(self) -> "AsyncSource":
        """:meth:`start`, then the source itself."""
        await self.start()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        """:meth:`close`; after an exception in the block, within ``close_timeout``
        and without raising over it."""
        if exc_type is None:
            await self.close()
        else:
            try:
                await self.close(timeout=self._opts.close_timeout)
            except SluiceError:
                pass  # the exception of the block wins

    # ------------------------------------------------------------------
    # Producer side

    async def _wait(self, deadline: Optional[float]) -> bool:
        if deadline is None:
            await self._changes.wait(None)
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await self._changes.wait(left)
        return True

    async def _put(self, entries: list[bytes], sizes: list[int], timeout: Optional[float]) -> None:
        if not entries:
            return
        if self._task is None:
            await self.start()
        core = self._core
        core.validate(entries, sizes)
        if timeout == _UNSET:
            timeout = self._opts.send_timeout
        deadline = None
        start = 0
        while True:
            nxt = self._step(entries, sizes, start)
            if nxt != start:
                self._changes.notify()
                start = nxt
                if start == len(entries):
                    return
                continue
            if deadline is None and timeout is not None:
                deadline = time.monotonic() + timeout
            if not await self._wait(deadline):
                w = core.window
                raise WindowFullError(timeout or 0.0, w.held_records, w.held_bytes)

    # ------------------------------------------------------------------
    # The streams

    def _dispatch(self) -> None:
        self._deliver(self._core.take_events())

    async def _run(self) -> None:
        core = self._core
        try:
            while True:
                code, details, reopen = await self._serve()
                if reopen and core.failure is None and core.reopen() is None:
                    continue
                end = core.on_stream_end(code, details)
                self._dispatch()
                if end.done or end.error is not None:
                    return
                self._changes.notify()
                await asyncio.sleep(end.retry_in)
        except Exception as e:  # noqa: BLE001 - a bug must stop the source, not hang it
            core.fail(SluiceError(f"internal error in the source's task: {e!r}"))
        finally:
            self._stopped = True
            self._changes.notify()

    async def _serve(self) -> tuple[Optional[str], str, bool]:
        core, opts = self._core, self._opts
        target, tls = transport.target(self._addr)
        options = transport.channel_options(opts)
        if tls:
            channel = grpc.aio.secure_channel(target, transport.credentials(opts), options)
        else:
            channel = grpc.aio.insecure_channel(target, options)
        flags = {"reopen": False, "stop": False}
        writer: Optional[asyncio.Task[None]] = None
        try:
            rpc = channel.stream_stream(
                transport.METHOD,
                request_serializer=None,
                response_deserializer=pb.EngineMessage.FromString,
            )
            call = rpc(metadata=transport.metadata(opts))
            self._call = call
            await call.write(core.open_message())
            try:
                first = await asyncio.wait_for(call.read(), opts.connect_timeout)
            except asyncio.TimeoutError:
                call.cancel()
                return "DEADLINE_EXCEEDED", f"no Opened within {opts.connect_timeout} s", False
            if first is grpc.aio.EOF:
                return transport.status_name(await call.code()), await call.details() or "", False
            if first.WhichOneof("body") != "opened":
                core.fail(ProtocolError(f"first message from the engine is not Opened: {first}"))
                call.cancel()
                return "CANCELLED", "", False
            core.on_opened(first.opened)
            self._dispatch()
            self._changes.notify()
            writer = asyncio.get_running_loop().create_task(self._write(call, flags))
            while True:
                m = await call.read()
                if m is grpc.aio.EOF:
                    break
                core.on_message(m)
                self._dispatch()
                self._changes.notify()
            return transport.status_name(await call.code()), await call.details() or "", flags["reopen"]
        except grpc.aio.AioRpcError as e:
            return transport.status_name(e.code()), e.details() or "", flags["reopen"]
        except asyncio.CancelledError:
            if self._call is not None and self._call.cancelled():
                return "CANCELLED", "", flags["reopen"]
            raise
        finally:
            flags["stop"] = True
            self._changes.notify()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            self._call = None
            await channel.close()

    async def _write(self, call: grpc.aio.StreamStreamCall, flags: dict[str, bool]) -> None:
        """The request side of one stream: what the core says to write."""
        core = self._core
        clock = core.clock
        while not flags["stop"]:
            now = clock()
            kind, value = core.poll(now)
            if kind == SEND:
                await call.write(value)
            elif kind == WAIT:
                await self._changes.wait(value - now)  # type: ignore[operator]
            elif kind == IDLE:
                await self._changes.wait(None)
            elif kind == FINISH:
                await call.done_writing()
                await asyncio.sleep(self._opts.close_timeout)
                call.cancel()
                return
            elif kind == REOPEN:
                flags["reopen"] = True
                call.cancel()
                return
            elif kind == FAIL:
                call.cancel()
                return
