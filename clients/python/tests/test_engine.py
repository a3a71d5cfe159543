"""The blocking Source against the real engine binary (``sluice serve``)."""

from __future__ import annotations

import threading
import time

import pytest

import sluice
from conftest import Engine, assert_exactly_once


def payloads(n: int, start: int = 0, size: int = 100) -> list[bytes]:
    """``n`` distinct payloads of ``size`` bytes."""
    return [(b"%012d" % i).ljust(size, b"x") for i in range(start, start + n)]


def test_200k_records_land_exactly_once(engine: Engine) -> None:
    events: list[sluice.Event] = []
    with sluice.Source(engine.addr, "basic", "p", on_event=events.append) as src:
        assert src.protocol_version in (1, 2)
        src.send({"id": 0, "kind": "dict"})
        src.send("a string")
        src.send(sluice.Record(b"full", key="k1", attributes={"a": "b"}, event_time=1_700_000_000_000))
        for i in range(0, 200_000 - 3, 10_000):
            src.send_many(payloads(min(10_000, 200_000 - 3 - i), i))
    s = src.summary()
    assert s.is_complete and s.acked == 200_000 and s.sent == 200_000 and s.rejected == 0, s
    assert s.delivered == 200_000
    assert "acked 200000" in s.format()
    assert_exactly_once(engine, "basic", 200_000)
    first = {line["seq"]: line for line in engine.lines() if line["seq"] <= 3}
    assert first[1]["payload"] == {"id": 0, "kind": "dict"}
    assert first[2]["payload"] == "a string"
    assert first[3]["key"] == "k1" and first[3]["attributes"] == {"a": "b"}
    assert first[3]["event_time_ms"] == 1_700_000_000_000
    assert isinstance(events[0], sluice.Connected)


def test_sequence_continues_after_what_the_engine_admitted(engine: Engine) -> None:
    for _ in range(2):
        with sluice.Source(engine.addr, "again", "p") as src:
            src.send_many(payloads(10))
    assert_exactly_once(engine, "again", 20)


def test_slow_sink_backpressure_without_rejects(make_engine: object) -> None:
    engine: Engine = make_engine(  # type: ignore[operator]
        extra="""
[buffer]
per_source = { records = 2000, bytes = 1048576 }
per_stage = { records = 2000, bytes = 1048576 }
credit_window_records = 500
""",
        sink={"delay": "20ms"},
    )
    with sluice.Source(engine.addr, "slow", "p", max_unacked_records=5000) as src:
        t = time.monotonic()
        src.send_many(payloads(20_000))
        src.flush()
        took = time.monotonic() - t
    s = src.summary()
    assert s.rejected == 0 and s.is_complete, s
    assert_exactly_once(engine, "slow", 20_000)
    assert took > 0.2  # the sink's delay was felt


def test_sigkill_and_restart_mid_stream_loses_nothing(engine: Engine) -> None:
    events: list[sluice.Event] = []
    n = 100_000
    src = sluice.Source(
        engine.addr, "crash", "p", on_event=events.append,
        reconnect=sluice.Reconnect(max_attempts=50, initial_backoff=0.05, max_backoff=0.5),
    )
    done = threading.Event()

    def produce() -> None:
        for i in range(0, n, 1000):
            src.send_many(payloads(1000, i))
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    while src.summary().acked < 20_000:
        time.sleep(0.01)
    engine.kill()
    time.sleep(0.3)
    # Everything acked by the dead engine has reached the source by now.
    acked_before = src.summary().acked_through
    engine.start()
    t.join(60)
    summary = src.close(timeout=60)
    assert summary.is_complete and summary.reconnects >= 1, summary
    assert any(isinstance(e, sluice.Disconnected) for e in events)
    got = engine.delivered("crash")
    assert sorted(s for (_, s) in got) == list(range(1, n + 1)), "records lost"
    dups = sorted(s for (_, s), c in got.items() if c > 1)
    assert all(s > acked_before for s in dups), f"acked record written twice: {dups[:5]}"


def test_graceful_restart_pause_shutdown_and_resend(make_engine: object) -> None:
    # A slow sink keeps records in flight when SIGTERM arrives: the engine
    # pauses the source (SHUTDOWN) while it drains them.
    engine: Engine = make_engine(sink={"delay": "50ms"})  # type: ignore[operator]
    events: list[sluice.Event] = []
    src = sluice.Source(engine.addr, "drain", "p", on_event=events.append,
                        reconnect=sluice.Reconnect(max_attempts=50, initial_backoff=0.05, max_backoff=0.5))
    src.send_many(payloads(5000))
    while src.summary().acked < 1000:
        time.sleep(0.005)
    engine.stop()  # PAUSE SHUTDOWN, drain, end of stream
    src.send_many(payloads(5000, 5000))  # held while the engine is down
    engine.start()
    summary = src.close(timeout=30)
    assert summary.is_complete, summary
    signals = [e for e in events if isinstance(e, sluice.Signal)]
    assert any(e.kind == "PAUSE" and e.reason == "SHUTDOWN" for e in signals), events
    assert_exactly_once(engine, "drain", 10_000)


