#!/usr/bin/env python3
"""Generate the protobuf/gRPC stubs of ``sluice._proto`` from ``proto/``.

Usage::

    python scripts/gen_stubs.py            # write the stubs into sluice/_proto
    python scripts/gen_stubs.py --out DIR  # write them into DIR instead

The stubs are checked in; ``tests/test_stubs.py`` regenerates them into a
temporary directory and fails when they differ from the checked-in copies.
Run this script (with the grpcio-tools version pinned in ``pyproject.toml``)
after any change to ``proto/sluice/v1/ingest.proto``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
REPO = PACKAGE.parent.parent
PROTO_ROOT = REPO / "proto"
PROTOS = ["sluice/v1/ingest.proto"]
DEFAULT_OUT = PACKAGE / "sluice" / "_proto"


def generate(out: Path) -> list[Path]:
    """Generate the stubs of :data:`PROTOS` into ``out``; return the files written."""
    from grpc_tools import protoc  # imported here: only needed to regenerate

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(PROTO_ROOT / p) for p in PROTOS],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for f in sorted((Path(tmp) / "sluice" / "v1").iterdir()):
            text = f.read_text()
            # The generated modules import each other as the top-level
            # package `sluice.v1`; inside this package they are siblings.
            text = re.sub(r"^from sluice\.v1 import (\w+)", r"from . import \1", text, flags=re.M)
            # ...and their classes live in this module, not in `sluice.v1`.
            text = text.replace("'sluice.v1.ingest_pb2'", "'sluice._proto.ingest_pb2'")
            target = out / f.name
            target.write_text(text)
            written.append(target)
    return written


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for f in generate(args.out):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
