"""A small fake engine that speaks protocol version 2 (grpcio server), for
the v2 paths the real engine does not serve yet: guaranteed credit and
floating credit on `Backlog`, `Revoke`/`Release`, batch ids and
`BatchOutcome`s (with a reject inside and `FOLLOWS_REJECT`), selective acks
(`Ack.completed`) and `Open.first_unacked_seq` across a "restart"."""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from concurrent import futures
from typing import Iterator, Optional

import grpc

from sluice._proto import ingest_pb2 as pb
from sluice._proto import ingest_pb2_grpc as pbg

GUARANTEED = 50
FLOATING_MAX = 400
BYTES = 1 << 20


class FakeV2(pbg.IngestServicer):
    """One fake engine. ``reject_at``: seqs whose first admission is refused
    (``STAGE_LIMIT``, the tail of their batch). ``hold``: seqs not completed
    until :meth:`restart` (so completions above them are selective acks)."""

    def __init__(self, reject_at: set[int] = frozenset(), hold: set[int] = frozenset(),  # type: ignore[assignment]
                 revoke_after: int = 5) -> None:
        self.lock = threading.Lock()
        self.reject_at = set(reject_at)
        self.hold = set(hold)
        self.revoke_after = revoke_after
        self.delivered: Counter[int] = Counter()
        self.opens: list[pb.Open] = []
        self.releases: list[pb.Release] = []
        self.backlogs: list[pb.Backlog] = []
        self.outcomes: list[pb.BatchOutcome] = []
        self.batch_ids: list[int] = []
        self.generation = 0
        self.errors: list[str] = []
        self._reset()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pbg.add_IngestServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def addr(self) -> str:
        """The address for a source."""
        return f"http://127.0.0.1:{self.port}"

    def _reset(self) -> None:
        self.admitted = 0
        self.completed: set[int] = set()
        self.frontier = 0
        self.in_flight: set[int] = set()

    def restart(self) -> None:
        """Forget everything (like an engine restart) and end open streams UNAVAILABLE."""
        with self.lock:
            self.generation += 1
            self._reset()
            self.hold.clear()

    def stop(self) -> None:
        """Stop the server."""
        self.server.stop(0)

    # ------------------------------------------------------------------

    def _ack(self) -> pb.EngineMessage:
        while self.frontier + 1 in self.completed:
            self.frontier += 1
        above = sorted(s for s in self.completed if s > self.frontier + 1)
        ranges: list[pb.SeqRange] = []
        for s in above:
            if ranges and ranges[-1].last + 1 == s:
                ranges[-1].last = s
            else:
                ranges.append(pb.SeqRange(first=s, last=s))
        return pb.EngineMessage(ack=pb.Ack(through_seq=self.frontier, delivered=sum(self.delivered.values()),
                                           completed=ranges[:64]))

    def Stream(self, request_iterator: Iterator[pb.SourceMessage], context: grpc.ServicerContext):  # noqa: N802
        first = next(request_iterator)
        o = first.open
        out: "queue.Queue[Optional[pb.EngineMessage]]" = queue.Queue()
        with self.lock:
            self.opens.append(o)
            gen = self.generation
            if not self.in_flight and o.first_unacked_seq and self.admitted < o.first_unacked_seq - 1:
                self.admitted = o.first_unacked_seq - 1
                self.frontier = max(self.frontier, self.admitted)
            state = {"credit_r": GUARANTEED, "credit_b": BYTES, "batches": 0, "revoke": 0,
                     "rejected": False, "last_id": 0, "v": 2 if o.protocol_version >= 2 else 1}
            first_msgs = [pb.EngineMessage(opened=pb.Opened(
                admitted_through_seq=self.admitted, acked_through_seq=self.frontier,
                credit=pb.Credit(records=GUARANTEED, bytes=BYTES), max_batch_records=100,
                max_message_bytes=4 << 20, protocol_version=2 if o.protocol_version >= 2 else 1,
                window=pb.Credit(records=GUARANTEED + FLOATING_MAX, bytes=4 * BYTES),
                guaranteed=pb.Credit(records=GUARANTEED, bytes=BYTES), credit_lease_ms=100,
                max_unacked_records=100_000, max_record_bytes=BYTES, large_record_bytes=2 * BYTES))]
            if self.frontier:
                first_msgs.append(self._ack())
        yield from first_msgs


        def read() -> None:
            try:
                for m in request_iterator:
                    self._handle(m, state, out, gen)
            except grpc.RpcError:
                pass  # the stream ended
            except Exception as e:  # noqa: BLE001 - a broken expectation
                self.errors.append(repr(e))
            out.put(None)

        def complete() -> None:
            last = None
            while context.is_active():
                time.sleep(0.01)
                with self.lock:
                    if gen != self.generation:
                        break
                    for s in [s for s in self.in_flight if s not in self.hold]:
                        self.in_flight.discard(s)
                        self.completed.add(s)
                        self.delivered[s] += 1
                    # Another stream of the source may have completed them:
                    # ack whatever changed since this stream's last ack.
                    ack = self._ack()
                    if ack.SerializeToString() != last:
                        last = ack.SerializeToString()
                        out.put(ack)
            out.put(None)

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=complete, daemon=True).start()
        while True:
            m = out.get()
            if gen != self.generation:
                context.abort(grpc.StatusCode.UNAVAILABLE, "fake engine restarted")
            if m is None:
                with self.lock:
                    if not self.in_flight:
                        return
                continue
            yield m

    def _handle(self, m: pb.SourceMessage, st: dict, out: "queue.Queue", gen: int) -> None:
        kind = m.WhichOneof("body")
        with self.lock:
            if gen != self.generation:
                return
            if kind == "backlog":
                self.backlogs.append(m.backlog)
                if m.backlog.records and not st["revoke"]:
                    grant = min(m.backlog.records, FLOATING_MAX)
                    st["credit_r"] += grant
                    st["credit_b"] += BYTES
                    out.put(pb.EngineMessage(credit=pb.Credit(records=grant, bytes=BYTES)))
                return
            if kind == "release":
                self.releases.append(m.release)
                st["credit_r"] -= m.release.records
                st["credit_b"] -= m.release.bytes
                if m.release.revoke_id == st["revoke"]:
                    st["revoke"] = 0
                return
            assert kind == "batch", m
            b = m.batch
            if st["v"] == 2:
                assert b.batch_id > st["last_id"], (b.batch_id, st["last_id"])
            else:
                assert b.batch_id == 0
            st["last_id"] = b.batch_id
            self.batch_ids.append(b.batch_id)
            n = len(b.records)
            start = b.first_seq
            if self.admitted == 0 and not self.in_flight:
                self.admitted = self.frontier = start - 1
            dup = max(0, min(n, self.admitted - start + 1))
            outcome = pb.BatchOutcome(batch_id=b.batch_id, first_seq=start, duplicates=dup)
            fresh = start + dup
            if n > dup and fresh != self.admitted + 1:
                reason = pb.REJECT_REASON_FOLLOWS_REJECT if st["rejected"] else pb.REJECT_REASON_SEQUENCE_GAP
                outcome.reject.CopyFrom(pb.Reject(first_seq=fresh, count=n - dup, reason=reason,
                                                  admitted_through_seq=self.admitted, message="gap"))
            else:
                st["rejected"] = False
                k = min(n - dup, st["credit_r"])
                hit = [s for s in range(fresh, fresh + k) if s in self.reject_at]
                if hit:
                    k = hit[0] - fresh
                    self.reject_at.discard(hit[0])
                if k < n - dup:
                    reason = pb.REJECT_REASON_STAGE_LIMIT if hit else pb.REJECT_REASON_NO_CREDIT
                    st["rejected"] = True
                    outcome.reject.CopyFrom(pb.Reject(first_seq=fresh + k, count=n - dup - k, reason=reason,
                                                      admitted_through_seq=self.admitted + k,
                                                      message="stage p/sink full (fake)", retry_after_ms=20))
                size = sum(len(r.payload) + len(r.key) for r in b.records[dup:dup + k])
                st["credit_r"] -= k
                st["credit_b"] -= size
                self.in_flight.update(range(fresh, fresh + k))
                self.admitted += k
                outcome.admitted = k
            outcome.credit.CopyFrom(pb.Credit(records=st["credit_r"], bytes=st["credit_b"]))
            self.outcomes.append(outcome)
            if st["v"] == 2:
                out.put(pb.EngineMessage(outcome=outcome))
            elif outcome.HasField("reject"):
                r = pb.Reject()
                r.CopyFrom(outcome.reject)
                r.credit.CopyFrom(outcome.credit)
                out.put(pb.EngineMessage(reject=r))
            # Refill the guaranteed share (the fake completes quickly).
            used_g = max(0, GUARANTEED - st["credit_r"])
            if used_g and not st["revoke"]:
                add_b = max(0, BYTES - st["credit_b"])
                st["credit_r"] += used_g
                st["credit_b"] += add_b
                out.put(pb.EngineMessage(credit=pb.Credit(records=used_g, bytes=add_b)))
            st["batches"] += 1
            if st["batches"] == self.revoke_after and st["v"] == 2:
                st["revoke"] = 1
                out.put(pb.EngineMessage(revoke=pb.Revoke(
                    revoke_id=1, records=max(1, st["credit_r"] - GUARANTEED), bytes=0)))
