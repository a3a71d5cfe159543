"""How a source reaches the engine: the gRPC target, channel credentials
and options, and call metadata, for both the sync and the asyncio driver."""

from __future__ import annotations

from typing import Optional

import grpc

from .options import Options

__all__ = ["METHOD", "target", "credentials", "channel_options", "metadata", "status_name"]

#: The full method name of ``Ingest.Stream``.
METHOD = "/sluice.v1.Ingest/Stream"

_MAX_MESSAGE = 64 * 1024 * 1024


def target(addr: str) -> tuple[str, bool]:
    """The gRPC target of ``addr`` and whether it uses TLS.

    ``http://host:port`` (or a bare ``host:port``) is plaintext;
    ``https://host:port`` is TLS.
    """
    if addr.startswith("https://"):
        return addr[len("https://") :].rstrip("/"), True
    if addr.startswith("http://"):
        return addr[len("http://") :].rstrip("/"), False
    return addr, False


def credentials(opts: Options) -> grpc.ChannelCredentials:
    """TLS credentials: the trusted CA (system roots when none) and, for
    mutual TLS, the client's certificate and key."""
    return grpc.ssl_channel_credentials(
        root_certificates=opts.ca_pem,  # type: ignore[arg-type]
        private_key=opts.key_pem,  # type: ignore[arg-type]
        certificate_chain=opts.cert_pem,  # type: ignore[arg-type]
    )


def channel_options(opts: Options) -> list[tuple[str, int]]:
    """Channel options: large messages, and gRPC's own reconnect backoff
    kept within the source's policy (the source retries itself)."""
    backoff_ms = max(1, int(opts.reconnect.initial_backoff * 1000))
    return [
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.initial_reconnect_backoff_ms", backoff_ms),
        ("grpc.min_reconnect_backoff_ms", backoff_ms),
        ("grpc.max_reconnect_backoff_ms", max(backoff_ms, int(opts.reconnect.max_backoff * 1000))),
        ("grpc.enable_retries", 0),
    ]


def metadata(opts: Options) -> Optional[tuple[tuple[str, str], ...]]:
    """Call metadata: the bearer token, if any."""
    if opts.token is None:
        return None
    return (("authorization", f"Bearer {opts.token}"),)


def status_name(code: Optional[grpc.StatusCode]) -> Optional[str]:
    """The name of a status code (``"UNAVAILABLE"``…), ``None`` for none."""
    return None if code is None else code.name
