"""The version-2 paths end to end, against a fake version-2 engine (grpcio
server in ``fake_v2.py``): the real engine of this branch serves version 1."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Iterator

import pytest

import sluice
from fake_v2 import FakeV2


@pytest.fixture
def fake() -> Iterator[FakeV2]:
    f = FakeV2(reject_at={150}, hold=set(range(200, 210)))
    yield f
    f.stop()


def records(n: int) -> list[bytes]:
    return [b"rec-%06d" % i for i in range(n)]


def state(fake: FakeV2, src: "sluice.Source | sluice.AsyncSource") -> str:
    """What the source and the fake hold, for a failure message."""
    c = src._core  # noqa: SLF001 - a debugging aid
    return (f"source: front {c.window.front_seq} cursor {c.cursor} next {c.window.next_seq} "
            f"credit {c.credit_records}/{c.credit_bytes} connected {c.connected} in flight "
            f"{list(c.in_flight)[:3]} poll {c.poll(c.clock())[0]}; fake: admitted {fake.admitted} frontier "
            f"{fake.frontier} in flight {sorted(fake.in_flight)[:5]} opens "
            f"{[o.first_unacked_seq for o in fake.opens]} errors {fake.errors}")


def check(fake: FakeV2, events: list[sluice.Event], n: int) -> None:
    assert not fake.errors
    assert sorted(fake.delivered) == list(range(1, n + 1)), "records lost"
    # Duplicates only from the restart: records completed by the old
    # incarnation whose ack had not reached the source yet.
    assert all(c <= 2 for c in fake.delivered.values())
    assert all(fake.delivered[s] == 1 for s in range(200, 210))
    rejects = [e for e in events if isinstance(e, sluice.Reject)]
    assert rejects and rejects[0].reason == "STAGE_LIMIT" and rejects[0].first_seq == 150
    assert {e.reason for e in rejects} <= {"STAGE_LIMIT", "FOLLOWS_REJECT"}
    assert fake.backlogs and any(b.records for b in fake.backlogs)  # floating credit asked for
    assert fake.releases and all(r.revoke_id == 1 for r in fake.releases)  # revokes answered
    firsts = [o.first_unacked_seq for o in fake.opens]
    assert firsts[0] == 0 and 0 < firsts[1] <= 200, firsts  # resumed at the first unacked record
    assert any(f > 210 for f in firsts), firsts  # and reopened past the selectively acked hole
    assert all(o.protocol_version == 2 for o in fake.opens)


def restart_when_holes(fake: FakeV2, src: "sluice.Source | sluice.AsyncSource") -> None:
    """Restart the fake once the source saw records above the held 200..209
    acked selectively (it forgot them: a hole in its window)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        s = src.summary()
        if s.acked_through == 199 and s.acked > 260:
            break
        time.sleep(0.002)
    fake.restart()


def test_v2_sync(fake: FakeV2) -> None:
    events: list[sluice.Event] = []
    n = 3000
    src = sluice.Source(fake.addr, "v2", "p", on_event=events.append, max_batch_records=100,
                        reconnect=sluice.Reconnect(initial_backoff=0.02, max_backoff=0.1))
    assert src.protocol_version == 2
    t = threading.Thread(target=restart_when_holes, args=(fake, src))
    t.start()
    for i in range(0, n, 100):
        src.send_many(records(n)[i:i + 100])
        time.sleep(0.002)
    t.join()
    try:
        s = src.close(timeout=10)
    except sluice.SluiceError:
        pytest.fail(state(fake, src))
    assert s.is_complete and s.acked == n and s.protocol_version == 2, s
    check(fake, events, n)


async def test_v2_async(fake: FakeV2) -> None:
    events: list[sluice.Event] = []
    n = 3000
    src = await sluice.AsyncSource.connect(fake.addr, "v2a", "p", on_event=events.append, max_batch_records=100,
                                           reconnect=sluice.Reconnect(initial_backoff=0.02, max_backoff=0.1))
    restart = asyncio.get_running_loop().run_in_executor(None, restart_when_holes, fake, src)
    for i in range(0, n, 100):
        await src.send_many(records(n)[i:i + 100])
        await asyncio.sleep(0.002)
    await restart
    try:
        s = await src.close(timeout=10)
    except sluice.SluiceError:
        pytest.fail(state(fake, src))
    assert s.is_complete and s.acked == n, s
    check(fake, events, n)


def test_v1_fallback_against_a_v2_capable_engine_when_forced(fake: FakeV2) -> None:
    with sluice.Source(fake.addr, "v1", "p", protocol_version=1) as src:
        assert src.protocol_version == 1
        src.send_many(records(100))
    assert fake.opens[0].protocol_version == 0
