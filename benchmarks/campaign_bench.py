"""Campaign figures on loopback SSH (a real sshd started here, the real agent behind it).

1. Per-model controller overhead: everything but the measurement itself, i.e. campaign wall time
   minus the time the controller waits on ``measure`` requests, per model (artifacts cached).
2. Device busy fraction of a 20-model campaign whose measurements take about 1 s each, exports
   from scratch (pipelined: the next model is exported and uploaded during the measurement).
3. Eight devices (eight agents behind one sshd) in one campaign: every measurement stored once.

Needs root and Debian's openssh-server (scripts/install_system_deps.sh). Prints figures; not a test.
Run: .venv/bin/python benchmarks/campaign_bench.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from sshd_fixture import SSHServer, real_agent_command  # noqa: E402

from nnflash.controller.campaign import MeasureSettings  # noqa: E402
from nnflash.controller.inventory import Device  # noqa: E402
from nnflash.controller.profiling import run_campaign  # noqa: E402
from nnflash.controller.store import ResultsDB  # noqa: E402
from nnflash.controller.transport import make_connection  # noqa: E402
from nnflash.models.space import get_space  # noqa: E402


def device(server: SSHServer, store: Path, name: str) -> Device:
    return Device(
        name=name,
        host="127.0.0.1",
        port=server.port,
        user="root",
        key_file=str(server.client_key),
        agent_command=real_agent_command(store),
    )


def run(specs, devices, settings, db: Path, art: Path, tmp: Path):
    opts = {
        "known_hosts_path": str(tmp / "none"),
        "pinned_hosts_path": str(tmp / "pinned"),
        "accept_new_host_key": True,
    }
    return run_campaign(specs, devices, settings, db, art, connect=lambda d: make_connection(d, **opts))


def main() -> None:
    space = get_space("flash")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        server = SSHServer(tmp / "sshd")
        server.start()
        try:
            # 1. overhead per model, cached artifacts, short measurements
            specs = space.sample(20, seed=11)
            fast = MeasureSettings(threads=1, repeat=3, min_repeat_ms=1.0, warmup_s=0.0, warmup_runs=1)
            dev = device(server, tmp / "store1", "pi")
            run(specs, [dev], fast, tmp / "warm.db", tmp / "art", tmp)  # exports + uploads once
            overheads = []
            for k in range(3):
                res = run(specs, [dev], fast, tmp / f"o{k}.db", tmp / "art", tmp)
                r = res.devices["pi"]
                overheads.append((r.wall_s - r.busy_s) / r.ok)
            print(
                f"per-model controller overhead (cached artifacts, loopback SSH): "
                f"median {statistics.median(overheads) * 1e3:.1f} ms over 3 campaigns of 20 "
                f"(runs: {', '.join(f'{x * 1e3:.1f}' for x in overheads)} ms); target < 300 ms"
            )

            # 2. busy fraction, ~1 s measurements, exports from scratch
            specs = space.sample(20, seed=12)
            one_s = MeasureSettings(threads=1, repeat=10, min_repeat_ms=100.0, warmup_s=0.1)
            res = run(specs, [device(server, tmp / "store2", "pi")], one_s, tmp / "busy.db", tmp / "art2", tmp)
            r = res.devices["pi"]
            print(
                f"device busy fraction, 20 models of ~{r.busy_s / max(r.ok, 1):.2f} s each, exports pipelined: "
                f"{100 * r.busy_s / r.wall_s:.1f}% ({r.busy_s:.1f} s busy of {r.wall_s:.1f} s); target >= 90%"
            )

            # 3. eight devices behind one sshd
            specs = space.sample(6, seed=13)
            devs = [device(server, tmp / f"store-d{i}", f"d{i}") for i in range(8)]
            res = run(specs, devs, fast, tmp / "eight.db", tmp / "art", tmp)
            store = ResultsDB(tmp / "eight.db")
            rows = store.measurements()
            store.close()
            keys = [(r["spec_id"], r["device"]) for r in rows if r["status"] == "ok"]
            print(
                f"8 devices x {len(specs)} specs: {len(keys)} ok rows, {len(set(keys))} distinct, "
                f"{len(rows)} rows in all, expected {8 * len(specs)}; wall {res.wall_s:.1f} s"
            )
        finally:
            server.stop(agents_too=True)


if __name__ == "__main__":
    main()
