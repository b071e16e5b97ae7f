"""Connections by device kind: :func:`make_connection`, :func:`connect`, :func:`probe`."""

from __future__ import annotations

import time
from typing import Any, Dict

from nnflash.controller.inventory import Device
from nnflash.controller.transport.base import Connection
from nnflash.controller.transport.local import LocalConnection
from nnflash.controller.transport.ssh import SSHConnection

__all__ = ["connect", "make_connection", "probe"]


def make_connection(device: Device, **options: Any) -> Connection:
    """A (not yet opened) connection for ``device``: :class:`LocalConnection` for kind ``local``,
    :class:`SSHConnection` otherwise. ``options`` go to the constructor (options meant for the other
    kind are ignored, so a caller can pass one set for every device)."""
    if device.kind == "local":
        allowed = {"store_dir", "journal_path", "env", "hello_timeout_s", "max_line_bytes"}
        return LocalConnection(device, **{k: v for k, v in options.items() if k in allowed})
    local_only = {"store_dir", "journal_path", "env"}
    return SSHConnection(device, **{k: v for k, v in options.items() if k not in local_only})


def connect(device: Device, **options: Any) -> Connection:
    """:func:`make_connection` + :meth:`Connection.open`."""
    conn = make_connection(device, **options)
    conn.open()
    return conn


def probe(device: Device, **options: Any) -> Dict[str, Any]:
    """Connect, say hello, time a round trip, disconnect (``nnflash devices check``).

    Returns ``{"device", "kind", "address", "open_ms", "rtt_ms", "agent_version", "protocol",
    "store_dir", "facts", "pinned_host_key"}``; raises :class:`TransportError` /
    :class:`HostKeyError` like :meth:`Connection.open`."""
    conn = make_connection(device, **options)
    t0 = time.perf_counter()
    hello = conn.open()
    open_ms = (time.perf_counter() - t0) * 1e3
    try:
        rtt_ms = min(conn.ping() for _ in range(3))
    finally:
        conn.close()
    pinned = getattr(conn, "pinned_key", None)
    address = None if device.kind == "local" else f"{device.host}:{device.port}"
    return {
        "device": device.name,
        "kind": device.kind,
        "address": address,
        "open_ms": open_ms,
        "rtt_ms": rtt_ms,
        "agent_version": hello.get("agent_version"),
        "protocol": hello.get("protocol"),
        "store_dir": hello.get("store_dir"),
        "facts": dict(hello.get("facts") or {}),
        "pinned_host_key": ({"name": pinned[0], "type": pinned[1], "fingerprint": pinned[2]} if pinned else None),
    }
