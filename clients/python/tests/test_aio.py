"""AsyncSource against the real engine binary."""

from __future__ import annotations

import asyncio
import time

import pytest

import sluice
from conftest import Engine, assert_exactly_once
from test_engine import payloads


async def test_async_exactly_once(engine: Engine) -> None:
    events: list[sluice.Event] = []
    async with sluice.AsyncSource(engine.addr, "aio", "p", on_event=events.append) as src:
        await src.send({"id": 0})
        for i in range(0, 50_000, 5000):
            await src.send_many(payloads(5000, i))

        async def more():  # an async iterable works too
            for p in payloads(999, 50_000):
                yield p

        await src.send_many(more())
        await src.flush()
        assert src.summary().unacked == 0
    s = src.summary()
    assert s.is_complete and s.acked == 51_000 and s.rejected == 0, s
    assert_exactly_once(engine, "aio", 51_000)
    assert isinstance(src.drain_events()[0], sluice.Connected)


async def test_async_sigkill_restart(engine: Engine) -> None:
    src = await sluice.AsyncSource.connect(
        engine.addr, "aio-crash", "p",
        reconnect=sluice.Reconnect(max_attempts=50, initial_backoff=0.05, max_backoff=0.5))

    async def produce() -> None:
        for i in range(0, 60_000, 1000):
            await src.send_many(payloads(1000, i))

    task = asyncio.create_task(produce())
    while src.summary().acked < 10_000:
        await asyncio.sleep(0.01)
    engine.kill()
    await asyncio.sleep(0.3)
    # Everything acked by the dead engine has reached the source by now.
    acked_before = src.summary().acked_through
    engine.start()
    await task
    s = await src.close(timeout=60)
    assert s.is_complete and s.reconnects >= 1, s
    got = engine.delivered("aio-crash")
    assert sorted(q for (_, q) in got) == list(range(1, 60_001))
    assert all(q > acked_before for (_, q), c in got.items() if c > 1)


async def test_async_window_bound_and_errors(engine: Engine) -> None:
    with pytest.raises(sluice.PipelineNotFoundError):
        await sluice.AsyncSource.connect(engine.addr, "x", "nope")
    src = await sluice.AsyncSource.connect(engine.addr, "aio-bound", "p", max_unacked_records=100,
                                           send_timeout=0.3)
    engine.kill()
    await src.send_many(payloads(100))
    t = time.monotonic()
    with pytest.raises(sluice.WindowFullError):
        await src.send(b"x")
    assert time.monotonic() - t >= 0.25
    with pytest.raises(sluice.SluiceError):
        await src.close(timeout=0.5)
