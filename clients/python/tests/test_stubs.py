"""The checked-in stubs are what ``scripts/gen_stubs.py`` generates from ``proto/``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]


def test_checked_in_stubs_match_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("gen_stubs", PACKAGE / "scripts" / "gen_stubs.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    written = gen.generate(tmp_path)
    assert written
    checked_in = PACKAGE / "sluice" / "_proto"
    for f in written:
        mine = (checked_in / f.name).read_text()
        assert f.read_text() == mine, (
            f"sluice/_proto/{f.name} is stale: run `python scripts/gen_stubs.py` after changing proto/"
        )
