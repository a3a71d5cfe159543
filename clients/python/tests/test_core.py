"""The sans-IO protocol core, driven directly with engine messages and a fake clock."""

from __future__ import annotations


import pytest

import sluice
from sluice._core import FAIL, FINISH, IDLE, REOPEN, SEND, WAIT, Core
from sluice._proto import ingest_pb2 as pb
from sluice.records import encode_many


class Clock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(version: int = 1, credit: tuple[int, int] = (100, 100_000), admitted: int = 0,
         max_batch: int = 10, **opts: object) -> tuple[Core, Clock]:
    clock = Clock()
    opts.setdefault("linger", 0.0)
    core = Core("http://x", "src", "p", sluice.Options(max_batch_records=max_batch, **opts), clock=clock)  # type: ignore[arg-type]
    core.on_opened(opened(version, credit, admitted))
    return core, clock


def opened(version: int = 1, credit: tuple[int, int] = (100, 100_000), admitted: int = 0,
           acked: int = 0, **kw: object) -> pb.Opened:
    return pb.Opened(protocol_version=version, credit=pb.Credit(records=credit[0], bytes=credit[1]),
                     admitted_through_seq=admitted, acked_through_seq=acked,
                     max_batch_records=1000, max_message_bytes=1 << 20, **kw)  # type: ignore[arg-type]


def add(core: Core, n: int, size: int = 10, start: int = 0) -> None:
    entries, sizes = encode_many([(b"%d" % (start + i)).ljust(size, b".") for i in range(n)])
    assert core.offer(entries, sizes, 0) == n


def batch_of(action: tuple[int, object]) -> pb.Batch:
    kind, value = action
    assert kind == SEND, action
    m = pb.SourceMessage.FromString(value)  # type: ignore[arg-type]
    assert m.WhichOneof("body") == "batch", m
    return m.batch


def sent(core: Core) -> list[pb.SourceMessage]:
    """Everything the core writes now."""
    out = []
    while True:
        kind, value = core.poll(core.clock())
        if kind != SEND:
            return out
        out.append(pb.SourceMessage.FromString(value))  # type: ignore[arg-type]


def msg(**body: object) -> pb.EngineMessage:
    return pb.EngineMessage(**body)  # type: ignore[arg-type]


def test_open_message_v2_carries_first_unacked_and_backlog() -> None:
    core, _ = make(version=2, admitted=41)
    add(core, 3)
    o = pb.SourceMessage.FromString(core.open_message()).open
    assert o.protocol_version == 2 and o.first_unacked_seq == 42
    assert o.backlog.records == 3 and o.backlog.bytes == 30
    fresh = Core("http://x", "s", "p", sluice.Options())
    assert pb.SourceMessage.FromString(fresh.open_message()).open.first_unacked_seq == 0  # does not say
    resumed = Core("http://x", "s", "p", sluice.Options(first_seq=500))
    assert pb.SourceMessage.FromString(resumed.open_message()).open.first_unacked_seq == 500
    v1 = Core("http://x", "s", "p", sluice.Options(protocol_version=1))
    assert pb.SourceMessage.FromString(v1.open_message()).open.protocol_version == 0


def test_numbering_continues_after_admitted_and_batches_are_contiguous() -> None:
    core, clock = make(admitted=41, max_batch=4, linger=0.005)
    add(core, 10)
    b = batch_of(core.poll(clock()))
    assert b.first_seq == 42 and len(b.records) == 4 and b.batch_id == 0
    assert b.records[0].payload.startswith(b"0")
    assert batch_of(core.poll(clock())).first_seq == 46
    # two left: less than a batch, waits for the linger
    kind, until = core.poll(clock())
    assert kind == WAIT and until == pytest.approx(clock() + core.opts.linger)
    clock.t += 1
    assert len(batch_of(core.poll(clock())).records) == 2
    assert core.poll(clock())[0] == IDLE


def test_credit_limits_records_and_bytes() -> None:
    core, clock = make(credit=(5, 35))
    add(core, 10)
    b = batch_of(core.poll(clock()))
    assert len(b.records) == 3  # 35 bytes of credit, 10 bytes each
    assert core.credit_records == 2 and core.credit_bytes == 5
    clock.t += 1
    assert core.poll(clock())[0] == IDLE
    core.on_message(msg(credit=pb.Credit(records=10, bytes=1000)))
    assert len(batch_of(core.poll(clock())).records) == 7


def test_ack_frees_the_window_and_resets_attempts() -> None:
    core, clock = make(max_unacked_records=10)
    add(core, 10)
    entries, sizes = encode_many([b"late"])
    assert core.offer(entries, sizes, 0) == 0  # full
    sent(core)
    core.attempts = 3
    core.on_message(msg(ack=pb.Ack(through_seq=4, delivered=4)))
    assert core.window.held_records == 6 and core.acked == 4 and core.attempts == 0
    assert core.offer(entries, sizes, 0) == 1
    assert core.summary().delivered == 4 and core.summary().acked_through == 4


