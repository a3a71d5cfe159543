#!/usr/bin/env python3
"""Throughput of the Python source into a null sink, and the ratio to
``sluice send`` on the same records.

Starts ``sluice serve`` (release build by default) with a null-sink
pipeline on a free port, then, for each round:

1. ``sluice.Source``: ``send_many`` of the records in chunks, then
   ``close()`` (the clock stops when every record is acked);
2. (``--api both``/``async``) the same with ``sluice.AsyncSource``;
3. ``sluice send --no-progress`` of a JSON-lines file of the same payloads
   (the clock is the process's wall time; its own summary line is printed).

The records are built before the clock starts (a producer's own work);
``sluice send`` reads and validates its file inside its time.

Usage::

    python bench/bench.py --records 1000000 --size 100 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import sluice  # noqa: E402

REPO = HERE.parents[2]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_engine(binary: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start an engine with a null sink; return it and its address."""
    port = free_port()
    cfg = tmp / "bench.toml"
    cfg.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
[metrics]
enabled = false
[[pipelines]]
name = "bench"
sink = {{ kind = "null" }}
dead_letter = {{ kind = "null" }}
"""
    )
    proc = subprocess.Popen([str(binary), "serve", "--config", str(cfg)], stderr=open(tmp / "engine.log", "wb"))
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("engine did not start")


def run_sync(addr: str, source: str, records: list[bytes], chunk: int) -> sluice.Summary:
    """Send ``records`` with the blocking source; return its summary."""
    src = sluice.Source(addr, source, "bench")
    for i in range(0, len(records), chunk):
        src.send_many(records[i : i + chunk])
    return src.close()


async def run_async(addr: str, source: str, records: list[bytes], chunk: int) -> sluice.Summary:
    """Send ``records`` with the asyncio source; return its summary."""
    src = await sluice.AsyncSource.connect(addr, source, "bench")
    for i in range(0, len(records), chunk):
        await src.send_many(records[i : i + chunk])
    return await src.close()


def run_cli(binary: Path, addr: str, source: str, path: Path, extra: list[str]) -> tuple[float, str]:
    """``sluice send`` of ``path``; return its wall time and summary line."""
    t = time.perf_counter()
    out = subprocess.run(
        [str(binary), "send", "--no-progress", "--addr", addr, "--source-id", source, "--pipeline", "bench",
         *extra, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t, out.stdout.strip().splitlines()[-1]


def main() -> int:
    """Run the benchmark and print one line per measurement."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=100, help="payload bytes per record")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--chunk", type=int, default=10_000, help="records per send_many call")
    p.add_argument("--api", choices=["sync", "async", "both"], default="both")
    p.add_argument("--no-cli", action="store_true", help="skip `sluice send`")
    p.add_argument("--cli-args", default="", help="extra `sluice send` arguments, e.g. '--max-unacked 100000 --batch 1000'")
    p.add_argument("--single", action="store_true", help="also time `send()` record by record (sync)")
    p.add_argument("--bin", type=Path, default=Path(os.environ.get("SLUICE_BIN", REPO / "target/release/sluice")))
    a = p.parse_args()

    # JSON strings of exactly `size` bytes, so that `sluice send` takes the same lines.
    records = [(b'"%010d' % i).ljust(a.size - 1, b"x") + b'"' for i in range(a.records)]
    assert all(len(r) == a.size for r in records[:10])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lines = tmp / "records.jsonl"
        lines.write_bytes(b"\n".join(records) + b"\n")
        proc, addr = start_engine(a.bin, tmp)
        print(f"# {a.records} records of {a.size} bytes, null sink, engine {a.bin}, python {sys.version.split()[0]}")
        try:
            for r in range(a.rounds):
                rates = {}
                if a.api in ("sync", "both"):
                    t, c = time.perf_counter(), time.process_time()
                    s = run_sync(addr, f"py-sync-{r}", records, a.chunk)
                    el, cpu = time.perf_counter() - t, time.process_time() - c
                    assert s.is_complete and s.acked == a.records, s
                    rates["sync"] = a.records / el
                    print(f"round {r} Source       {rates['sync']:>12,.0f} records/s  ({el:.2f} s, "
                          f"python CPU {cpu / a.records * 1e6:.2f} us/record, protocol v{s.protocol_version})")
                if a.api in ("async", "both"):
                    t, c = time.perf_counter(), time.process_time()
                    s = asyncio.run(run_async(addr, f"py-async-{r}", records, a.chunk))
                    el, cpu = time.perf_counter() - t, time.process_time() - c
                    assert s.is_complete and s.acked == a.records, s
                    rates["async"] = a.records / el
                    print(f"round {r} AsyncSource  {rates['async']:>12,.0f} records/s  ({el:.2f} s, "
                          f"python CPU {cpu / a.records * 1e6:.2f} us/record)")
                if a.single:
                    t = time.perf_counter()
                    src = sluice.Source(addr, f"py-single-{r}", "bench")
                    for rec in records:
                        src.send(rec)
                    s = src.close()
                    el = time.perf_counter() - t
                    assert s.is_complete, s
                    print(f"round {r} Source.send  {a.records / el:>12,.0f} records/s  (one call per record)")
                if not a.no_cli:
                    el, line = run_cli(a.bin, addr, f"cli-{r}", lines, a.cli_args.split())
                    cli = a.records / el
                    own = a.records / float(line.split("elapsed ")[1].split("s")[0])
                    ratios = ", ".join(f"{k} {v / cli:.2f}" for k, v in rates.items())
                    own_ratios = ", ".join(f"{k} {v / own:.2f}" for k, v in rates.items())
                    print(f"round {r} sluice send  {cli:>12,.0f} records/s  ({el:.2f} s wall; ratio python/cli: {ratios}; "
                          f"by its own elapsed {own:,.0f} records/s: {own_ratios})")
                    print(f"         sluice send summary: {line}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
