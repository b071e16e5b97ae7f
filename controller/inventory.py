"""Device inventory: which devices nnflash can measure on, stored as a small TOML file.

File format (one table per device; every key but ``host`` is optional)::

    [devices.pi3]
    host = "192.168.1.50"        # or an alias from ~/.ssh/config
    port = 22
    user = "pi"
    key_file = "~/.ssh/id_ed25519"
    agent_command = "nnflash-agent serve"
    runtime = "onnxruntime"      # default runtime: onnxruntime | tflite
    threads = 4
    energy = "none"              # energy meter name on the device

    [devices.pi3.facts]          # optional free-form notes (scalars only)
    board = "Raspberry Pi 3B"

Resolution rules:

* The file path is chosen by :func:`resolve_inventory_path` (explicit path > ``$NNFLASH_INVENTORY``
  > ``$XDG_CONFIG_HOME/nnflash/devices.toml`` > ``~/.config/nnflash/devices.toml``). Nothing here
  reads the environment or the home directory at import time; the CLI calls the resolver.
* ``~/.ssh/config`` is honoured: a key *absent* from a device's table (``host`` as alias ->
  ``HostName``, ``port``, ``user``, ``key_file`` -> first ``IdentityFile``) is taken from the
  matching ``Host`` block. Keys written in the inventory win. Other ssh_config options (ProxyJump,
  ...) are not supported.
* The built-in device ``local`` (the agent as a local subprocess of this Python, no SSH) is always
  present, is never written to the file, and cannot be added, replaced or removed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Mapping, Optional

from nnflash.controller.errors import InventoryError
from nnflash_agent.fileio import atomic_write_text
from nnflash_agent.runners import RUNTIMES

__all__ = [
    "Device",
    "Inventory",
    "LOCAL_DEVICE_NAME",
    "DEFAULT_AGENT_COMMAND",
    "default_config_dir",
    "default_ssh_config_path",
    "resolve_inventory_path",
    "local_device",
    "dump_toml",
]

LOCAL_DEVICE_NAME = "local"
DEFAULT_AGENT_COMMAND = "nnflash-agent serve"
KINDS = ("ssh", "local")
INVENTORY_ENV = "NNFLASH_INVENTORY"
INVENTORY_FILENAME = "devices.toml"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Keys a device table may hold, in the order they are written.
_FIELD_ORDER = (
    "kind",
    "host",
    "port",
    "user",
    "key_file",
    "agent_command",
    "runtime",
    "threads",
    "energy",
    "facts",
)
# Keys that ~/.ssh/config may fill in when the inventory does not give them.
_SSH_CONFIG_KEYS = ("host", "port", "user", "key_file")


def _frozen_facts(facts: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
    return MappingProxyType(dict(facts or {}))


@dataclass(frozen=True)
class Device:
    """One device as the controller sees it (effective values, after ~/.ssh/config resolution).

    ``kind`` is ``"ssh"`` (agent started over SSH) or ``"local"`` (agent as a local subprocess;
    ``host``, ``port``, ``user`` and ``key_file`` are ignored and ``agent_command`` is run locally).
    ``facts`` is free-form static information written by the user; the facts the agent reports are
    stored in the results database, not here.
    """

    name: str
    host: str = ""
    port: int = 22
    user: Optional[str] = None
    key_file: Optional[str] = None
    agent_command: str = DEFAULT_AGENT_COMMAND
    runtime: str = "onnxruntime"
    threads: Optional[int] = None
    energy: str = "none"
    kind: str = "ssh"
    facts: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "facts", _frozen_facts(self.facts))
        _validate(self)

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def is_builtin(self) -> bool:
        return self.name == LOCAL_DEVICE_NAME

    @property
    def agent_argv(self) -> List[str]:
        """The agent command split like a POSIX shell would (for local subprocesses)."""
        return shlex.split(self.agent_command)

    def replace(self, **changes: Any) -> Device:
        return dataclasses.replace(self, **changes)

    def to_table(self) -> Dict[str, Any]:
        """The TOML table for this device: only keys that differ from the defaults."""
        defaults = Device(name=self.name, host=self.host or "x", kind=self.kind)
        table: Dict[str, Any] = {}
        for key in _FIELD_ORDER:
            value = getattr(self, key)
            if key == "facts":
                if value:
                    table["facts"] = dict(value)
                continue
            if key == "host":
                if value:
                    table["host"] = value
                continue
            if value != getattr(defaults, key):
                table[key] = value
        return table

    def to_dict(self) -> Dict[str, Any]:
        """All fields, JSON-friendly (for ``devices list --json``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["facts"] = dict(self.facts)
        return out


def _validate(dev: Device) -> None:
    where = f"device {dev.name!r}"
    if not isinstance(dev.name, str) or not _NAME_RE.match(dev.name):
        raise InventoryError(
            f"invalid device name {dev.name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    if dev.kind not in KINDS:
        raise InventoryError(f"{where}: kind must be one of {', '.join(KINDS)}, not {dev.kind!r}")
    if not isinstance(dev.host, str):
        raise InventoryError(f"{where}: host must be a string")
    if dev.kind == "ssh":
        if not dev.host:
            raise InventoryError(f"{where}: host is required for an SSH device")
        if any(c.isspace() for c in dev.host) or dev.host.startswith("-"):
            raise InventoryError(f"{where}: invalid host {dev.host!r}")
    if isinstance(dev.port, bool) or not isinstance(dev.port, int) or not 1 <= dev.port <= 65535:
        raise InventoryError(f"{where}: port must be an integer in 1..65535, not {dev.port!r}")
    for key in ("user", "key_file"):
        value = getattr(dev, key)
        if value is not None and (not isinstance(value, str) or not value):
            raise InventoryError(f"{where}: {key} must be a non-empty string")
    if dev.user is not None and (any(c.isspace() for c in dev.user) or dev.user.startswith("-")):
        raise InventoryError(f"{where}: invalid user {dev.user!r}")
    if not isinstance(dev.agent_command, str) or not dev.agent_command.strip():
        raise InventoryError(f"{where}: agent_command must be a non-empty string")
    try:
        shlex.split(dev.agent_command)
    except ValueError as exc:
        raise InventoryError(f"{where}: agent_command cannot be parsed: {exc}") from None
    if dev.runtime not in RUNTIMES:
        raise InventoryError(f"{where}: runtime must be one of {', '.join(RUNTIMES)}, not {dev.runtime!r}")
    if dev.threads is not None and (
        isinstance(dev.threads, bool) or not isinstance(dev.threads, int) or dev.threads < 1
    ):
        raise InventoryError(f"{where}: threads must be a positive integer, not {dev.threads!r}")
    if not isinstance(dev.energy, str) or not dev.energy:
        raise InventoryError(f"{where}: energy must be a meter name (or 'none')")
    for key, value in dev.facts.items():
        if not isinstance(key, str) or not _is_scalar(value):
            raise InventoryError(f"{where}: facts must map names to strings, numbers or booleans")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def local_device(python: Optional[str] = None) -> Device:
    """The built-in ``local`` device: this Python running ``-m nnflash_agent.cli serve`` as a subprocess."""
    exe = python or sys.executable
    return Device(
        name=LOCAL_DEVICE_NAME,
        kind="local",
        agent_command=f"{shlex.quote(exe)} -m nnflash_agent.cli serve",
    )


# --------------------------------------------------------------------------------------------------
# Paths


def default_config_dir(env: Optional[Mapping[str, str]] = None) -> Path:
    """``$XDG_CONFIG_HOME/nnflash`` or ``~/.config/nnflash``."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg).expanduser() / "nnflash"
    home = env.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".config" / "nnflash"


def default_ssh_config_path(env: Optional[Mapping[str, str]] = None) -> Path:
    env = os.environ if env is None else env
    home = env.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".ssh" / "config"


def resolve_inventory_path(
    explicit: Optional[os.PathLike[str] | str] = None, env: Optional[Mapping[str, str]] = None
) -> Path:
    """Where the inventory lives: explicit path > ``$NNFLASH_INVENTORY`` > the config directory."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit).expanduser()
    from_env = env.get(INVENTORY_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return default_config_dir(env) / INVENTORY_FILENAME


# --------------------------------------------------------------------------------------------------
# TOML


def _load_toml_text(text: str) -> Dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]
    return tomllib.loads(text)


_HEADER = (
    "nnflash device inventory (written by `nnflash devices`; hand edits are kept).\n"
    "The built-in device 'local' is not listed here."
)


def _new_document(header: str = "") -> Any:
    """An empty ``tomlkit`` document starting with ``header`` as comment lines."""
    import tomlkit

    doc = tomlkit.document()
    if header:
        for line in header.splitlines():
            doc.add(tomlkit.comment(line))
        doc.add(tomlkit.nl())
    return doc


def dump_toml(data: Mapping[str, Any], header: str = "") -> str:
    """``data`` (nested tables of scalars and lists of scalars) as TOML text, ``header`` first as
    comment lines."""
    doc = _new_document(header)
    doc.update(data)
    return str(doc.as_string())


def _plain(value: Any) -> Any:
    """A ``tomlkit`` item as the plain Python value it holds."""
    return value.unwrap() if hasattr(value, "unwrap") else value


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    return type(a) is type(b) and a == b


def _new_table(values: Mapping[str, Any]) -> Any:
    """A ``tomlkit`` table (``[a.b]`` header; nested mappings become sub-tables)."""
    import tomlkit

    table = tomlkit.table()
    for key, value in values.items():
        table[key] = _new_table(value) if isinstance(value, Mapping) else value
    return table


def _sync_table(table: Any, wanted: Mapping[str, Any], keep: Mapping[str, Any]) -> None:
    """Edit the ``tomlkit`` table ``table`` in place so that it holds ``wanted``, touching only the
    keys whose values change: comments, order and layout of the rest stay as the user wrote them.
    A key absent from ``wanted`` is kept when its value equals ``keep[key]`` (a default the user
    wrote out), else deleted."""
    for key in list(table.keys()):
        if key not in wanted and not (key in keep and _same(table[key], keep[key])):
            del table[key]
    for key, value in wanted.items():
        current = table.get(key)
        if isinstance(value, Mapping):
            if isinstance(current, Mapping):
                _sync_table(current, value, {})
            else:
                table[key] = _new_table(value)
        elif current is None or not _same(current, value):
            table[key] = value


def _sync_devices(doc: Any, devices: Mapping[str, Device]) -> None:
    """Make ``doc``'s ``devices`` table describe ``devices``: removed devices are deleted, changed
    ones edited key by key, new ones appended (in name order)."""
    tables = doc.get("devices")
    if not isinstance(tables, Mapping):
        import tomlkit

        tables = tomlkit.table(is_super_table=True)
        doc["devices"] = tables
    for name in [n for n in tables.keys() if n not in devices]:
        del tables[name]
    for name in sorted(devices):
        dev = devices[name]
        current = tables.get(name)
        if not isinstance(current, Mapping):
            tables[name] = _new_table(dev.to_table())
            continue
        keep = {key: getattr(dev, key) for key in _FIELD_ORDER if key != "facts"}
        if not dev.facts:
            keep["facts"] = {}
        _sync_table(current, dev.to_table(), keep)


# --------------------------------------------------------------------------------------------------
# ~/.ssh/config


def _ssh_config_lookup(ssh_config_path: Optional[Path], host: str) -> Dict[str, Any]:
    if ssh_config_path is None or not host:
        return {}
    path = Path(ssh_config_path).expanduser()
    if not path.is_file():
        return {}
    import paramiko

    try:
        config = paramiko.SSHConfig.from_path(str(path))
        found = dict(config.lookup(host))
    except Exception as exc:  # paramiko raises assorted errors on malformed files
        raise InventoryError(f"cannot read SSH config {path}: {exc}") from None
    out: Dict[str, Any] = {}
    hostname = found.get("hostname")
    if hostname and hostname != host:
        out["host"] = hostname
    if "port" in found:
        try:
            out["port"] = int(found["port"])
        except ValueError:
            raise InventoryError(f"SSH config {path}: bad Port {found['port']!r} for host {host!r}") from None
    if found.get("user"):
        out["user"] = found["user"]
    identity = found.get("identityfile")
    if identity:
        out["key_file"] = os.path.expanduser(identity[0])
    return out


# --------------------------------------------------------------------------------------------------
# Inventory


class Inventory:
    """The device inventory of one TOML file plus the built-in ``local`` device.

    Devices are kept as written (so saving preserves the user's choices); :meth:`get` and
    :meth:`list` return effective devices with ``~/.ssh/config`` applied. Mutations are written
    with :meth:`save` (atomic: temp file + rename).
    """

    def __init__(
        self,
        path: Path,
        devices: Optional[Iterable[Device]] = None,
        *,
        ssh_config_path: Optional[Path] = None,
        python: Optional[str] = None,
    ) -> None:
        self.path = Path(path)
        self.ssh_config_path = ssh_config_path
        self._local = local_device(python)
        self._devices: Dict[str, Device] = {}
        for dev in devices or ():
            self._devices[dev.name] = dev
        self._text: Optional[str] = None  # the file as loaded (or last saved): what save() edits

    # ---- loading / saving

    @classmethod
    def load(
        cls,
        path: os.PathLike[str] | str,
        *,
        ssh_config_path: Optional[os.PathLike[str] | str] = None,
        python: Optional[str] = None,
    ) -> Inventory:
        """Read ``path`` (a missing file is an empty inventory). ``ssh_config_path=None`` ignores
        SSH config; the CLI passes :func:`default_ssh_config_path`."""
        p = Path(path)
        ssh_cfg = Path(ssh_config_path) if ssh_config_path is not None else None
        if not p.exists():
            return cls(p, ssh_config_path=ssh_cfg, python=python)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise InventoryError(f"cannot read inventory {p}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise InventoryError(f"inventory {p} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        try:
            data = _load_toml_text(text)
        except Exception as exc:  # tomllib.TOMLDecodeError
            raise InventoryError(f"inventory {p} is not valid TOML: {exc}") from None
        unknown = sorted(set(data) - {"devices"})
        if unknown:
            raise InventoryError(
                f"inventory {p}: unknown top-level key(s) {', '.join(unknown)} (expected [devices.NAME] tables)"
            )
        tables = data.get("devices", {})
        if not isinstance(tables, dict):
            raise InventoryError(f"inventory {p}: 'devices' must be a table of [devices.NAME] tables")
        devices = []
        for name, table in tables.items():
            if name == LOCAL_DEVICE_NAME:
                raise InventoryError(
                    f"inventory {p}: '{LOCAL_DEVICE_NAME}' is the built-in device and cannot be redefined"
                )
            devices.append(cls._device_from_table(p, name, table))
        inv = cls(p, devices, ssh_config_path=ssh_cfg, python=python)
        inv._text = text
        return inv

    @staticmethod
    def _device_from_table(path: Path, name: str, table: Any) -> Device:
        if not isinstance(table, dict):
            raise InventoryError(f"inventory {path}: devices.{name} must be a table")
        unknown = sorted(set(table) - set(_FIELD_ORDER))
        if unknown:
            raise InventoryError(
                f"inventory {path}: device {name!r} has unknown key(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(_FIELD_ORDER)}"
            )
        kwargs = dict(table)
        facts = kwargs.pop("facts", {})
        if not isinstance(facts, dict):
            raise InventoryError(f"inventory {path}: devices.{name}.facts must be a table")
        try:
            return Device(name=name, facts=facts, **kwargs)
        except InventoryError as exc:
            raise InventoryError(f"inventory {path}: {exc}") from None
        except TypeError as exc:
            raise InventoryError(f"inventory {path}: device {name!r}: {exc}") from None

    def to_toml(self) -> str:
        """The file's text with the devices as they are now.

        The file as loaded is edited, not rewritten (``tomlkit``): only the tables and keys that
        changed are touched, so the user's comments, order and layout stay. A new file starts with
        a header comment."""
        doc = None
        if self._text is not None and self._text.strip():
            import tomlkit
            from tomlkit.exceptions import ParseError

            try:
                doc = tomlkit.parse(self._text)
            except ParseError:  # read by tomllib, refused by tomlkit: write it afresh
                doc = None
        if doc is None:
            doc = _new_document(_HEADER)
        _sync_devices(doc, self._devices)
        return str(doc.as_string())

    def save(self) -> Path:
        """Write the inventory atomically; returns the path written."""
        text = self.to_toml()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, text)
        except OSError as exc:
            raise InventoryError(f"cannot write inventory {self.path}: {exc.strerror or exc}") from None
        self._text = text
        return self.path

    # ---- queries

    def names(self) -> List[str]:
        """All device names, the built-in ``local`` first."""
        return [LOCAL_DEVICE_NAME] + sorted(self._devices)

    def __contains__(self, name: object) -> bool:
        return name == LOCAL_DEVICE_NAME or name in self._devices

    def __len__(self) -> int:
        return 1 + len(self._devices)

    def get(self, name: str) -> Device:
        """The effective device ``name`` (SSH config applied); unknown names list the known ones."""
        if name == LOCAL_DEVICE_NAME:
            return self._local
        dev = self._devices.get(name)
        if dev is None:
            raise InventoryError(
                f"unknown device {name!r}; known devices: {', '.join(self.names())}"
                + ("" if self._devices else " (add one with `nnflash devices add NAME --host H`)")
            )
        return self.resolve(dev)

    def get_raw(self, name: str) -> Device:
        """The device as written in the inventory (no SSH config applied)."""
        if name == LOCAL_DEVICE_NAME:
            return self._local
        self.get(name)  # error message
        return self._devices[name]

    def list(self) -> List[Device]:
        return [self.get(name) for name in self.names()]

    def resolve(self, dev: Device) -> Device:
        """Apply ``~/.ssh/config`` to keys the inventory does not set."""
        if dev.kind != "ssh":
            return dev
        explicit = set(dev.to_table())
        found = _ssh_config_lookup(self.ssh_config_path, dev.host)
        changes = {k: v for k, v in found.items() if k in _SSH_CONFIG_KEYS and k not in explicit}
        if "host" in found:  # `host` is an alias: HostName always resolves it
            changes["host"] = found["host"]
        if not changes:
            return dev
        try:
            return dev.replace(**changes)
        except InventoryError as exc:
            raise InventoryError(f"{exc} (from SSH config {self.ssh_config_path})") from None

    # ---- mutations (call save() afterwards)

    def add(self, device: Device, *, replace: bool = False) -> Device:
        if device.name == LOCAL_DEVICE_NAME:
            raise InventoryError(
                f"'{LOCAL_DEVICE_NAME}' is the built-in device and cannot be added or replaced; choose another name"
            )
        if device.name in self._devices and not replace:
            raise InventoryError(
                f"device {device.name!r} already exists "
                f"({self._describe(self._devices[device.name])}); "
                "remove it first or pass replace=True (`--replace`)"
            )
        self._devices[device.name] = device
        return device

    def remove(self, name: str) -> Device:
        if name == LOCAL_DEVICE_NAME:
            raise InventoryError(f"'{LOCAL_DEVICE_NAME}' is the built-in device and cannot be removed")
        if name not in self._devices:
            self.get(name)  # raises with the list of known devices
        return self._devices.pop(name)

    @staticmethod
    def _describe(dev: Device) -> str:
        if dev.kind == "local":
            return "local subprocess"
        user = f"{dev.user}@" if dev.user else ""
        return f"{user}{dev.host}:{dev.port}"
