"""The examples of clients/python/README.md run as written (only the address
is pointed at a test engine)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Engine

README = Path(__file__).resolve().parents[1] / "README.md"


def example(name: str) -> str:
    m = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert m, f"no example {name!r} in the README"
    return m.group(1)


@pytest.mark.parametrize("name, source, n", [("sync", "orders-importer", 10_000), ("async", "orders-importer-aio", 4)])
def test_readme_example_runs(engine: Engine, name: str, source: str, n: int) -> None:
    code = example(name)
    assert len(code.strip().splitlines()) <= 14
    code = code.replace("http://127.0.0.1:50051", engine.addr)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=README.parent)
    assert out.returncode == 0, out.stderr
    assert f"acked {n} " in out.stdout, out.stdout
    got = engine.delivered(source)
    assert len(got) == n and set(got.values()) == {1}


def test_main_readme_python_source_example_runs(engine: Engine) -> None:
    text = (README.parents[2] / "README.md").read_text()
    m = re.search(r"## Python source\n.*?```python\n(.*?)```", text, re.S)
    assert m, "no Python example in the main README"
    code = m.group(1).replace("http://127.0.0.1:50051", engine.addr)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "acked 100001 " in out.stdout, out.stdout