def test_record_larger_than_the_source_limit_raises_at_send(make_engine: object) -> None:
    # The engine states the largest record it can ever admit
    # (`Opened.max_record_bytes`), so such a record is refused at `send`,
    # before it costs a round trip, and the stream goes on without a gap.
    engine: Engine = make_engine(  # type: ignore[operator]
        extra="""
[buffer]
per_source = { records = 10000, bytes = 1000000 }
"""
    )
    with sluice.Source(engine.addr, "big", "p") as src:
        src.send_many(payloads(10))
        with pytest.raises(sluice.RecordTooLargeError, match="max_record_bytes"):
            src.send(b"B" * 2_000_000)
        src.send_many(payloads(10, 10))
    s = src.summary()
    assert s.is_complete and s.rejected == 0, s
    assert_exactly_once(engine, "big", 20)


def test_record_larger_than_a_message_raises_at_send(engine: Engine) -> None:
    # The engine's `Opened.max_record_bytes` is below its message limit (a
    # record beyond credit must fit in `server.uncovered_message_bytes`), so
    # whichever limit the client checks first is named.
    with sluice.Source(engine.addr, "huge", "p") as src:
        with pytest.raises(sluice.RecordTooLargeError, match="max_(record|message)_bytes"):
            src.send(b"x" * 17_000_000)
        src.send(b"small")
    assert src.summary().acked == 1


def test_unknown_pipeline_raises(engine: Engine) -> None:
    with pytest.raises(sluice.PipelineNotFoundError) as e:
        sluice.Source(engine.addr, "lost", "no-such-pipeline")
    assert e.value.code == "NOT_FOUND" and "no-such-pipeline" in e.value.message


def test_dead_engine_bounds_the_window(engine: Engine) -> None:
    src = sluice.Source(engine.addr, "bound", "p", max_unacked_records=1000, send_timeout=0.5,
                        reconnect=sluice.Reconnect(max_attempts=100, initial_backoff=0.05, max_backoff=0.2))
    src.send_many(payloads(10))
    src.flush()
    engine.kill()
    src.send_many(payloads(1000, 10))
    t = time.monotonic()
    with pytest.raises(sluice.WindowFullError) as e:
        src.send(b"one too many")
    assert 0.4 < time.monotonic() - t < 5
    assert e.value.held_records == 1000
    with pytest.raises(TimeoutError):
        src.send(b"x", timeout=0.1)
    engine.start()
    src.send(b"room again", timeout=30)  # acked after the reconnect
    summary = src.close(timeout=30)
    assert summary.is_complete and summary.acked == 1011, summary
    assert_exactly_once(engine, "bound", 1011)


def test_dead_engine_window_bounded_in_bytes(engine: Engine) -> None:
    src = sluice.Source(engine.addr, "bytes", "p", max_unacked_bytes=50_000, send_timeout=0.3)
    engine.kill()
    src.send_many(payloads(500))  # 50 000 bytes
    with pytest.raises(sluice.WindowFullError):
        src.send(b"y")
    with pytest.raises(sluice.SluiceError):
        src.close(timeout=0.5)


def test_token_auth(make_engine: object) -> None:
    engine: Engine = make_engine(  # type: ignore[operator]
        extra="""
[server.auth]
tokens = [{ token = "s3cret-token", sources = ["ok-*"] }]
"""
    )
    with pytest.raises(sluice.AuthError) as e:
        sluice.Source(engine.addr, "ok-1", "p")
    assert e.value.code == "UNAUTHENTICATED"
    with pytest.raises(sluice.AuthError):
        sluice.Source(engine.addr, "ok-1", "p", token="wrong")
    with pytest.raises(sluice.AuthError) as e:
        sluice.Source(engine.addr, "other", "p", token="s3cret-token")
    assert e.value.code == "PERMISSION_DENIED" and "other" in e.value.message
    with sluice.Source(engine.addr, "ok-1", "p", token="s3cret-token") as src:
        src.send_many(payloads(100))
    assert_exactly_once(engine, "ok-1", 100)


def test_unreachable_engine_raises_connect_error() -> None:
    from conftest import free_port

    t = time.monotonic()
    with pytest.raises(sluice.ConnectError):
        sluice.Source(f"http://127.0.0.1:{free_port()}", "nobody", "p",
                      reconnect=sluice.Reconnect(max_attempts=2, initial_backoff=0.05))
    assert time.monotonic() - t < 10


def test_sink_stall_pauses_and_resumes_the_source(engine: Engine) -> None:
    import shutil

    events: list[sluice.Event] = []
    src = sluice.Source(engine.addr, "stall", "p", on_event=events.append)
    src.send_many(payloads(1000))
    src.flush()
    # Take the sink's directory away and block its path with a file: the
    # sink cannot write, stalls, and the engine pauses the source (SINK).
    shutil.rmtree(engine.sink_dir)
    engine.sink_dir.write_text("not a directory")
    src.send_many(payloads(1000, 1000))
    deadline = time.monotonic() + 20
    while not any(isinstance(e, sluice.Signal) and e.kind == "PAUSE" for e in events):
        assert time.monotonic() < deadline, events
        time.sleep(0.02)
    pause = next(e for e in events if isinstance(e, sluice.Signal) and e.kind == "PAUSE")
    assert pause.reason == "SINK" and pause.sink, pause
    engine.sink_dir.unlink()  # the sink recreates its directory and writes again
    summary = src.close(timeout=30)
    assert summary.is_complete and summary.pauses >= 1 and summary.resumes >= 1, summary
    assert any(isinstance(e, sluice.Signal) and e.kind == "RESUME" and e.reason == "SINK" for e in events)
    got = engine.delivered("stall")
    assert set(range(1001, 2001)) <= {s for (_, s) in got}  # the first files went with the directory
