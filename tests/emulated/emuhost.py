"""An emulated Raspberry-Pi-like aarch64 host for tests: a real arm64 sshd reachable over a veth link.

``ensure_rootfs()`` runs ``scripts/build_emu_rootfs.sh``, which builds (once, cached under
``/var/cache/nnflash-emu/bookworm-arm64`` or ``$NNFLASH_EMU_CACHE``) a Debian bookworm arm64 tree
shaped like Raspberry Pi OS Lite 64-bit: Python 3.11, venv, pip, OpenSSH, user ``pi``, no apt index.

``EmuHost.start()`` then

* creates a network namespace joined to this machine by a veth pair: ``10.214.N.1`` here,
  ``10.214.N.2`` on the device (``N``: a slot whose lock file in /run/lock is free), with no default
  route inside, so nothing beyond this machine is reachable from the emulated host;
* runs the rootfs's own arm64 ``/usr/sbin/sshd -D -e`` (through qemu-user via binfmt_misc)
  chrooted into the rootfs, in that network namespace and in private mount, PID and UTS namespaces:
  fresh /proc (with a Pi 3B style ``/proc/cpuinfo`` bound over it, see below), read-only /sys, a
  minimal /dev with its own devpts and /dev/shm, tmpfs on /tmp and /run, hostname ``raspberrypi``.
  Nothing is mounted on the host; when the PID namespace's first process dies the kernel kills
  everything else in it, so ``stop()`` leaves no strays (agents that daemonized included);
* installs a freshly generated ed25519 client key for user ``pi`` into ``~pi/.ssh/authorized_keys``
  (and a per-run copy in the host's private /run, which sshd also reads).

/home/pi: the rootfs's own (persistent between runs; ``reset_home()`` empties it) for one host at
a time, held with a flock; a host started while another holds it, or with ``private_home=True``,
gets a fresh home of its own bind-mounted over /home/pi (removed at ``stop()``), so concurrent test
runs on one machine never see each other's files. ``EmuHost.home`` is the path on this machine.

Why the fake /proc/cpuinfo: qemu-user passes the host's (x86) /proc/cpuinfo through, and the
onnxruntime aarch64 wheel (its cpuinfo library) segfaults at import when it parses it. A
Cortex-A53/BCM2837 (Raspberry Pi 3B) style file with one entry per host CPU fixes that and makes the facts Pi-like.
To match it, qemu emulates a Cortex-A53 by default (``QEMU_CPU``, also set for the SSH sessions
with sshd's ``SetEnv``) rather than qemu's "max" CPU, whose SVE/SME no Raspberry Pi has.

``/proc/device-tree`` cannot be added to procfs; ``/sys/firmware/devicetree/base/model`` (what it
links to on a real Pi) is provided instead.

Tests import from here (``from emuhost import EmuHost, emu_host_fixture, ...``) after putting this
directory on ``sys.path``; there is deliberately no conftest.py. Needs root (namespaces, chroot).
"""

from __future__ import annotations

import atexit
import fcntl
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Dict, Iterator, List, Optional, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_emu_rootfs.sh"
DEFAULT_ROOTFS = Path("/var/cache/nnflash-emu/bookworm-arm64")
STAMP_NAME = ".nnflash-emu-stamp"  # written by the build script into the finished tree
NET_PREFIX = "10.214"
LOCK_DIR = Path("/run/lock")
BOARD_MODEL = "Raspberry Pi 3 Model B Rev 1.2"
EMULATED = platform.machine() != "aarch64"

_SSH_OPTS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=30",
]


def rootfs_path() -> Path:
    env = os.environ.get("NNFLASH_EMU_CACHE")
    return Path(env) if env else DEFAULT_ROOTFS


