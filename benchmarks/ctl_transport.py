"""Controller transport figures on loopback: SSH connect + auth, session open, request round trip,
artifact upload. Prints medians; not a pass/fail test (timings on shared machines are noisy).

Needs /usr/sbin/sshd (scripts/install_system_deps.sh) and runs it on a free loopback port with
throw-away keys, using the test fixture's SSHServer. Run from the repository root:

    python benchmarks/ctl_transport.py [--n 20] [--requests 500]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, List

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))

from nnflash.controller.inventory import Device, local_device  # noqa: E402
from nnflash.controller.transport import Connection, LocalConnection, SSHConnection  # noqa: E402


def _median_ms(fn: Callable[[], Any], n: int) -> float:
    times: List[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _rtt_ms(conn: Connection, n: int) -> float:
    for _ in range(10):  # warm up
        conn.request("results", {"ids": []})
    return _median_ms(lambda: conn.request("results", {"ids": []}), n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="connections to time")
    ap.add_argument("--requests", type=int, default=500, help="requests to time")
    ns = ap.parse_args()

    from sshd_fixture import SSHD, SSHServer, fake_agent_command, real_agent_command

    if not os.path.exists(SSHD):
        print(f"{SSHD} missing: run scripts/install_system_deps.sh", file=sys.stderr)
        return 2
    real = (REPO_ROOT / "agent" / "cli.py").is_file()
    with tempfile.TemporaryDirectory(prefix="nnflash-bench-") as tmp_s:
        tmp = Path(tmp_s)
        server = SSHServer(tmp / "sshd")
        server.start()
        try:
            store = tmp / "store"
            agent_cmd = (
                real_agent_command(store) + f" --journal {tmp / 'journal.jsonl'}"
                if real
                else fake_agent_command(tmp, store)
            )
            dev = Device(
                name="loop",
                host="127.0.0.1",
                port=server.port,
                user="root" if os.geteuid() == 0 else None,
                key_file=str(server.client_key),
                agent_command=agent_cmd,
            )
            opts: dict = dict(
                known_hosts_path=tmp / "kh",
                pinned_hosts_path=tmp / "pinned",
                look_for_keys=False,
                allow_agent=False,
                retries=0,
            )
            with SSHConnection(dev, accept_new_host_key=True, **opts):  # pins the host key
                pass

            def connect_auth() -> None:
                c = SSHConnection(dev, **opts)
                client = c._connect_with_retries()
                client.close()

            connect_ms = _median_ms(connect_auth, ns.n)

            def open_close() -> None:
                c = SSHConnection(dev, **opts)
                c.open()
                c.close()

            open_ms = _median_ms(open_close, max(3, ns.n // 2))

            conn = SSHConnection(dev, **opts)
            conn.open()
            ssh_rtt = _rtt_ms(conn, ns.requests)

            small = tmp / "small.onnx"
            small.write_bytes(os.urandom(100_000))

            def put_small() -> None:
                s = hashlib.sha256(small.read_bytes()).hexdigest()
                conn._remote_remove_quiet(f"{conn.store_dir}/{s}.onnx")
                conn.put_artifact(small, s, "onnx")

            t0 = time.perf_counter()
            put_small()  # the first upload also starts the device-side sha256 helper
            first_ms = (time.perf_counter() - t0) * 1e3
            small_ms = _median_ms(put_small, 10)
            art = tmp / "art.onnx"
            art.write_bytes(os.urandom(4 << 20))
            sha = hashlib.sha256(art.read_bytes()).hexdigest()
            put = conn.put_artifact(art, sha, "onnx")
            skip_ms = _median_ms(lambda: conn.put_artifact(art, sha, "onnx"), 20)
            conn.close()

            local = LocalConnection(local_device(), store_dir=tmp / "lstore", journal_path=tmp / "lj.jsonl")
            t0 = time.perf_counter()
            local.open()
            local_open_ms = (time.perf_counter() - t0) * 1e3
            local_rtt = _rtt_ms(local, ns.requests)
            local.close()
        finally:
            server.stop(agents_too=True)

    agent = "real agent" if real else "fake agent (agent/cli.py missing)"
    print(f"nnflash controller transport on loopback ({agent}; medians)")
    print(f"  SSH connect + key auth (paramiko):      {connect_ms:8.1f} ms   (n={ns.n})")
    print(f"  SSH session open (connect+exec+hello):  {open_ms:8.1f} ms")
    print(f"  SSH request round trip:                 {ssh_rtt:8.3f} ms   (n={ns.requests})")
    print(f"  SFTP upload 4 MiB + device sha256:      {put.seconds * 1e3:8.1f} ms   ({4 / put.seconds:.0f} MiB/s)")
    print(f"  SFTP upload 100 kB + device sha256:     {small_ms:8.1f} ms")
    print(f"  first upload (starts the sha256 helper):{first_ms:8.1f} ms")
    print(f"  put_artifact already present (skip):    {skip_ms:8.3f} ms")
    print(f"  local agent open (spawn+hello):         {local_open_ms:8.1f} ms")
    print(f"  local request round trip:               {local_rtt:8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
