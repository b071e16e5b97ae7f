"""Install the agent on a device over SSH, offline: ``nnflash agent install`` / ``uninstall``.

Devices in a lab often have no internet access, so nothing is downloaded *on the device*:

1. **detect** (one ``python3`` snippet over SSH): machine, 32/64-bit userland, OS, Python, glibc,
   home directory. A 64-bit kernel with a 32-bit userland counts as ``armv7l``.
2. **check** the platform against the runtimes asked for (:func:`plan_install`): onnxruntime and
   ai-edge-litert publish wheels for aarch64 and x86_64 only; on 32-bit ARM only tflite-runtime
   2.14.0 (``tflite-legacy``) works. Anything else is a clear error naming what does work.
3. **fetch** on this workstation, with pip, the wheels for the device's platform tags and Python
   (``pip download --only-binary=:all: --platform ... --python-version ...``), through a local
   cache (``$XDG_CACHE_HOME/nnflash/wheels/<tag>``) so a second device of the same kind, or a
   workstation that went offline, needs no index. The agent's own wheel is built from this
   repository (:mod:`nnflash.controller.agent_wheel`).
4. **ship** them over SFTP into ``<prefix>/wheels`` (skipping files whose sha256 already matches,
   verifying every upload on the device, removing wheels no longer needed).
5. **install** into a venv ``<prefix>/venv`` (PEP 668: never the system Python) with
   ``pip install --no-index --find-links <prefix>/wheels``; ``<prefix>/install.json`` records what
   was installed, so a re-run with the same agent, runtimes and Python changes nothing, and a new
   agent build is an upgrade.
6. **selftest** the installed agent remotely (every runtime asked for must pass) and record the
   device facts and the agent command in the inventory (the CLI does that part).

``<prefix>`` defaults to ``~/.local/share/nnflash-agent`` of the SSH user.

Every command and upload goes over one :class:`~nnflash.controller.transport.ssh.SSHSession` (the
transport's exec and SFTP code, host-key rules included) that the caller opens with
:meth:`SSHConnection.open_session <nnflash.controller.transport.ssh.SSHConnection.open_session>`.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from nnflash.controller.agent_wheel import AGENT_VERSION, agent_dependencies, build_agent_wheel, wheel_name
from nnflash.controller.errors import NnflashError
from nnflash.controller.inventory import Device
from nnflash.controller.transport.ssh import CommandResult, SSHSession
from nnflash_agent.fileio import sha256_file
from nnflash_agent.runners import RUNTIMES

__all__ = [
    "DEFAULT_PREFIX",
    "InstallError",
    "InstallPlan",
    "InstallReport",
    "detect_platform",
    "install_agent",
    "pip_platform_tags",
    "plan_install",
    "render_unit",
    "uninstall_agent",
]

DEFAULT_PREFIX = "~/.local/share/nnflash-agent"
METER_EXTRAS = {"none": None, "estimate": None, "rapl": None, "ina219": "i2c", "ina260": "i2c", "um25c": "usb"}
_MIN_PYTHON = (3, 9)
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[str], None]


class InstallError(NnflashError, RuntimeError):
    """The agent cannot be installed on (or removed from) a device."""


# --------------------------------------------------------------------------------------------------
# Commands and files on the device, over the transport's SSHSession


def _python(remote: SSHSession, python: str, code: str, *args: str, timeout_s: float = 120.0) -> CommandResult:
    """Run ``code`` with the device's ``python`` (the code travels on stdin: no quoting)."""
    argv = " ".join(shlex.quote(a) for a in args)
    return remote.run(f"{python} - {argv}", timeout_s=timeout_s, stdin=code.encode())


