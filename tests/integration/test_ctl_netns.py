"""A device that vanishes silently (its network link goes down, no reset is sent): the SSH
transport must notice within seconds (keepalives + TCP_USER_TIMEOUT), not after TCP's many minutes,
and the result journaled meanwhile must be fetched after reconnecting. Needs root and iproute2."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sshd_fixture import SSHServer, fake_agent_command, netns_sshd  # noqa: E402

from nnflash.controller.errors import RequestTimeout, TransportError  # noqa: E402
from nnflash.controller.inventory import Device  # noqa: E402
from nnflash.controller.transport import SSHConnection  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["netns_sshd"]


def test_silent_link_loss_then_reconnect(netns_sshd: tuple, tmp_path: Path) -> None:
    server, net = netns_sshd
    assert isinstance(server, SSHServer)
    dev = Device(
        name="ns",
        host=server.address,
        port=server.port,
        user="root",
        key_file=str(server.client_key),
        agent_command=fake_agent_command(tmp_path, tmp_path / "store"),
    )
    opts = dict(
        known_hosts_path=tmp_path / "kh",
        pinned_hosts_path=tmp_path / "pinned",
        accept_new_host_key=True,
        look_for_keys=False,
        allow_agent=False,
        keepalive_s=1.0,
        dead_peer_timeout_s=2.0,
        connect_timeout_s=3.0,
        retries=4,
        backoff_s=0.5,
    )
    art = tmp_path / "m.onnx"
    art.write_bytes(b"m" * 50_000)
    sha = hashlib.sha256(art.read_bytes()).hexdigest()
    conn = SSHConnection(dev, **opts)
    conn.open()
    conn.put_artifact(art, sha, "onnx")
    errors: list = []

    def measure() -> None:
        try:
            conn.request(
                "measure",
                {"artifact": {"sha256": sha, "format": "onnx"}, "sleep_s": 2.0},
                timeout_s=120,
                request_id="ns-1",
            )
        except TransportError as exc:
            errors.append(exc)

    t = threading.Thread(target=measure)
    t.start()
    time.sleep(0.3)
    net.link_down()
    t0 = time.monotonic()
    t.join(60)
    elapsed = time.monotonic() - t0
    assert not t.is_alive()
    assert len(errors) == 1 and not isinstance(errors[0], RequestTimeout)
    assert errors[0].request_id == "ns-1"
    print(f"silent drop noticed after {elapsed:.1f} s")
    assert elapsed < 20, f"silent drop noticed only after {elapsed:.1f} s"

    net.link_up()
    time.sleep(2.5)  # the agent on the 'device' finishes and journals meanwhile
    conn.open()
    found = conn.results(["ns-1"])
    assert found["ns-1"] is not None and found["ns-1"]["status"] == "ok"
    conn.close()
