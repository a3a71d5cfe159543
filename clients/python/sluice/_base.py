"""What :class:`~sluice.Source` and :class:`~sluice.AsyncSource` share that
is not I/O: options, the protocol core, events, the producer's step into the
window, and the end of ``close``. The drivers add only how they wait and
how they talk to gRPC."""

from __future__ import annotations

from collections import deque
from contextlib import nullcontext
from typing import Callable, ContextManager, Optional

from ._core import Core
from .errors import ClosedError
from .events import Event, Summary
from .options import Options

__all__ = ["SourceBase", "EVENT_BUFFER", "CHUNK"]

#: Events kept for `drain_events` (the oldest are dropped beyond it).
EVENT_BUFFER = 10_000
#: Records taken at a time from an iterator given to `send_many`.
CHUNK = 10_000


class SourceBase:
    """The shared, I/O-free half of a source (see the module docs)."""

    def __init__(
        self,
        addr: str,
        source_id: str,
        pipeline: str,
        options: Optional[Options],
        on_event: Optional[Callable[[Event], None]],
        overrides: dict[str, object],
    ) -> None:
        opts = options or Options()
        if overrides:
            opts = Options(**{**opts.__dict__, **overrides})  # type: ignore[arg-type]
        self._opts = opts
        self._addr = addr
        self._core = Core(addr, source_id, pipeline, opts)
        self._on_event = on_event
        self._events: deque[Event] = deque(maxlen=EVENT_BUFFER)
        self._closed = False
        self._stopped = False

    def _guard(self) -> ContextManager[object]:
        """The lock around the core (none for asyncio)."""
        return nullcontext()

    @property
    def source_id(self) -> str:
        """The source id."""
        return self._core.source_id

    @property
    def protocol_version(self) -> int:
        """The protocol version of the current (or last) stream: 1 or 2."""
        return self._core.version

    def summary(self) -> Summary:
        """The summary so far (also while running)."""
        with self._guard():
            return self._core.summary()

    def drain_events(self) -> list[Event]:
        """The events since the last call (at most the last 10 000), oldest first."""
        with self._guard():
            out = list(self._events)
            self._events.clear()
        return out

    def _deliver(self, events: list[Event]) -> None:
        """Keep ``events`` and hand them to the callback (called without the lock)."""
        if not events:
            return
        with self._guard():
            self._events.extend(events)
        if self._on_event is not None:
            for e in events:
                try:
                    self._on_event(e)
                except Exception:  # noqa: BLE001 - a callback must not stop the source
                    pass

    def _step(self, entries: list[bytes], sizes: list[int], start: int) -> int:
        """One producer step (lock held): hold what fits of ``entries[start:]``
        and return the index after it; raise if the source cannot take records."""
        if self._closed:
            raise ClosedError()
        if self._core.failure is not None:
            raise self._core.failure
        return self._core.offer(entries, sizes, start)

    def _unflushed(self) -> bool:
        """Records are held and the source is still working on them (lock held)."""
        core = self._core
        return bool(core.window.held_records) and core.failure is None and not self._stopped

    def _begin_close(self) -> None:
        """The first step of ``close`` (lock held): no more input."""
        if not self._closed:
            self._closed = True
            self._core.close_input()

    def _timed_out_closing(self, timeout: Optional[float]) -> None:
        """``close`` waited ``timeout``: stop the source (lock held)."""
        held = self._core.window.held_records
        self._core.fail(ClosedError(f"close timed out after {timeout} s with {held} records not acked"))

    def _end_close(self) -> Summary:
        """The summary of a closed source; raise its error if it did not finish."""
        summary = self._core.summary()
        err = self._core.failure
        if err is not None and not summary.is_complete:
            err.summary = summary
            raise err
        return summary
