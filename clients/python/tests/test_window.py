"""The held window: numbering, acks, holes, take-out and compaction."""

from __future__ import annotations

from sluice._window import Window


def filled(n: int, first: int = 1) -> Window:
    w = Window(first)
    w.extend([b"%d" % i for i in range(n)], [1] * n, n)
    return w


def test_ack_and_holes() -> None:
    w = filled(10, first=5)
    assert (w.front_seq, w.next_seq, w.held_records) == (5, 15, 10)
    assert w.complete(7, 8) == 2 and w.complete(7, 9) == 1  # already forgotten ones count once
    assert w.entries(6, 4) == [b"1", None, None, None]
    assert w.ack_through(6) == 2 and w.front_seq == 10  # the holes at the front go too
    assert (w.held_records, w.held_bytes) == (5, 5)
    assert w.complete(10, 10) == 1 and w.front_seq == 11
    assert w.ack_through(100) == 4 and len(w) == 0 and w.next_seq == 15


def test_take_out_renumbers() -> None:
    w = filled(5)
    entry, size = w.take_out(2)
    assert entry == b"1" and size == 1
    assert w.entries(1, 10) == [b"0", b"2", b"3", b"4"] and w.next_seq == 5
    assert w.take_out(1)[0] == b"0" and w.front_seq == 1 and w.entries(1, 1) == [b"2"]


def test_compaction_keeps_numbering() -> None:
    w = filled(10_000)
    assert w.ack_through(6000) == 6000
    assert w._head == 0  # compacted  # noqa: SLF001
    assert w.front_seq == 6001 and w.entries(6001, 2) == [b"6000", b"6001"]
    assert w.sizes(9999, 5) == [1, 1]
