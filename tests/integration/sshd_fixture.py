"""A real OpenSSH server for the controller's integration tests, plus a fake agent.

``SSHServer`` runs Debian's ``/usr/sbin/sshd`` in the foreground on a free loopback port with its
own host key, client key and authorized_keys under a temporary directory (``StrictModes no``
because they live under /tmp; ``/run/sshd`` is created when missing; key authentication only).
``stop()`` kills the listener *and* its per-connection children, so open sessions really drop.

Tests import the fixtures from here (``from sshd_fixture import sshd, ssh_device, ...``); there is
deliberately no conftest.py. When ``/usr/sbin/sshd`` is missing the fixtures skip with a reason that
names ``scripts/install_system_deps.sh``.

``FAKE_AGENT`` is a tiny stand-in for ``nnflash-agent serve`` speaking the current protocol (it imports only
``nnflash_agent.protocol``): ``hello``, ``info``, ``list``, ``results`` (from a journal file in the store,
so a new agent process still knows old answers), ``cleanup``, ``bye``, and a ``measure`` that
checks the artifact's sha256 and sleeps ``args["sleep_s"]`` (default 0) before answering: enough
for the transport's fault tests without a runtime.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

SSHD = "/usr/sbin/sshd"
REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_REASON = (
    f"{SSHD} not installed; run scripts/install_system_deps.sh (installs openssh-server) to enable the real-sshd tests"
)
needs_sshd = pytest.mark.skipif(not os.path.exists(SSHD), reason=SKIP_REASON)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, kind: str = "ed25519") -> Path:
    for p in (path, path.with_name(path.name + ".pub")):
        if p.exists():
            p.unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "nnflash-test", "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path


def host_fingerprint(pub_path: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


def _children(pid: int) -> List[int]:
    """Descendants of ``pid`` (via /proc), deepest last."""
    by_parent: dict = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        by_parent.setdefault(ppid, []).append(int(entry))
    out: List[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in by_parent.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


class SSHServer:
    """sshd on <address>:<port> for tests (loopback by default, or inside a network namespace);
    everything lives under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        port: Optional[int] = None,
        address: str = "127.0.0.1",
        netns: Optional[str] = None,
    ) -> None:
        self.address = address
        self.netns = netns
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host_key = keygen(workdir / "host_ed25519")
        self.client_key = keygen(workdir / "client_ed25519")
        self.authorized_keys = workdir / "authorized_keys"
        shutil.copyfile(self.client_key.with_suffix(".pub"), self.authorized_keys)
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"
        self.proc: Optional[subprocess.Popen] = None
        self._write_config()

    @property
    def host_key_fingerprint(self) -> str:
        return host_fingerprint(self.host_key.with_suffix(".pub"))

    @property
    def hostkey_name(self) -> str:
        return f"[{self.address}]:{self.port}"

    def _write_config(self) -> None:
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.address}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PrintMotd no",
                    "MaxStartups 200",
                    "MaxSessions 200",
                    "LogLevel ERROR",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )

    def new_host_key(self) -> None:
        """Replace the host key (takes effect at the next start)."""
        keygen(self.host_key)

    def start(self, timeout_s: float = 10.0) -> None:
        assert self.proc is None, "already running"
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(
            (["ip", "netns", "exec", self.netns] if self.netns else [])
            + [SSHD, "-D", "-f", str(self.config), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log.read_text() if self.log.exists() else ""
                self.proc = None
                raise RuntimeError(f"sshd exited at start: {log[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5) as s:
                    s.settimeout(1.0)
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on port {self.port} within {timeout_s} s")

    def kill_sessions(self, agents_too: bool = False) -> None:
        """Kill the per-connection sshd processes: every open session drops, as if the network
        went away. The commands they ran (agents) are left running, orphaned, as on a real device
        that lost its link, unless ``agents_too``."""
        if self.proc is None:
            return
        for pid in reversed(_children(self.proc.pid)):
            if not agents_too and not _comm(pid).startswith("sshd"):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, agents_too: bool = False) -> None:
        """Stop listening and drop every open session (see :meth:`kill_sessions`)."""
        if self.proc is None:
            return
        self.kill_sessions(agents_too)
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        # the per-connection processes may have been forked in the meantime
        time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()


class NetNS:
    """A network namespace joined to this host by a veth pair: the host side gets ``host_ip``, the
    namespace ``device_ip``. ``link_down()`` takes the device's end down, so packets to it vanish
    silently (a pulled cable), unlike a stopped server that answers with resets."""

    def __init__(self, tag: int) -> None:
        self.name = f"nnfl{os.getpid() % 10000}x{tag}"
        self.host_if = f"nh{os.getpid() % 10000}x{tag}"
        self.dev_if = f"nd{os.getpid() % 10000}x{tag}"
        octet = 1 + (os.getpid() + tag * 7) % 250
        self.host_ip = f"10.213.{octet}.1"
        self.device_ip = f"10.213.{octet}.2"
        ns = ["ip", "netns", "exec", self.name]
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.dev_if],
            ["ip", "link", "set", self.dev_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
            ["ip", "link", "set", self.host_if, "up"],
            ns + ["ip", "addr", "add", f"{self.device_ip}/30", "dev", self.dev_if],
            ns + ["ip", "link", "set", self.dev_if, "up"],
            ns + ["ip", "link", "set", "lo", "up"],
        ]
        try:
            for cmd in steps:
                subprocess.run(cmd, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            self.destroy()
            raise

    def _set_link(self, state: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.name, "ip", "link", "set", self.dev_if, state],
            check=True,
            capture_output=True,
        )

    def link_down(self) -> None:
        self._set_link("down")

    def link_up(self) -> None:
        self._set_link("up")

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def netns_skip_reason() -> Optional[str]:
    if not os.path.exists(SSHD):
        return SKIP_REASON
    if shutil.which("ip") is None:
        return "`ip` (iproute2) not installed; run scripts/install_system_deps.sh"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    return None


# ------------------------------------------------------------------------------------------------
# The fake agent

FAKE_AGENT = r"""
import hashlib, json, os, sys, time
sys.path.insert(0, os.environ.get("NNFLASH_REPO", "."))
from nnflash_agent import protocol as P

store = "/tmp/nnflash-fake-store"
if "--store" in sys.argv:
    store = os.path.expanduser(sys.argv[sys.argv.index("--store") + 1])
os.makedirs(store, exist_ok=True)
journal_path = os.path.join(store, "journal.jsonl")


def journal_load():
    out = {}
    if os.path.exists(journal_path):
        for line in open(journal_path):
            try:
                m = json.loads(line)
                out[m["id"]] = m
            except Exception:
                pass
    return out


def answer(msg):
    sys.stdout.buffer.write(P.encode(msg))
    sys.stdout.buffer.flush()


facts = {"machine": "x86_64", "os": "Linux", "python": sys.version.split()[0], "agent": "fake"}
print("fake agent started, store", store, file=sys.stderr, flush=True)
for raw in sys.stdin.buffer:
    try:
        verb, rid, args = P.validate_request(P.decode(raw))
    except P.ProtocolError as exc:
        answer(P.error_response(exc))
        continue
    if verb == "hello":
        hello = {"protocol": P.PROTOCOL_VERSION, "agent_version": "fake-0",
                 "store_dir": store, "facts": facts}
        answer(P.make_response(rid, result=hello))
    elif verb == "info":
        answer(P.make_response(rid, result={"facts": facts, "state": {"pid": os.getpid()}}))
    elif verb == "list":
        arts = []
        for name in sorted(os.listdir(store)):
            base, _, ext = name.partition(".")
            if len(base) == 64 and ext in ("onnx", "tflite", "bin"):
                size = os.path.getsize(os.path.join(store, name))
                arts.append({"sha256": base, "format": ext, "size": size})
        answer(P.make_response(rid, result={"artifacts": arts}))
    elif verb == "results":
        j = journal_load()
        found = {i: j.get(i) for i in args.get("ids", [])}
        answer(P.make_response(rid, result={"results": found}))
    elif verb == "cleanup":
        answer(P.make_response(rid, result={"removed": 0}))
    elif verb == "bye":
        answer(P.make_response(rid, result={}))
        break
    elif verb == "measure":
        art = args.get("artifact") or {}
        path = os.path.join(store, "%s.%s" % (art.get("sha256"), art.get("format")))
        time.sleep(float(args.get("sleep_s", 0)))
        if not os.path.exists(path):
            resp = P.make_response(rid, P.MISSING_ARTIFACT, None, "no such artifact")
        elif hashlib.sha256(open(path, "rb").read()).hexdigest() != art.get("sha256"):
            resp = P.make_response(rid, P.CORRUPT_ARTIFACT, None, "sha256 mismatch")
        else:
            record = {"latency_ms": {"median": 1.5, "mean": 1.6, "p90": 2.0},
                      "samples_ms": [1.5, 1.6, 2.0]}
            resp = P.make_response(rid, result=record)
        with open(journal_path, "a") as fh:
            fh.write(json.dumps(resp) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        answer(resp)
"""


def write_fake_agent(directory: Path) -> Path:
    path = directory / "fake_agent.py"
    path.write_text(FAKE_AGENT)
    return path


def fake_agent_command(directory: Path, store: Path) -> str:
    """Shell command starting the fake agent with its store at ``store``."""
    script = write_fake_agent(directory)
    return f"NNFLASH_REPO={REPO_ROOT} {sys.executable} {script} --store {store}"


def real_agent_available() -> bool:
    return (REPO_ROOT / "agent" / "cli.py").is_file()


def real_agent_command(store: Path) -> str:
    return f"cd {REPO_ROOT} && {sys.executable} -m nnflash_agent.cli serve --store {store}"


# ------------------------------------------------------------------------------------------------
# pytest fixtures (import them into the test module)


@pytest.fixture
def netns_sshd(tmp_path: Path) -> Iterator[tuple]:
    """(SSHServer inside a network namespace, NetNS)."""
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        net = NetNS(1)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    server = SSHServer(tmp_path / "sshd-ns", address=net.device_ip, netns=net.name)
    try:
        server.start()
        yield server, net
    finally:
        server.stop(agents_too=True)
        net.destroy()


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SSHServer]:
    if not os.path.exists(SSHD):
        pytest.skip(SKIP_REASON)
    server = SSHServer(tmp_path / "sshd")
    server.start()
    try:
        yield server
    finally:
        server.stop(agents_too=True)