def test_window_bound_in_bytes_admits_a_prefix() -> None:
    core, _ = make(max_unacked_bytes=55)
    entries, sizes = encode_many([b"x" * 10] * 10)
    assert core.offer(entries, sizes, 0) == 5
    assert core.offer(entries, sizes, 5) == 5  # unchanged: full
    # an empty window always takes one record, whatever its size
    empty, _ = make(max_unacked_bytes=5)
    assert empty.offer(entries, sizes, 0) == 1


def test_v1_reject_rewinds_backs_off_and_takes_the_engines_credit() -> None:
    core, clock = make(credit=(100, 100_000), max_batch=5)
    add(core, 15)
    assert [m.batch.first_seq for m in sent(core)] == [1, 6, 11]
    # The second batch's tail 8..10 was not admitted; the engine counts 50 records / 900 bytes.
    core.on_message(msg(reject=pb.Reject(first_seq=8, count=3, reason=pb.REJECT_REASON_NO_CREDIT,
                                         admitted_through_seq=7, retry_after_ms=100,
                                         credit=pb.Credit(records=50, bytes=900))))
    # minus the third batch, still in flight: 5 records, 50 bytes
    assert (core.credit_records, core.credit_bytes) == (45, 850)
    kind, until = core.poll(clock())
    assert kind == WAIT and until == pytest.approx(clock() + 0.1)
    # the gap reject of the third batch does not rewind again
    core.on_message(msg(reject=pb.Reject(first_seq=11, count=5, reason=pb.REJECT_REASON_SEQUENCE_GAP,
                                         admitted_through_seq=7, credit=pb.Credit(records=50, bytes=900))))
    assert (core.credit_records, core.credit_bytes) == (50, 900)
    clock.t += 1
    assert [m.batch.first_seq for m in sent(core)] == [8, 13]
    ev = core.take_events()
    assert [e.reason for e in ev if isinstance(e, sluice.Reject)] == ["NO_CREDIT", "SEQUENCE_GAP"]
    assert core.summary().resent == 8 and core.summary().sent == 15


def test_record_too_large_is_taken_out_and_the_rest_renumbered() -> None:
    core, clock = make()
    add(core, 3)
    sent(core)
    core.on_message(msg(reject=pb.Reject(first_seq=2, count=2, reason=pb.REJECT_REASON_RECORD_TOO_LARGE,
                                         admitted_through_seq=1, message="too big",
                                         credit=pb.Credit(records=99, bytes=99_990))))
    ev = core.take_events()
    big = [e for e in ev if isinstance(e, sluice.RecordTooLarge)][0]
    assert big.seq == 2 and sluice.decode_record(big.entry).payload.startswith(b"1")
    b = [m.batch for m in sent(core)][0]
    assert b.first_seq == 2 and b.records[0].payload.startswith(b"2")
    assert core.summary().too_large == 1


def test_large_record_rule_sends_it_alone_on_one_credit() -> None:
    core, clock = make(credit=(10, 100))
    core.large_record_bytes = 50
    add(core, 1, size=500)
    add(core, 1, size=10)
    b = batch_of(core.poll(clock()))
    assert len(b.records) == 1 and len(b.records[0].payload) == 500
    assert core.credit_bytes == 0 and core.credit_records == 9


def test_signals_pause_slow_down_resume() -> None:
    core, clock = make(max_batch=8)
    core.on_message(msg(signal=pb.Signal(kind=pb.SIGNAL_KIND_PAUSE, reason=pb.SIGNAL_REASON_SINK,
                                         retry_after_ms=200, sink="file", utilization=1.0)))
    add(core, 20)
    kind, until = core.poll(clock())
    assert kind == WAIT and until == pytest.approx(clock() + 0.2)
    core.on_message(msg(signal=pb.Signal(kind=pb.SIGNAL_KIND_RESUME, reason=pb.SIGNAL_REASON_SINK)))
    core.on_message(msg(signal=pb.Signal(kind=pb.SIGNAL_KIND_SLOW_DOWN, reason=pb.SIGNAL_REASON_STAGE,
                                         retry_after_ms=30)))
    b = batch_of(core.poll(clock()))
    assert len(b.records) == 2  # a quarter batch under SLOW_DOWN
    kind, until = core.poll(clock())
    assert kind == WAIT and until == pytest.approx(clock() + 0.03)
    core.on_message(msg(signal=pb.Signal(kind=pb.SIGNAL_KIND_RESUME, reason=pb.SIGNAL_REASON_STAGE)))
    assert len(batch_of(core.poll(clock())).records) == 8
    kinds = [(e.kind, e.reason) for e in core.take_events() if isinstance(e, sluice.Signal)]
    assert kinds == [("PAUSE", "SINK"), ("RESUME", "SINK"), ("SLOW_DOWN", "STAGE"), ("RESUME", "STAGE")]
    s = core.summary()
    assert (s.pauses, s.resumes, s.slow_downs) == (1, 2, 1)


