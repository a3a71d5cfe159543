"""The held window: every record handed to the source, encoded, in sequence
order, until an ack covers it.

Records are numbered contiguously from :attr:`Window.front_seq`. A record
completed by a selective ack (version 2 ``Ack.completed``) before the
cumulative frontier reaches it is *forgotten in place*: its entry becomes
``None`` (a hole) and it no longer counts against the window's bounds.
Storage is two parallel lists with a moving head, so slicing a batch out of
the window and forgetting acked records are C-speed list operations.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["Window"]

_COMPACT_AT = 4096


class Window:
    """Records held until acked.

    Attributes:
        front_seq: Sequence number of the oldest held record (the next one
            to be numbered when none is held). Never a hole.
        held_records: Records held and not completed.
        held_bytes: Their sizes' sum.
    """

    __slots__ = ("_enc", "_size", "_head", "front_seq", "held_records", "held_bytes")

    def __init__(self, first_seq: int = 1) -> None:
        self._enc: list[Optional[bytes]] = []
        self._size: list[int] = []
        self._head = 0
        self.front_seq = first_seq
        self.held_records = 0
        self.held_bytes = 0

    def __len__(self) -> int:
        """Entries from the front to the end, holes included."""
        return len(self._enc) - self._head

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended record gets."""
        return self.front_seq + len(self._enc) - self._head

    def restart_at(self, seq: int) -> None:
        """Number the next record ``seq``; only while nothing is held."""
        assert len(self) == 0
        self.front_seq = seq

    def extend(self, entries: list[bytes], sizes: list[int], total: int) -> None:
        """Hold ``entries`` (encoded records) of ``sizes`` (summing to ``total``)."""
        self._enc.extend(entries)
        self._size.extend(sizes)
        self.held_records += len(entries)
        self.held_bytes += total

    def entries(self, seq: int, n: int) -> list[Optional[bytes]]:
        """Up to ``n`` entries from ``seq`` on (``None`` for holes)."""
        a = self._head + seq - self.front_seq
        return self._enc[a : a + n]

    def sizes(self, seq: int, n: int) -> list[int]:
        """The sizes of up to ``n`` records from ``seq`` on."""
        a = self._head + seq - self.front_seq
        return self._size[a : a + n]

    def size_at(self, seq: int) -> int:
        """The size of the record ``seq``."""
        return self._size[self._head + seq - self.front_seq]

    def ack_through(self, seq: int) -> int:
        """Forget every record up to ``seq`` (and the holes right after);
        return how many records were forgotten (holes excluded)."""
        head, enc, size = self._head, self._enc, self._size
        end = min(len(enc), head + seq - self.front_seq + 1)
        n = nbytes = 0
        if end > head:
            gone = enc[head:end]
            holes = gone.count(None)
            n = len(gone) - holes
            nbytes = sum(size[head:end])
            if holes:
                nbytes -= sum(s for e, s in zip(gone, size[head:end]) if e is None)
            head = end
        while head < len(enc) and enc[head] is None:
            head += 1
        self.front_seq += head - self._head
        self._head = head
        self.held_records -= n
        self.held_bytes -= nbytes
        if head >= _COMPACT_AT and head * 2 >= len(enc):
            del enc[:head], size[:head]
            self._head = 0
        return n

    def complete(self, first: int, last: int) -> int:
        """Forget the records ``first..=last`` in place (a selective ack);
        return how many were forgotten now."""
        lo = max(first, self.front_seq)
        hi = min(last, self.next_seq - 1)
        n = 0
        enc, size, base = self._enc, self._size, self._head - self.front_seq
        for i in range(lo + base, hi + base + 1):
            if enc[i] is not None:
                enc[i] = None
                n += 1
                self.held_records -= 1
                self.held_bytes -= size[i]
        # A range that starts at the front moves the front.
        if n and lo == self.front_seq:
            self.ack_through(self.front_seq - 1)
        return n

    def take_out(self, seq: int) -> tuple[bytes, int]:
        """Remove the record ``seq`` from the stream; the records after it
        are renumbered one lower. Returns its entry and size."""
        i = self._head + seq - self.front_seq
        e, s = self._enc.pop(i), self._size.pop(i)
        assert e is not None
        self.held_records -= 1
        self.held_bytes -= s
        if i == self._head:
            self.ack_through(self.front_seq - 1)  # skip holes now at the front
        return e, s
