"""Fixtures: a real sluice engine binary, started per test on a free port
with a temporary config and a file sink, and helpers to read the sink back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]


def sluice_bin() -> Path:
    """The engine binary: ``$SLUICE_BIN``, else ``target/debug/sluice`` of the
    repository (built with ``cargo build -p sluice`` when missing)."""
    env = os.environ.get("SLUICE_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = target / "debug" / "sluice"
    if not path.exists():
        subprocess.run(["cargo", "build", "-p", "sluice"], cwd=REPO, check=True)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v: object) -> str:
    """A Python value as TOML (enough for engine configs)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


class Engine:
    """One ``sluice serve`` process with a pipeline ``p`` writing to ``sink_dir``."""

    def __init__(self, tmp: Path, extra: str = "", sink: Optional[dict] = None, pipeline: str = "p") -> None:
        self.tmp = tmp
        self.port = free_port()
        self.sink_dir = tmp / "sink"
        sink = {"kind": "file", "dir": str(self.sink_dir), "fsync": False, **(sink or {})}
        self.config = tmp / "engine.toml"
        self.config.write_text(
            f"""
[server]
listen = "127.0.0.1:{self.port}"
shutdown_timeout = "5s"
{extra}

[metrics]
enabled = false

[memory]
enabled = false

[[pipelines]]
name = "{pipeline}"
sink = {toml_value(sink)}
dead_letter = {toml_value({"kind": "file", "dir": str(tmp / "dead"), "fsync": False})}
batch = {{ max_records = 1000, max_bytes = 1048576, linger = "5ms" }}
"""
        )
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log = tmp / "engine.log"

    @property
    def addr(self) -> str:
        """The engine's address for a source."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Engine":
        """Start the engine and wait until it listens."""
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(sluice_bin()), "serve", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("engine did not listen within 20 s")

    def kill(self) -> None:
        """SIGKILL the engine and reap it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (graceful drain), then SIGKILL after 10 s."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def delivered(self, source: Optional[str] = None) -> Counter[tuple[str, int]]:
        """How many times each (source_id, seq) is in the sink's files."""
        c: Counter[tuple[str, int]] = Counter()
        for line in self.lines():
            if source is None or line["source_id"] == source:
                c[(line["source_id"], line["seq"])] += 1
        return c

    def lines(self) -> Iterator[dict]:
        """Every JSON line of the sink's files. A SIGKILLed engine may leave
        a file's last line half written (never committed, never acked: its
        records are resent), so an unterminated last line is skipped."""
        if not self.sink_dir.exists():
            return
        for f in sorted(self.sink_dir.glob("*.jsonl")):
            text = f.read_text()
            complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
            for raw in complete.splitlines():
                if raw.strip():
                    yield json.loads(raw)


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[object]:
    """A factory of started engines (``make_engine(extra=..., sink=...)``), stopped at the end."""
    engines: list[Engine] = []

    def make(extra: str = "", sink: Optional[dict] = None, start: bool = True, **kw: object) -> Engine:
        d = tmp_path / f"engine{len(engines)}"
        d.mkdir()
        e = Engine(d, extra, sink, **kw)  # type: ignore[arg-type]
        engines.append(e)
        return e.start() if start else e

    yield make
    for e in engines:
        e.kill()


@pytest.fixture
def engine(make_engine: object) -> Engine:
    """One started engine with the defaults."""
    return make_engine()  # type: ignore[operator]


def assert_exactly_once(engine: Engine, source: str, n: int, first: int = 1) -> None:
    """Every seq ``first..first+n-1`` of ``source`` is in the sink exactly once, and nothing else."""
    got = engine.delivered(source)
    seqs = sorted(s for (_, s) in got)
    assert len(got) == n, f"{len(got)} distinct records in the sink, want {n}"
    assert seqs[0] == first and seqs[-1] == first + n - 1
    dups = {k: v for k, v in got.items() if v != 1}
    assert not dups, f"duplicates: {list(dups.items())[:10]}"