def test_v2_outcomes_sync_credit_and_reject_inside() -> None:
    core, clock = make(version=2, credit=(100, 100_000), max_batch=5)
    add(core, 15)
    bs = [m.batch for m in sent(core)]
    assert [b.batch_id for b in bs] == [1, 2, 3]
    core.on_message(msg(outcome=pb.BatchOutcome(batch_id=1, first_seq=1, admitted=5,
                                                credit=pb.Credit(records=95, bytes=99_950))))
    assert (core.credit_records, core.credit_bytes) == (85, 99_850)
    core.on_message(msg(outcome=pb.BatchOutcome(
        batch_id=2, first_seq=6, admitted=2,
        reject=pb.Reject(first_seq=8, count=3, reason=pb.REJECT_REASON_STAGE_LIMIT, admitted_through_seq=7),
        credit=pb.Credit(records=93, bytes=99_930))))
    assert (core.credit_records, core.credit_bytes) == (88, 99_880)
    core.on_message(msg(outcome=pb.BatchOutcome(
        batch_id=3, first_seq=11,
        reject=pb.Reject(first_seq=11, count=5, reason=pb.REJECT_REASON_FOLLOWS_REJECT, admitted_through_seq=7),
        credit=pb.Credit(records=93, bytes=99_930))))
    assert core.cursor == 8 and not core.in_flight
    clock.t += 1
    bs = [m.batch for m in sent(core)]
    assert [(b.first_seq, b.batch_id) for b in bs] == [(8, 4), (13, 5)]
    assert core.summary().rejected == 8


def test_v2_selective_acks_forget_records_in_place() -> None:
    core, clock = make(version=2, max_batch=10)
    add(core, 10)
    sent(core)
    core.on_message(msg(ack=pb.Ack(through_seq=2, completed=[pb.SeqRange(first=5, last=7)])))
    assert core.window.held_records == 5 and core.acked == 5
    core.on_message(msg(ack=pb.Ack(through_seq=4)))
    assert core.window.front_seq == 8  # 5..7 were already forgotten
    v1, _ = make(version=1)
    add(v1, 10)
    sent(v1)
    v1.on_message(msg(ack=pb.Ack(through_seq=2, completed=[pb.SeqRange(first=5, last=7)])))
    assert v1.window.held_records == 8  # version 1 ignores the ranges


def test_v2_hole_after_restart_reopens_past_it() -> None:
    core, clock = make(version=2, max_batch=10)
    add(core, 10)
    sent(core)
    core.on_message(msg(ack=pb.Ack(through_seq=2, completed=[pb.SeqRange(first=5, last=7)])))
    core.on_stream_end("UNAVAILABLE", "engine restarted")
    assert pb.SourceMessage.FromString(core.open_message()).open.first_unacked_seq == 3
    core.on_opened(opened(version=2))  # a new engine: nothing admitted
    b = batch_of(core.poll(clock()))
    assert (b.first_seq, len(b.records)) == (3, 2)  # up to the hole
    assert core.poll(clock())[0] == IDLE  # 3..4 not acked yet
    core.on_message(msg(ack=pb.Ack(through_seq=4)))
    assert core.poll(clock())[0] == REOPEN
    assert pb.SourceMessage.FromString(core.open_message()).open.first_unacked_seq == 8
    core.on_opened(opened(version=2, admitted=7, acked=7))
    b = batch_of(core.poll(clock()))
    assert (b.first_seq, len(b.records)) == (8, 3)


def test_v2_backlog_when_out_of_credit_and_release_on_revoke() -> None:
    core, clock = make(version=2, credit=(4, 10_000), max_batch=100)
    add(core, 10)
    out = sent(core)
    assert out[0].batch.first_seq == 1 and len(out[0].batch.records) == 4
    assert out[1].WhichOneof("body") == "backlog" and out[1].backlog.records == 6
    assert out[1].backlog.bytes == 60
    assert sent(core) == []  # announced once
    core.on_message(msg(credit=pb.Credit(records=100, bytes=10_000)))
    out = sent(core)
    assert len(out[0].batch.records) == 6
    assert out[1].backlog.records == 0  # ran dry
    core.on_message(msg(revoke=pb.Revoke(revoke_id=7, records=1000, bytes=5000)))
    r = sent(core)[0].release
    assert (r.revoke_id, r.records, r.bytes) == (7, 94, 5000)
    assert core.credit_records == 0 and core.credit_bytes == 20_000 - 40 - 60 - 5000