def _python_json(remote: SSHSession, python: str, code: str, *args: str, what: str, timeout_s: float = 120.0) -> Any:
    """:func:`_python`, then the last line of its output read as JSON (``what`` names the job in
    errors)."""
    res = _python(remote, python, code, *args, timeout_s=timeout_s)
    if res.rc != 0:
        raise InstallError(f"{remote.describe}: {what} failed: {_last_line(res.err) or f'exit code {res.rc}'}")
    try:
        return json.loads(res.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InstallError(f"{remote.describe}: {what}: unexpected answer {res.out[:200]!r}") from None


def _put(remote: SSHSession, local: Path, path: str) -> None:
    """Upload ``local`` to ``path`` under a temporary name, then rename it into place."""
    tmp = path + ".part"
    remote.upload(local, tmp)
    remote.rename(tmp, path)


# --------------------------------------------------------------------------------------------------
# Detection and planning

_DETECT = r"""
import json, os, platform, struct, sys
osr = {}
try:
    with open("/etc/os-release") as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            if k:
                osr[k] = v.strip().strip('"')
except OSError:
    pass
model = None
for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
    try:
        with open(path, "rb") as f:
            model = f.read().rstrip(b"\0").decode("utf-8", "replace")
        break
    except OSError:
        pass
libc, libc_ver = platform.libc_ver()
ensurepip = True
try:
    import ensurepip as _e  # noqa
except ImportError:
    ensurepip = False
import pwd
try:
    user = pwd.getpwuid(os.getuid()).pw_name
except KeyError:
    user = None
print(json.dumps({
    "uid": os.getuid(), "user": user, "systemd": os.path.isdir("/run/systemd/system"),
    "machine": platform.machine(), "system": platform.system(), "bits": struct.calcsize("P") * 8,
    "python": platform.python_version(), "implementation": platform.python_implementation(),
    "libc": libc, "libc_version": libc_ver, "home": os.path.expanduser("~"),
    "os": osr.get("PRETTY_NAME"), "os_id": osr.get("ID"), "os_version_codename": osr.get("VERSION_CODENAME"),
    "board": model, "has_ensurepip": ensurepip, "kernel": platform.release(),
}))
"""


def detect_platform(remote: SSHSession, python: str = "python3") -> Dict[str, Any]:
    """What the device is, from its own Python. Adds ``arch``: the userland architecture (a 32-bit
    userland on a 64-bit ARM kernel is ``armv7l``)."""
    res = remote.run(f"command -v {python}")
    if res.rc != 0:
        raise InstallError(
            f"{remote.describe}: no {python} on the device; install Python 3.9 or newer "
            "(Raspberry Pi OS ships python3; on Debian: sudo apt install python3 python3-venv)"
        )
    facts = _python_json(remote, python, _DETECT, what=f"detecting the device with {python}")
    machine = str(facts.get("machine") or "")
    arch = machine
    if machine in ("aarch64", "arm64"):
        arch = "aarch64" if facts.get("bits") == 64 else "armv7l"
    elif machine.startswith("armv"):
        arch = "armv7l" if machine.startswith(("armv7", "armv8")) else machine
    elif machine in ("amd64", "x86_64"):
        arch = "x86_64" if facts.get("bits") == 64 else "i686"
    facts["arch"] = arch
    return facts


@dataclass(frozen=True)
class InstallPlan:
    """What to install on a device: ``extras`` of the agent wheel and the requirement strings the
    wheels are fetched for, for one platform (``tags``) and Python (``python_tag``)."""

    arch: str
    python_version: str  # "3.11"
    python_tag: str  # "cp311"
    tags: Tuple[str, ...]
    runtimes: Tuple[str, ...]
    extras: Tuple[str, ...]
    requirements: Tuple[str, ...]

    @property
    def cache_key(self) -> str:
        return f"{self.python_tag}-{self.tags[0]}"

    @property
    def agent_requirement(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"nnflash-agent{extras}=={AGENT_VERSION}"


def pip_platform_tags(arch: str, libc: str, libc_version: str) -> Tuple[str, ...]:
    """pip ``--platform`` tags a device accepts, most specific first (manylinux down to 2_17)."""
    if libc != "glibc":
        raise InstallError(
            f"unsupported C library {libc or 'unknown'!r}: the agent's runtimes publish wheels for glibc "
            "Linux only (Raspberry Pi OS, Debian, Ubuntu)"
        )
    m = re.match(r"^2\.(\d+)", libc_version or "")
    if not m:
        raise InstallError(f"cannot read the device's glibc version ({libc_version!r})")
    minor = int(m.group(1))
    if minor < 17:
        raise InstallError(f"glibc 2.{minor} is too old: the runtimes' wheels need glibc 2.17 or newer")
    tags = [f"manylinux_2_{k}_{arch}" for k in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    if arch == "armv7l":
        tags.append("linux_armv7l")  # tflite-runtime's armv7l wheels carry the plain linux tag
    return tuple(tags)


def plan_install(facts: Dict[str, Any], runtimes: Sequence[str], meter: Optional[str] = None) -> InstallPlan:
    """Check the device against what was asked for; raise :class:`InstallError` with what works
    otherwise."""
    arch = str(facts.get("arch") or "")
    if facts.get("system") != "Linux":
        raise InstallError(f"unsupported system {facts.get('system')!r}: the agent installs on Linux devices")
    if facts.get("implementation") not in (None, "CPython"):
        raise InstallError(f"unsupported Python implementation {facts.get('implementation')}: CPython is needed")
    pyver = str(facts.get("python") or "")
    try:
        major, minor = (int(x) for x in pyver.split(".")[:2])
    except ValueError:
        raise InstallError(f"cannot read the device's Python version ({pyver!r})") from None
    if (major, minor) < _MIN_PYTHON:
        raise InstallError(f"the device has Python {pyver}; the agent needs Python 3.9 or newer")
    runtimes = tuple(dict.fromkeys(runtimes))
    if not runtimes:
        raise InstallError(f"--runtime: name at least one runtime ({', '.join(RUNTIMES)})")
    for r in runtimes:
        if r not in RUNTIMES:
            raise InstallError(f"--runtime: unknown runtime {r!r} (choose from {', '.join(RUNTIMES)})")
    extras: List[str] = []
    if arch in ("aarch64", "x86_64"):
        extras += [r for r in runtimes]
    elif arch == "armv7l":
        if "onnxruntime" in runtimes:
            raise InstallError(
                "onnxruntime publishes no wheels for 32-bit ARM (armv7l): use --runtime tflite "
                "(tflite-runtime 2.14.0 has armv7l wheels for Python up to 3.11), or install the 64-bit "
                "Raspberry Pi OS, where onnxruntime and ai-edge-litert both work"
            )
        if (major, minor) > (3, 11):
            raise InstallError(
                f"on 32-bit ARM (armv7l) only tflite-runtime 2.14.0 works, and it needs Python <= 3.11 "
                f"(the device has {pyver}): install the 64-bit Raspberry Pi OS"
            )
        extras.append("tflite-legacy")
    else:
        raise InstallError(
            f"unsupported architecture {arch or facts.get('machine')!r}: the runtimes publish wheels for aarch64 "
            "(64-bit Raspberry Pi OS) and x86_64; on 32-bit ARM (armv7l) only --runtime tflite works"
        )
    if meter is not None:
        if meter not in METER_EXTRAS:
            raise InstallError(f"--meter: unknown energy meter {meter!r} (choose from {', '.join(METER_EXTRAS)})")
        if METER_EXTRAS[meter]:
            extras.append(str(METER_EXTRAS[meter]))
    requires, extra_reqs = agent_dependencies()
    reqs: List[str] = list(requires)
    for extra in extras:
        reqs += list(extra_reqs[extra])
    tags = pip_platform_tags(arch, str(facts.get("libc") or ""), str(facts.get("libc_version") or ""))
    return InstallPlan(
        arch=arch,
        python_version=f"{major}.{minor}",
        python_tag=f"cp{major}{minor}",
        tags=tags,
        runtimes=runtimes,
        extras=tuple(extras),
        requirements=tuple(reqs),
    )


# --------------------------------------------------------------------------------------------------
# Wheels (host side)


def default_wheel_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "nnflash" / "wheels"


def _pip_download(plan: InstallPlan, dest: Path, sources: Sequence[Path], offline: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-input"]
    cmd += ["--only-binary=:all:", "--python-version", plan.python_version, "--implementation", "cp"]
    for abi in (plan.python_tag, "abi3", "none"):
        cmd += ["--abi", abi]
    for tag in plan.tags:
        cmd += ["--platform", tag]
    if offline:
        cmd.append("--no-index")
    for src in sources:
        cmd += ["--find-links", str(src)]
    cmd += ["-d", str(dest), *plan.requirements]
    env = dict(os.environ, PIP_NO_INPUT="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def fetch_wheels(
    plan: InstallPlan, work_dir: Path, *, cache_dir: Optional[Path] = None, wheelhouse: Optional[Path] = None
) -> List[Path]:
    """The wheels to ship (the agent's own included), in ``work_dir``.

    Resolution tries, in order: the cache (and ``wheelhouse``) only, without an index; then the
    package index with the cache as an extra source (new files are added to the cache). With a
    ``wheelhouse`` the index is never used."""
    cache = (cache_dir or default_wheel_cache()) / plan.cache_key
    cache.mkdir(parents=True, exist_ok=True)
    dest = work_dir / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    sources = [cache] + ([wheelhouse] if wheelhouse else [])
    res = _pip_download(plan, dest, sources, offline=True)
    if res.returncode != 0 and wheelhouse is None:
        res = _pip_download(plan, dest, sources, offline=False)
    if res.returncode != 0:
        where = f"the wheelhouse {wheelhouse}" if wheelhouse else "the package index"
        raise InstallError(
            f"cannot fetch wheels for {plan.arch} / Python {plan.python_version} from {where}: {_pip_error(res.stderr)}"
        )
    for whl in dest.glob("*.whl"):
        target = cache / whl.name
        if not target.exists():
            shutil.copy2(whl, target)
    build_agent_wheel(dest)
    return sorted(dest.glob("*.whl"))


def _pip_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "is ignored" not in ln]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors[0] if errors else (lines[-1] if lines else "pip failed")).removeprefix("ERROR: ")


# --------------------------------------------------------------------------------------------------
# Device side

_HASHES = r"""
import hashlib, json, os, sys
d = sys.argv[1]
out = {}
if os.path.isdir(d):
    for n in sorted(os.listdir(d)):
        p = os.path.join(d, n)
        if os.path.isfile(p) and n.endswith(".whl"):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            out[n] = h.hexdigest()
print(json.dumps(out))
"""

_READ_STATE = r"""
import json, sys
try:
    with open(sys.argv[1]) as f:
        print(json.dumps(json.load(f)))
except (OSError, ValueError):
    print("null")
"""


@dataclass
class InstallReport:
    device: str
    prefix: str
    agent_command: str
    agent_version: str
    action: str  # "installed", "upgraded", "unchanged"
    facts: Dict[str, Any]
    runtimes: Tuple[str, ...]
    wheels: List[str]
    shipped_bytes: int
    uploaded_bytes: int
    selftest: Dict[str, Any]
    service: Optional[str] = None
    seconds: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "device": self.device,
            "prefix": self.prefix,
            "agent_command": self.agent_command,
            "agent_version": self.agent_version,
            "action": self.action,
            "machine": self.facts.get("arch"),
            "os": self.facts.get("os"),
            "python": self.facts.get("python"),
            "glibc": self.facts.get("libc_version"),
            "runtimes": list(self.runtimes),
            "wheels": self.wheels,
            "shipped_bytes": self.shipped_bytes,
            "uploaded_bytes": self.uploaded_bytes,
            "selftest": self.selftest,
            "service": self.service,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def resolve_prefix(prefix: str, home: str) -> str:
    if prefix == "~" or prefix.startswith("~/"):
        prefix = home.rstrip("/") + prefix[1:]
    if not prefix.startswith("/"):
        raise InstallError(f"--prefix must be an absolute path or start with ~/ (got {prefix!r})")
    norm = posixpath.normpath(prefix)
    if norm in ("/", home.rstrip("/")) or norm.count("/") < 2:
        raise InstallError(f"--prefix {prefix!r} is too broad: use a directory of its own, e.g. {DEFAULT_PREFIX}")
    return norm


def _ship(remote: SSHSession, wheels: Sequence[Path], wheel_dir: str, progress: Progress) -> int:
    res = remote.run(f"mkdir -p {shlex.quote(wheel_dir)}")
    if res.rc != 0:
        raise InstallError(f"{remote.describe}: cannot create {wheel_dir}: {_last_line(res.err)}")
    present = _remote_hashes(remote, wheel_dir)
    wanted = {w.name: sha256_file(w) for w in wheels}
    uploaded = 0
    for w in wheels:
        if present.get(w.name) == wanted[w.name]:
            continue
        progress(f"uploading {w.name} ({w.stat().st_size / 1e6:.1f} MB)")
        _put(remote, w, posixpath.join(wheel_dir, w.name))
        uploaded += w.stat().st_size
    after = _remote_hashes(remote, wheel_dir)
    bad = [n for n, h in wanted.items() if after.get(n) != h]
    if bad:
        raise InstallError(
            f"{remote.describe}: uploaded wheels failed the sha256 check on the device: {', '.join(bad)}"
        )
    for stale in sorted(set(after) - set(wanted)):
        remote.run(f"rm -f {shlex.quote(posixpath.join(wheel_dir, stale))}")
    return uploaded


def _remote_hashes(remote: SSHSession, wheel_dir: str) -> Dict[str, str]:
    data = _python_json(remote, "python3", _HASHES, wheel_dir, what=f"hashing {wheel_dir}", timeout_s=600)
    if not isinstance(data, dict):
        raise InstallError(f"{remote.describe}: hashing {wheel_dir}: unexpected answer")
    return {k: v for k, v in data.items() if isinstance(v, str) and _SHA_RE.match(v)}


def _read_state(remote: SSHSession, path: str) -> Optional[Dict[str, Any]]:
    res = _python(remote, "python3", _READ_STATE, path)
    try:
        state = json.loads(res.out.strip().splitlines()[-1]) if res.rc == 0 else None
    except (ValueError, IndexError):
        return None
    return state if isinstance(state, dict) else None


def run_selftest(remote: SSHSession, venv: str, runtimes: Sequence[str]) -> Dict[str, Any]:
    """The installed agent's ``selftest --json``; every runtime in ``runtimes`` must pass."""
    agent = posixpath.join(venv, "bin", "nnflash-agent")
    res = remote.run(f"{shlex.quote(agent)} selftest --json", timeout_s=900)
    try:
        report = json.loads(res.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = _last_line(res.err) or _last_line(res.out) or f"exit code {res.rc}"
        raise InstallError(f"{remote.describe}: the installed agent's selftest did not run: {detail}") from None
    failed = []
    for r in runtimes:
        entry = (report.get("runtimes") or {}).get(r) or {}
        if entry.get("status") != "ok":
            failed.append(f"{r}: {entry.get('error') or entry.get('status') or 'not reported'}")
    if failed:
        raise InstallError(f"{remote.describe}: agent selftest failed for {'; '.join(failed)}")
    return report


SERVICE_UNIT = "nnflash-agent@.service"
SERVICE_UNIT_PATH = "/etc/systemd/system/" + SERVICE_UNIT
_UNIT_TEMPLATE = """\
# nnflash: the long-running agent of user %i (written by `nnflash agent install --service`).
#
# It listens on a UNIX socket in the user's cache directory (~/.cache/nnflash-agent/agent.sock,
# mode 0600); nothing listens on the network. The controller reaches it over SSH with
# `nnflash-agent connect --fallback`, which starts an on-demand agent when this one is not running.
# Keeping it running saves the start-up (Python, numpy and the runtime read from the SD card and
# imported) at every connection, and keeps a spare measurement worker ready.
#
# By hand, for the user pi:
#   sudo install -m 0644 nnflash-agent@.service /etc/systemd/system/
#   sudo systemctl daemon-reload
#   sudo systemctl enable --now nnflash-agent@pi.service

[Unit]
Description=nnflash long-running measurement agent for %i
ConditionPathExists={venv}/bin/nnflash-agent
After=network.target nnflash-governor.service

[Service]
Type=simple
User=%i
# Checks the installation (and reads the runtimes into the page cache) before serving.
ExecStartPre={venv}/bin/nnflash-agent selftest
ExecStart={venv}/bin/nnflash-agent serve --socket --prespawn
Restart=on-failure
RestartSec=5
TimeoutStartSec=10min
NoNewPrivileges=yes

[Install]
WantedBy=multi-user.target
"""


def render_unit(prefix: str) -> str:
    """The systemd unit of the long-running agent for an install under ``prefix`` (absolute;
    ``/home/%i/...`` for the default prefix, so the template works for every user)."""
    return _UNIT_TEMPLATE.replace("{venv}", posixpath.join(prefix, "venv"))


def _sudo(facts: Dict[str, Any]) -> str:
    return "" if facts.get("uid") == 0 else "sudo -n "


def _check_service_possible(remote: SSHSession, facts: Dict[str, Any]) -> None:
    if not facts.get("systemd"):
        raise InstallError(
            f"{remote.describe}: --service needs systemd running on the device (no /run/systemd/system); "
            "install without --service: the controller then starts the agent on demand"
        )
    if facts.get("uid") != 0 and remote.run("sudo -n true").rc != 0:
        raise InstallError(
            f"{remote.describe}: --service writes {SERVICE_UNIT_PATH} and needs root: allow passwordless sudo "
            "for this user, or install the unit by hand (deploy/README.md)"
        )


def _install_service(remote: SSHSession, facts: Dict[str, Any], base: str) -> str:
    user = str(facts.get("user") or "")
    home = str(facts.get("home") or "")
    unit_prefix = base
    if home and user and (base == home or base.startswith(home.rstrip("/") + "/")) and home == f"/home/{user}":
        unit_prefix = "/home/%i" + base[len(home) :]
    sudo = _sudo(facts)
    res = remote.run(f"{sudo}tee {SERVICE_UNIT_PATH} >/dev/null", stdin=render_unit(unit_prefix).encode())
    if res.rc != 0:
        raise InstallError(f"{remote.describe}: cannot write {SERVICE_UNIT_PATH}: {_last_line(res.err)}")
    instance = f"nnflash-agent@{user}.service"
    res = remote.run(
        f"{sudo}systemctl daemon-reload && {sudo}systemctl enable {instance} && {sudo}systemctl restart {instance}",
        timeout_s=900,
    )
    if res.rc != 0:
        raise InstallError(f"{remote.describe}: cannot start {instance}: {_last_line(res.err)}")
    return instance


def _remove_service(remote: SSHSession, facts: Dict[str, Any]) -> Optional[str]:
    if remote.run(f"test -e {SERVICE_UNIT_PATH}").rc != 0:
        return None
    sudo = _sudo(facts)
    instance = f"nnflash-agent@{facts.get('user')}.service"
    if facts.get("systemd"):
        remote.run(f"{sudo}systemctl disable --now {instance}", timeout_s=120)
    others = remote.run("ls /etc/systemd/system/multi-user.target.wants/ 2>/dev/null").out.split()
    if not any(n.startswith("nnflash-agent@") for n in others):
        remote.run(f"{sudo}rm -f {SERVICE_UNIT_PATH}")
        if facts.get("systemd"):
            remote.run(f"{sudo}systemctl daemon-reload")
    return instance


def install_agent(
    remote: SSHSession,
    device: Device,
    *,
    runtimes: Sequence[str],
    meter: Optional[str] = None,
    prefix: str = DEFAULT_PREFIX,
    cache_dir: Optional[Path] = None,
    wheelhouse: Optional[Path] = None,
    force: bool = False,
    service: bool = False,
    progress: Progress = lambda _msg: None,
) -> InstallReport:
    """Install (or upgrade, or leave unchanged) the agent on ``device``; see the module docstring."""
    seconds: Dict[str, float] = {}
    t = time.perf_counter()
    progress("detecting the device")
    facts = detect_platform(remote)
    plan = plan_install(facts, runtimes, meter)
    base = resolve_prefix(prefix, str(facts.get("home") or "/"))
    wheel_dir, venv, state_path = (posixpath.join(base, p) for p in ("wheels", "venv", "install.json"))
    if service:
        _check_service_possible(remote, facts)
    seconds["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    progress(f"fetching wheels for {plan.arch}, Python {plan.python_version}")
    with tempfile.TemporaryDirectory(prefix="nnflash-install-") as tmp:
        wheels = fetch_wheels(plan, Path(tmp), cache_dir=cache_dir, wheelhouse=wheelhouse)
        agent_sha = sha256_file(Path(tmp) / "wheels" / wheel_name())
        seconds["fetch"] = time.perf_counter() - t
        t = time.perf_counter()
        progress(f"shipping {len(wheels)} wheels to {wheel_dir}")
        uploaded = _ship(remote, wheels, wheel_dir, progress)
        shipped = sum(w.stat().st_size for w in wheels)
        names = [w.name for w in wheels]
    seconds["ship"] = time.perf_counter() - t

    t = time.perf_counter()
    wanted_state = {
        "agent_version": AGENT_VERSION,
        "agent_wheel_sha256": agent_sha,
        "python": facts.get("python"),
        "arch": plan.arch,
        "extras": list(plan.extras),
        "runtimes": list(plan.runtimes),
        "wheels": names,
    }
    state = _read_state(remote, state_path)
    agent_bin = posixpath.join(venv, "bin", "nnflash-agent")
    present = remote.run(f"test -x {shlex.quote(agent_bin)}").rc == 0
    same = state is not None and {k: state.get(k) for k in wanted_state} == wanted_state
    if same and present and not force:
        action = "unchanged"
        progress("already installed and up to date")
    else:
        action = "upgraded" if state is not None and present else "installed"
        venv_python = posixpath.join(venv, "bin", "python")
        if state is None or state.get("python") != facts.get("python") or force:
            progress(f"creating the venv {venv}")
            res = remote.run(f"rm -rf {shlex.quote(venv)} && python3 -m venv {shlex.quote(venv)}", timeout_s=900)
            if res.rc != 0:
                raise InstallError(
                    f"{remote.describe}: python3 -m venv failed ({_last_line(res.err) or res.rc}); on Debian / "
                    "Raspberry Pi OS install the venv module: sudo apt install python3-venv"
                )
        progress(f"installing {plan.agent_requirement} (offline, from {wheel_dir})")
        pip = (
            f"{shlex.quote(venv_python)} -m pip install --no-index --find-links {shlex.quote(wheel_dir)} "
            "--disable-pip-version-check --no-input --no-cache-dir --quiet --upgrade"
        )
        res = remote.run(f"{pip} {shlex.quote(plan.agent_requirement)}", timeout_s=1800)
        if res.rc == 0 and action == "upgraded":
            # same version number, new build: reinstall the agent itself (dependencies stay)
            res = remote.run(f"{pip} --force-reinstall --no-deps {shlex.quote(plan.agent_requirement)}", 900)
        if res.rc != 0:
            raise InstallError(f"{remote.describe}: pip install on the device failed: {_pip_error(res.err)}")
        state_json = json.dumps({**wanted_state, "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        res = remote.run(f"cat > {shlex.quote(state_path)}", stdin=state_json.encode())
        if res.rc != 0:
            raise InstallError(f"{remote.describe}: cannot write {state_path}: {_last_line(res.err)}")
    seconds["install"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("running the agent's selftest on the device")
    selftest = run_selftest(remote, venv, plan.runtimes)
    seconds["selftest"] = time.perf_counter() - t
    command = f"{shlex.quote(agent_bin)} serve"
    unit = None
    if service:
        t = time.perf_counter()
        progress("installing and starting the long-running agent (systemd)")
        unit = _install_service(remote, facts, base)
        command = f"{shlex.quote(agent_bin)} connect --fallback"
        seconds["service"] = time.perf_counter() - t
    return InstallReport(
        device=device.name,
        prefix=base,
        agent_command=command,
        service=unit,
        agent_version=AGENT_VERSION,
        action=action,
        facts=facts,
        runtimes=plan.runtimes,
        wheels=names,
        shipped_bytes=shipped,
        uploaded_bytes=uploaded,
        selftest=selftest,
        seconds=seconds,
    )


def uninstall_agent(remote: SSHSession, *, prefix: str = DEFAULT_PREFIX, purge: bool = False) -> Dict[str, Any]:
    """Remove ``<prefix>`` (only if it holds an nnflash agent install) and the long-running agent's
    unit of this user if one was installed; with ``purge`` also the agent's artifact store and
    journal (``~/.cache/nnflash-agent``)."""
    facts = detect_platform(remote)
    base = resolve_prefix(prefix, str(facts.get("home") or "/"))
    state = _read_state(remote, posixpath.join(base, "install.json"))
    removed: List[str] = []
    if state is None:
        exists = remote.run(f"test -e {shlex.quote(base)}").rc == 0
        if exists:
            raise InstallError(
                f"{remote.describe}: {base} exists but holds no nnflash agent install (no install.json); "
                "not removing it"
            )
    else:
        res = remote.run(f"rm -rf {shlex.quote(base)}")
        if res.rc != 0:
            raise InstallError(f"{remote.describe}: cannot remove {base}: {_last_line(res.err)}")
        removed.append(base)
    unit = _remove_service(remote, facts)
    if unit:
        removed.append(unit)
    if purge:
        cache = posixpath.join(str(facts.get("home") or "/"), ".cache", "nnflash-agent")
        if remote.run(f"test -e {shlex.quote(cache)}").rc == 0:
            remote.run(f"rm -rf {shlex.quote(cache)}")
            removed.append(cache)
    return {"prefix": base, "was_installed": state is not None, "removed": removed}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""
