"""TLS and mutual TLS against the real engine (certificates made with the openssl CLI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import sluice
from conftest import Engine, assert_exactly_once

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """ca.pem, server.pem/server-key.pem (127.0.0.1), client.pem/client-key.pem."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, ext in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth"),
        ("client", "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth"),
    ]:
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    make_pki(d)
    return d


def tls_addr(engine: Engine) -> str:
    return engine.addr.replace("http://", "https://")


def test_tls(make_engine: object, pki: Path) -> None:
    engine: Engine = make_engine(  # type: ignore[operator]
        extra=f'[server.tls]\ncert = "{pki}/server.pem"\nkey = "{pki}/server-key.pem"\n'
    )
    with sluice.Source(tls_addr(engine), "tls", "p", ca_pem=pki / "ca.pem") as src:
        src.send_many([b"secret %d" % i for i in range(100)])
    assert_exactly_once(engine, "tls", 100)


def test_mutual_tls(make_engine: object, pki: Path) -> None:
    engine: Engine = make_engine(  # type: ignore[operator]
        extra=(f'[server.tls]\ncert = "{pki}/server.pem"\nkey = "{pki}/server-key.pem"\n'
               f'client_ca = "{pki}/ca.pem"\n')
    )
    with pytest.raises(sluice.TLSError):  # no client certificate: at once, not retried
        sluice.Source(tls_addr(engine), "mtls", "p", ca_pem=pki / "ca.pem", connect_timeout=3)
    with pytest.raises(sluice.TLSError):  # the engine's certificate is not trusted
        sluice.Source(tls_addr(engine), "mtls", "p", connect_timeout=3)
    with sluice.Source(tls_addr(engine), "mtls", "p", ca_pem=str(pki / "ca.pem"),
                       cert_pem=pki / "client.pem", key_pem=(pki / "client-key.pem").read_bytes()) as src:
        src.send_many([b"mutual %d" % i for i in range(100)])
    assert_exactly_once(engine, "mtls", 100)