def skip_reason() -> Optional[str]:
    """Why the emulated host cannot run here, or None. Root with iproute2 and OpenSSH's client is
    enough: the build script installs debootstrap and qemu-user-static itself."""
    if platform.system() != "Linux":
        return "the emulated aarch64 host needs Linux"
    if os.geteuid() != 0:
        return "the emulated aarch64 host needs root (network namespaces, chroot, binfmt_misc)"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux"), ("ssh", "openssh-client")):
        if shutil.which(tool) is None:
            return f"`{tool}` not installed (Debian package {package})"
    if shutil.which("ssh-keygen") is None:
        return "`ssh-keygen` not installed (Debian package openssh-client)"
    try:
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns` unusable: {exc}"
    if r.returncode != 0:
        return f"`ip netns` unusable: {r.stderr.decode(errors='replace').strip()}"
    return None


def ensure_rootfs(timeout_s: float = 3600.0) -> Path:
    """Build the rootfs if missing or stale (about 3 to 6 minutes), else only check binfmt (fast)."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    path = Path(lines[-1]) if lines else rootfs_path()
    if not (path / "usr" / "sbin" / "sshd").exists():
        raise RuntimeError(f"{BUILD_SCRIPT} reported {path}, which has no usr/sbin/sshd")
    return path


def _keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nnflash-emu-test", "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path


def _fingerprint(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is neither a zombie nor dead."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X", b"x")


def _pi_cpuinfo(ncpu: int) -> str:
    """/proc/cpuinfo of a Raspberry Pi 3B (BCM2837, Cortex-A53), with ``ncpu`` processors."""
    block = (
        "processor\t: {n}\n"
        "BogoMIPS\t: 38.40\n"
        "Features\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\n"
        "CPU architecture: 8\n"
        "CPU variant\t: 0x0\n"
        "CPU part\t: 0xd03\n"
        "CPU revision\t: 4\n\n"
    )
    tail = f"Hardware\t: BCM2835\nRevision\t: a02082\nSerial\t\t: 10000000e5a1c0de\nModel\t\t: {BOARD_MODEL}\n"
    return "".join(block.format(n=n) for n in range(ncpu)) + tail


# Runs as PID 1 of the new PID namespace, in the private mount/UTS namespaces, inside the netns,
# still outside the chroot. $1 rootfs, $2 device address, $3 workdir, $4 QEMU_CPU ("" for default).
_START_SH = r"""
set -eu
R="$1"; ADDR="$2"; W="$3"; CPU="$4"
echo raspberrypi > /proc/sys/kernel/hostname
mount --bind "$R" "$R"  # "/" is a mount point in there (df, psutil.disk_partitions)
mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
if [ -f "$W/cpuinfo" ]; then mount --bind "$W/cpuinfo" "$R/proc/cpuinfo"; fi
if [ -d "$W/home" ]; then mount --bind "$W/home" "$R/home/pi"; fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
if [ -f "$W/model" ] && [ -d "$R/sys/firmware" ]; then
    mount -t tmpfs -o mode=755,size=64k,nosuid,nodev,noexec tmpfs "$R/sys/firmware"
    mkdir -p "$R/sys/firmware/devicetree/base"
    cp "$W/model" "$W/compatible" "$R/sys/firmware/devicetree/base/"
    mount -o remount,ro "$R/sys/firmware"
fi
mount -t tmpfs -o mode=755,size=1m,nosuid tmpfs "$R/dev"
cd "$R/dev"
mknod -m 666 null c 1 3; mknod -m 666 zero c 1 5; mknod -m 666 full c 1 7
mknod -m 666 random c 1 8; mknod -m 666 urandom c 1 9; mknod -m 666 tty c 5 0
mkdir pts shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts pts
ln -s pts/ptmx ptmx
ln -s /proc/self/fd fd; ln -s /proc/self/fd/0 stdin; ln -s /proc/self/fd/1 stdout; ln -s /proc/self/fd/2 stderr
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs shm
cd /
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run"
mkdir -p "$R/run/sshd" "$R/run/lock" "$R/run/nnflash-emu"
chmod 1777 "$R/run/lock"
cp "$W/authorized_keys" "$R/run/nnflash-emu/authorized_keys"
chmod 644 "$R/run/nnflash-emu/authorized_keys"
set -- -D -e -o "ListenAddress=$ADDR:22"
if [ -n "$CPU" ]; then set -- "$@" -o "SetEnv=QEMU_CPU=$CPU"; fi
exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 ${CPU:+QEMU_CPU=$CPU} \
    chroot "$R" /usr/sbin/sshd "$@"
"""


class EmuHost:
    """The emulated Pi: ``ssh -i key_path pi@host`` (port 22) reaches a chrooted arm64 sshd.

    ``qemu_cpu`` is the CPU qemu emulates (default Cortex-A53 as in a Raspberry Pi 3B; None for
    qemu's default "max"); ignored on an aarch64 machine, where nothing is emulated.
    """

    user = "pi"
    port = 22

    def __init__(
        self, rootfs: Optional[Path] = None, qemu_cpu: Optional[str] = "cortex-a53", private_home: bool = False
    ) -> None:
        self.rootfs: Optional[Path] = Path(rootfs) if rootfs is not None else None
        self.qemu_cpu = qemu_cpu if EMULATED else None
        self.private_home = private_home
        self._home: Optional[Path] = None  # set by start(): the shared one or workdir/home
        self._home_lock_fd: Optional[int] = None
        self._tree_lock_fd: Optional[int] = None
        self.slot: Optional[int] = None
        self.host: str = ""  # device address, 10.214.N.2
        self.host_ip: str = ""  # this machine's end of the link, 10.214.N.1
        self.netns: str = ""
        self.workdir: Optional[Path] = None
        self.key_path: Optional[Path] = None
        self.host_key_fingerprint: str = ""
        self.log_path: Optional[Path] = None
        self.proc: Optional[subprocess.Popen] = None
        self._lock_fd: Optional[int] = None
        self._log_fh: Optional[IO[bytes]] = None

    # -- names -------------------------------------------------------------------------------------

    @staticmethod
    def _names(slot: int) -> Tuple[str, str, str]:
        return f"nnemu{slot}", f"nnemu{slot}h", f"nnemu{slot}d"

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}"

    @property
    def home(self) -> Path:
        """/home/pi of the emulated host, as a path on this machine (see the module's docstring)."""
        if self._home is not None:
            return self._home
        assert self.rootfs is not None, "no rootfs yet (start() first or pass rootfs=)"
        return self.rootfs / "home" / self.user

    # -- life cycle --------------------------------------------------------------------------------

    def __enter__(self) -> EmuHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 120.0) -> None:
        assert self.proc is None, "already running"
        if self.rootfs is None:
            self.rootfs = ensure_rootfs()
        atexit.register(self.stop)
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        assert self.rootfs is not None
        # shared flock on the tree's stamp: a rebuild moves the tree aside but does not delete it
        # while this host runs (see remove_old_trees in the build script)
        self._tree_lock_fd = os.open(str(self.rootfs / STAMP_NAME), os.O_RDONLY)
        fcntl.flock(self._tree_lock_fd, fcntl.LOCK_SH)
        self.workdir = Path(tempfile.mkdtemp(prefix="nnflash-emu-"))
        self.key_path = _keygen(self.workdir / "id_ed25519")
        pub = self.key_path.with_name("id_ed25519.pub").read_text()
        (self.workdir / "authorized_keys").write_text(pub)
        if EMULATED:
            (self.workdir / "cpuinfo").write_text(_pi_cpuinfo(os.cpu_count() or 1))
            (self.workdir / "model").write_bytes(BOARD_MODEL.encode() + b"\0")
            (self.workdir / "compatible").write_bytes(b"raspberrypi,3-model-b\0brcm,bcm2837\0")
        (self.workdir / "start.sh").write_text(_START_SH)
        self._choose_home()
        self._install_key(pub)
        self.host_key_fingerprint = _fingerprint(self.rootfs / "etc" / "ssh" / "ssh_host_ed25519_key.pub")

        self._create_link()
        self.log_path = self.workdir / "sshd.log"
        self._log_fh = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns]
            + ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--propagation", "private", "--"]
            + ["/bin/sh", str(self.workdir / "start.sh"), str(self.rootfs), self.host, str(self.workdir)]
            + [self.qemu_cpu or ""],
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulated sshd exited at start (rc {self.proc.returncode}): {self.log()[-3000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2.0) as s:
                    s.settimeout(10.0)
                    if s.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"emulated sshd did not answer on {self.host}:22 within {timeout_s} s: {self.log()[-3000:]}")

    def _choose_home(self) -> None:
        assert self.rootfs is not None and self.workdir is not None
        if not self.private_home:
            fd = os.open(f"{self.rootfs}.home.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # another host has the shared home: this one gets its own
            else:
                self._home_lock_fd = fd
                self._home = self.rootfs / "home" / self.user
                return
        home = self.workdir / "home"
        home.mkdir(mode=0o755)
        os.chown(home, 1000, 1000)
        self._home = home
        self._seed_home()

    def _seed_home(self) -> None:
        assert self.rootfs is not None
        for entry in (self.rootfs / "etc" / "skel").iterdir():
            if entry.is_file() and not entry.is_symlink():
                dest = self.home / entry.name
                shutil.copy2(entry, dest)
                os.chown(dest, 1000, 1000)

    def _install_key(self, pub: str) -> None:
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = ssh_dir / f".authorized_keys.{os.getpid()}.tmp"
        tmp.write_text(pub)
        os.chmod(tmp, 0o600)
        for p in (ssh_dir, tmp):
            os.chown(p, 1000, 1000)
        os.replace(tmp, ssh_dir / "authorized_keys")

    def _used_subnets(self) -> List[int]:
        out = _ip("-o", "-4", "addr", "show", check=False).stdout
        return [int(m) for m in re.findall(rf"inet {re.escape(NET_PREFIX)}\.(\d+)\.", out)]

    def _create_link(self) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        start = 1 + os.getpid() % 250
        for i in range(254):
            slot = 1 + (start - 1 + i) % 254
            fd = os.open(str(LOCK_DIR / f"nnflash-emu.{slot}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            # the slot is ours: whatever still carries its names is a leftover of a killed run
            netns, host_if, _ = self._names(slot)
            _ip("link", "del", host_if, check=False)
            _ip("netns", "del", netns, check=False)
            if slot in self._used_subnets():  # someone else's interface uses 10.214.slot.0/24
                os.close(fd)
                continue
            self._lock_fd, self.slot = fd, slot
            break
        else:
            raise RuntimeError(f"no free {NET_PREFIX}.N.0/24 slot for an emulated host")
        netns, host_if, dev_if = self._names(slot)
        self.netns = netns
        self.host_ip = f"{NET_PREFIX}.{slot}.1"
        self.host = f"{NET_PREFIX}.{slot}.2"
        ns = ["netns", "exec", netns, "ip"]
        _ip("netns", "add", netns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", dev_if)
        _ip("link", "set", dev_if, "netns", netns)
        _ip("addr", "add", f"{self.host_ip}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip(*ns, "addr", "add", f"{self.host}/24", "dev", dev_if)
        _ip(*ns, "link", "set", dev_if, "up")
        _ip(*ns, "link", "set", "lo", "up")

    def _netns_pids(self) -> List[int]:
        if not self.netns:
            return []
        out = _ip("netns", "pids", self.netns, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def stop(self) -> None:
        """Kill sshd and everything started under it, remove the link and the namespace. Idempotent."""
        atexit.unregister(self.stop)
        victims = set(self._netns_pids())
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 9)  # unshare; --kill-child takes PID 1 of the namespace with it
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
        # every process of the namespace is SIGKILLed; wait until they are really gone (a dying
        # qemu takes a moment; zombies count as gone: the kernel has released them)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            victims.update(self._netns_pids())
            victims = {pid for pid in victims if _alive(pid)}
            if not victims:
                break
            for pid in victims:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self.slot is not None:
            netns, host_if, _ = self._names(self.slot)
            _ip("link", "del", host_if, check=False)
            _ip("netns", "del", netns, check=False)
            self.slot = None
        for fd in (self._lock_fd, self._home_lock_fd, self._tree_lock_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._home_lock_fd = self._tree_lock_fd = None
        self._home = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self.key_path = None
            self.log_path = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """sshd's stderr so far (``-e``)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    # -- helpers -----------------------------------------------------------------------------------

    def reset_home(self) -> None:
        """Empty /home/pi except .ssh and restore the skeleton dotfiles (works running or not;
        processes of pi's still running keep whatever they have open)."""
        for entry in self.home.iterdir():
            if entry.name == ".ssh":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                try:
                    entry.unlink()
                except FileNotFoundError:
                    pass
        self._seed_home()

    def ssh_argv(self) -> List[str]:
        """``ssh`` and its options up to and including the target; append a remote command."""
        assert self.key_path is not None, "not started"
        return ["ssh", *_SSH_OPTS, "-i", str(self.key_path), "-p", str(self.port), self.target]

    @staticmethod
    def _client_env() -> Dict[str, str]:
        # ssh forwards LANG/LC_* (SendEnv); the rootfs has no locales beyond C.UTF-8
        return {k: v for k, v in os.environ.items() if k != "LANG" and not k.startswith("LC_")}

    def exec(
        self, cmd: str, timeout: float = 300.0, check: bool = False, input: Optional[str] = None
    ) -> subprocess.CompletedProcess:
        """Run ``cmd`` (a shell command line) as pi over the real ssh client; text output captured."""
        return subprocess.run(
            self.ssh_argv() + [cmd],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=self._client_env(),
        )

    def put(self, local: Path, remote: str, timeout: float = 300.0) -> None:
        """Copy a local file to ``remote`` on the device (over ssh, as pi)."""
        with open(local, "rb") as fh:
            subprocess.run(
                self.ssh_argv() + [f"cat > '{remote}'"],
                stdin=fh,
                capture_output=True,
                timeout=timeout,
                check=True,
                env=self._client_env(),
            )


@pytest.fixture(scope="session", name="emu_host")
def emu_host_fixture() -> Iterator[EmuHost]:
    """Fixture ``emu_host``: a started EmuHost for the whole session (skips only when not root or
    without ``ip netns``). Import ``emu_host_fixture`` into a test module and ask for ``emu_host``."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    host = EmuHost()
    host.start()
    try:
        yield host
    finally:
        host.stop()