def test_v1_engine_never_gets_backlog_or_batch_ids() -> None:
    core, clock = make(version=1, credit=(4, 10_000), max_batch=100)
    add(core, 10)
    out = sent(core)
    assert len(out) == 1 and out[0].batch.batch_id == 0


def test_finish_after_close_and_everything_acked() -> None:
    core, clock = make()
    add(core, 3)
    core.close_input()
    assert len(batch_of(core.poll(clock())).records) == 3  # no linger once closed
    assert core.poll(clock())[0] == IDLE
    core.on_message(msg(ack=pb.Ack(through_seq=3)))
    assert core.poll(clock())[0] == FINISH
    assert core.on_stream_end("OK", "").done


@pytest.mark.parametrize("code, error", [
    ("NOT_FOUND", sluice.PipelineNotFoundError),
    ("UNAUTHENTICATED", sluice.AuthError),
    ("PERMISSION_DENIED", sluice.AuthError),
    ("OUT_OF_RANGE", sluice.RefusedError),
    ("INVALID_ARGUMENT", sluice.RefusedError),
])
def test_final_statuses_fail_with_the_engines_message(code: str, error: type) -> None:
    core, clock = make()
    end = core.on_stream_end(code, "the engine's words")
    assert isinstance(end.error, error) and end.error.message == "the engine's words"
    assert core.poll(clock()) == (FAIL, end.error)


def test_transient_statuses_reconnect_with_backoff_then_give_up() -> None:
    core, _ = make(reconnect=sluice.Reconnect(max_attempts=3, initial_backoff=0.1, max_backoff=0.25))
    add(core, 1)
    waits = [core.on_stream_end(c, "x").retry_in for c in ("UNAVAILABLE", "OK", "INTERNAL")]
    assert waits == [0.1, 0.2, 0.25]
    end = core.on_stream_end("UNAVAILABLE", "down")
    assert isinstance(end.error, sluice.GaveUpError) and end.error.attempts == 3
    assert [type(e).__name__ for e in core.take_events()][-3:] == ["Disconnected"] * 3


def test_reconnect_resumes_after_admitted_and_absorbs_acked() -> None:
    core, clock = make(max_batch=100)
    add(core, 10)
    sent(core)
    core.on_stream_end("UNAVAILABLE", "cut")
    core.on_opened(opened(admitted=6, acked=3))
    assert core.window.front_seq == 4 and core.reconnects == 1
    b = batch_of(core.poll(clock()))
    assert b.first_seq == 7 and len(b.records) == 4
    # a restarted engine (nothing admitted): resend everything not acked
    core.on_stream_end("UNAVAILABLE", "restart")
    core.on_opened(opened(admitted=0))
    b = batch_of(core.poll(clock()))
    assert b.first_seq == 4 and len(b.records) == 7
    assert core.summary().resent == 11


def test_oversized_record_for_the_message_limit_fails_validation() -> None:
    core, _ = make()
    entries, sizes = encode_many([b"x" * (1 << 20)])
    with pytest.raises(sluice.RecordTooLargeError, match="max_message_bytes"):
        core.validate(entries, sizes)
    core.max_record_bytes = 100
    entries, sizes = encode_many([b"x" * 101])
    with pytest.raises(sluice.RecordTooLargeError, match="max_record_bytes"):
        core.validate(entries, sizes)


def test_reopen_counts_as_an_attempt() -> None:
    core, _ = make(reconnect=sluice.Reconnect(max_attempts=2))
    assert core.reopen() is None and core.reopen() is None
    err = core.reopen()
    assert isinstance(err, sluice.GaveUpError) and core.failure is err


def test_tls_handshake_failure_is_final() -> None:
    core, _ = make()
    end = core.on_stream_end("UNAVAILABLE", "failed to connect to all addresses; last error: UNKNOWN: "
                             "Tls handshake failed (TSI_PROTOCOL_FAILURE): CERTIFICATE_VERIFY_FAILED")
    assert isinstance(end.error, sluice.TLSError)


def test_slow_down_keeps_below_the_drain_rate() -> None:
    core, clock = make(max_batch=40)
    add(core, 100)
    core.on_message(msg(signal=pb.Signal(kind=pb.SIGNAL_KIND_SLOW_DOWN, reason=pb.SIGNAL_REASON_GLOBAL,
                                         retry_after_ms=5, target_records_per_second=100.0)))
    assert len(batch_of(core.poll(clock())).records) == 10
    kind, until = core.poll(clock())
    assert kind == WAIT and until == pytest.approx(clock() + 0.1)  # 10 records at 100/s
