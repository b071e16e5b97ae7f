"""SSH host-key policy: which keys a device may present, and pinning new ones.

Host keys are verified against ``~/.ssh/known_hosts`` (read only) and nnflash's own pinned file
(``<config dir>/known_hosts``):

- an unknown host is refused with :class:`HostKeyError` naming the host, key type and SHA256
  fingerprint, unless ``accept_new_host_key=True`` (``--accept-new-host-key``), which pins the key
  in nnflash's file like OpenSSH's ``StrictHostKeyChecking=accept-new``;
- a *changed* key (or a host known only with another key type) is always refused.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any, List, Optional, Protocol, Tuple

from nnflash.controller.errors import HostKeyError
from nnflash.controller.inventory import default_config_dir

__all__ = [
    "HostKeyOwner",
    "apply_host_keys",
    "changed_key_error",
    "default_known_hosts_path",
    "default_pinned_hosts_path",
    "fingerprint",
    "hostkey_name",
    "load_host_keys",
]


def default_known_hosts_path() -> Path:
    """The user's OpenSSH known_hosts (read, never written)."""
    return Path.home() / ".ssh" / "known_hosts"


def default_pinned_hosts_path() -> Path:
    """nnflash's own known_hosts: keys pinned by ``--accept-new-host-key``."""
    return default_config_dir() / "known_hosts"


def fingerprint(key: Any) -> str:
    """OpenSSH-style fingerprint of a paramiko key: ``SHA256:<base64 without padding>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def hostkey_name(host: str, port: int) -> str:
    """The name a host's key is recorded under in known_hosts (``[host]:port`` unless port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def load_host_keys(path: Path) -> Any:
    """A ``paramiko.HostKeys`` read from ``path`` (empty when it is not a file)."""
    import paramiko

    keys = paramiko.HostKeys()
    if path.is_file():
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"cannot read known hosts file {path}: {exc}") from None
    return keys


class HostKeyOwner(Protocol):
    """What the policy needs from a connection (:class:`~.ssh.SSHConnection` is one)."""

    known_hosts_path: Path
    pinned_hosts_path: Path
    accept_new_host_key: bool
    #: (name, key type, fingerprint) when a key was pinned on this connection
    pinned_key: Optional[Tuple[str, str, str]]

    @property
    def name(self) -> str: ...


def _files_with(owner: HostKeyOwner, name: str, known: Any, pinned: Any) -> str:
    """The known_hosts file(s) that record ``name``, for the ``ssh-keygen -R`` hint."""
    files = []
    if known.lookup(name) is not None:
        files.append(str(owner.known_hosts_path))
    if pinned.lookup(name) is not None:
        files.append(str(owner.pinned_hosts_path))
    return " / ".join(files) or str(owner.pinned_hosts_path)


def _pin(owner: HostKeyOwner, name: str, key: Any) -> None:
    """Append ``name``'s key to the pinned file (created 0600) and record it on ``owner``."""
    path = owner.pinned_hosts_path
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as fh:
            fh.write(f"{name} {key.get_name()} {key.get_base64()}\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise HostKeyError(f"cannot record the host key of {name} in {path}: {exc.strerror or exc}") from None
    owner.pinned_key = (name, key.get_name(), fingerprint(key))


class _Policy:
    """paramiko MissingHostKeyPolicy: refuse unknown hosts unless accept-new; never accept a host
    that is known with a different key type (treated as a changed key)."""

    def __init__(self, conn: HostKeyOwner, known: Any, pinned: Any) -> None:
        self.conn = conn
        self.known = known
        self.pinned = pinned

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        conn = self.conn
        fp = fingerprint(key)
        recorded: List[str] = []
        for keys in (self.known, self.pinned):
            entry = keys.lookup(hostname)
            if entry is not None:
                recorded.extend(f"{t} {fingerprint(k)}" for t, k in entry.items())
        if recorded:
            raise HostKeyError(
                f"HOST KEY CHANGED for {hostname} (device {conn.name}): known as "
                f"{', '.join(recorded)}, the server offered {key.get_name()} {fp}. Refusing to "
                f"connect. If the change is expected, remove the old key (ssh-keygen -R "
                f"'{hostname}' -f {_files_with(conn, hostname, self.known, self.pinned)}) and "
                "connect again with --accept-new-host-key."
            )
        if not conn.accept_new_host_key:
            raise HostKeyError(
                f"unknown host key for {hostname} (device {conn.name}): {key.get_name()} {fp}. "
                "Check the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), "
                "then connect again with --accept-new-host-key to pin it in "
                f"{conn.pinned_hosts_path}."
            )
        _pin(conn, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


def apply_host_keys(client: Any, owner: HostKeyOwner) -> Tuple[Any, Any]:
    """Load both known_hosts files into a ``paramiko.SSHClient`` and install the policy; returns
    ``(known, pinned)`` for :func:`changed_key_error`."""
    known = load_host_keys(owner.known_hosts_path)
    pinned = load_host_keys(owner.pinned_hosts_path)
    for keys in (known, pinned):
        for name in keys.keys():
            for ktype, key in keys[name].items():
                client.get_host_keys().add(name, ktype, key)
    client.set_missing_host_key_policy(_Policy(owner, known, pinned))
    return known, pinned


def changed_key_error(owner: HostKeyOwner, name: str, exc: Any, known: Any, pinned: Any) -> HostKeyError:
    """The error for paramiko's ``BadHostKeyException`` (the server's key differs from the one
    recorded for ``name``)."""
    where = _files_with(owner, name, known, pinned)
    return HostKeyError(
        f"HOST KEY CHANGED for {name} (device {owner.name}): expected "
        f"{exc.expected_key.get_name()} {fingerprint(exc.expected_key)}, the server "
        f"offered {exc.key.get_name()} {fingerprint(exc.key)}. This is either a "
        "reinstalled device or an attack; refusing to connect. If the change is "
        f"expected, remove the old key (ssh-keygen -R '{name}' -f {where}) and connect "
        "again with --accept-new-host-key."
    )
