"""Device inventory: TOML round trip, path resolution, ~/.ssh/config, the built-in device, errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnflash.controller.errors import ConfigError, InventoryError, NnflashError
from nnflash.controller.inventory import (
    DEFAULT_AGENT_COMMAND,
    LOCAL_DEVICE_NAME,
    Device,
    Inventory,
    default_config_dir,
    dump_toml,
    local_device,
    resolve_inventory_path,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def test_errors_hierarchy() -> None:
    assert issubclass(InventoryError, ConfigError)
    assert issubclass(InventoryError, ValueError)
    assert issubclass(InventoryError, NnflashError)


# ---- paths


def test_default_path_xdg() -> None:
    env = {"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/home/u"}
    assert resolve_inventory_path(env=env) == Path("/x/cfg/nnflash/devices.toml")


def test_default_path_home() -> None:
    env = {"HOME": "/home/u"}
    assert resolve_inventory_path(env=env) == Path("/home/u/.config/nnflash/devices.toml")
    assert default_config_dir(env) == Path("/home/u/.config/nnflash")


def test_env_override_and_explicit_wins(tmp_path: Path) -> None:
    env = {"HOME": "/home/u", "NNFLASH_INVENTORY": str(tmp_path / "env.toml")}
    assert resolve_inventory_path(env=env) == tmp_path / "env.toml"
    assert resolve_inventory_path(tmp_path / "cli.toml", env=env) == tmp_path / "cli.toml"


def test_import_reads_nothing_from_home(tmp_path: Path) -> None:
    # In a fresh interpreter whose HOME cannot be read, importing must not fail or create files.
    env = dict(os.environ, HOME=str(tmp_path / "no-home"), NNFLASH_INVENTORY="/nonexistent/x.toml")
    env.pop("XDG_CONFIG_HOME", None)
    code = "import nnflash.controller.inventory, nnflash.controller.transport, nnflash.controller.store"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT)
    assert not (tmp_path / "no-home").exists()


# ---- built-in device


def test_local_always_present(tmp_path: Path) -> None:
    inv = Inventory.load(tmp_path / "missing.toml")
    assert inv.names() == [LOCAL_DEVICE_NAME]
    dev = inv.get("local")
    assert dev.kind == "local" and dev.is_builtin
    assert dev.agent_argv[:3] == [sys.executable, "-m", "nnflash_agent.cli"]
    assert dev.agent_argv[3] == "serve"
    assert "local" in inv and len(inv) == 1


def test_local_cannot_be_added_removed_or_defined(tmp_path: Path) -> None:
    inv = Inventory.load(tmp_path / "inv.toml")
    with pytest.raises(InventoryError, match="built-in"):
        inv.add(Device(name="local", host="h"))
    with pytest.raises(InventoryError, match="built-in"):
        inv.add(Device(name="local", host="h"), replace=True)
    with pytest.raises(InventoryError, match="built-in"):
        inv.remove("local")
    (tmp_path / "bad.toml").write_text('[devices.local]\nhost = "x"\n')
    with pytest.raises(InventoryError, match="built-in"):
        Inventory.load(tmp_path / "bad.toml")


def test_local_device_with_spaces_in_python_path() -> None:
    dev = local_device("/opt/my python/bin/python3")
    assert dev.agent_argv[0] == "/opt/my python/bin/python3"


# ---- round trip


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "devices.toml"
    inv = Inventory.load(path)
    pi = Device(
        name="pi3",
        host="192.168.1.50",
        port=2222,
        user="pi",
        key_file="~/.ssh/id_ed25519",
        agent_command="~/venv/bin/nnflash-agent serve --store '/var/tmp/my store'",
        runtime="tflite",
        threads=4,
        energy="ina219",
        facts={"board": 'Raspberry "Pi" 3B', "ram_gb": 1, "notes": "line1\nline2\\"},
    )
    inv.add(pi)
    inv.add(Device(name="box.lab-1", host="box"))
    assert inv.save() == path
    text = path.read_text()
    assert "local" not in _load_toml(text)["devices"]
    again = Inventory.load(path)
    assert again.names() == ["local", "box.lab-1", "pi3"]
    got = again.get("pi3")
    assert got == pi
    assert dict(got.facts) == dict(pi.facts)
    box = again.get("box.lab-1")
    assert box.port == 22 and box.user is None and box.agent_command == DEFAULT_AGENT_COMMAND
    # only non-default keys are written
    assert _load_toml(text)["devices"]["box.lab-1"] == {"host": "box"}


def test_save_is_atomic_and_keeps_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    inv = Inventory.load(path)
    inv.add(Device(name="a", host="h1"))
    inv.save()
    inv.add(Device(name="b", host="h2"))
    inv.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["devices.toml"]


def test_save_failure_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "devices.toml"
    inv = Inventory.load(path)
    inv.add(Device(name="a", host="h1"))
    inv.save()
    before = path.read_text()

    def boom(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    inv.add(Device(name="b", host="h2"))
    with pytest.raises(InventoryError, match="No space left"):
        inv.save()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["devices.toml"]


def test_dump_toml_values() -> None:
    data = {
        "t": {"s": "a\tb\x01", "i": -3, "f": 1.5, "b": True, "l": [1, "x"], "k y": "q"},
        "u": {"v": {"w": 1}},
    }
    assert _load_toml(dump_toml(data)) == data


# ---- hand edits survive `devices add` / `devices remove`

HAND_EDITED = """\
# My lab's devices. Ask Ana before changing pi4.
# (this comment block is mine)

[devices.pi4]
host = "10.0.0.4"   # fixed lease on the lab router
# moved to the shelf by the window in March
user = "pi"
port = 22           # written out on purpose
threads = 4

[devices.pi4.facts]
board = "Raspberry Pi 4B"  # 4 GB

[devices.old]
host = "10.0.0.9"
"""


def _cli(*args: str) -> None:
    from click.testing import CliRunner

    from nnflash.controller.cli import cli

    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, res.output


def test_devices_add_and_remove_keep_comments_and_hand_edits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.ssh/config of the user
    path = tmp_path / "devices.toml"
    path.write_text(HAND_EDITED)
    _cli("devices", "add", "pi5", "--host", "10.0.0.5", "--threads", "2", "--inventory", str(path))
    text = path.read_text()
    assert text.startswith(HAND_EDITED.rstrip("\n"))  # everything the user wrote, as written
    _cli("devices", "remove", "old", "--inventory", str(path))
    text = path.read_text()
    for line in HAND_EDITED.split("[devices.old]")[0].splitlines():
        assert line in text.splitlines()
    assert "old" not in _load_toml(text)["devices"]
    inv = Inventory.load(path)
    assert inv.names() == ["local", "pi4", "pi5"]
    assert inv.get("pi5") == Device(name="pi5", host="10.0.0.5", threads=2)
    assert inv.get("pi4") == Device(name="pi4", host="10.0.0.4", user="pi", threads=4)
    # a changed device is edited key by key: the other keys keep their comments
    inv.add(inv.get_raw("pi4").replace(threads=2), replace=True)
    inv.save()
    text = path.read_text()
    assert "# fixed lease on the lab router" in text and "# moved to the shelf" in text
    assert "threads = 2" in text and 'board = "Raspberry Pi 4B"  # 4 GB' in text


# ---- add / remove / get


def test_duplicate_add_refused_unless_replace(tmp_path: Path) -> None:
    inv = Inventory.load(tmp_path / "inv.toml")
    inv.add(Device(name="pi", host="a"))
    with pytest.raises(InventoryError, match="already exists"):
        inv.add(Device(name="pi", host="b"))
    inv.add(Device(name="pi", host="b"), replace=True)
    assert inv.get("pi").host == "b"


def test_unknown_device_lists_known(tmp_path: Path) -> None:
    inv = Inventory.load(tmp_path / "inv.toml")
    inv.add(Device(name="pi", host="a"))
    with pytest.raises(InventoryError) as exc:
        inv.get("pj")
    assert "pj" in str(exc.value) and "local" in str(exc.value) and "pi" in str(exc.value)
    with pytest.raises(InventoryError, match="known devices"):
        inv.remove("nope")
    assert inv.remove("pi").host == "a"
    assert inv.names() == ["local"]


# ---- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "bad name", "host": "h"}, "invalid device name"),
        ({"name": "", "host": "h"}, "invalid device name"),
        ({"name": "-x", "host": "h"}, "invalid device name"),
        ({"name": "d", "host": ""}, "host is required"),
        ({"name": "d", "host": "a b"}, "invalid host"),
        ({"name": "d", "host": "-oProxyCommand=x"}, "invalid host"),
        ({"name": "d", "host": "h", "port": 0}, "port"),
        ({"name": "d", "host": "h", "port": 70000}, "port"),
        ({"name": "d", "host": "h", "port": "22"}, "port"),
        ({"name": "d", "host": "h", "port": True}, "port"),
        ({"name": "d", "host": "h", "threads": 0}, "threads"),
        ({"name": "d", "host": "h", "runtime": "tensorrt"}, "runtime"),
        ({"name": "d", "host": "h", "kind": "telnet"}, "kind"),
        ({"name": "d", "host": "h", "agent_command": "  "}, "agent_command"),
        ({"name": "d", "host": "h", "agent_command": "a 'b"}, "agent_command"),
        ({"name": "d", "host": "h", "user": ""}, "user"),
        ({"name": "d", "host": "h", "energy": ""}, "energy"),
        ({"name": "d", "host": "h", "facts": {"x": [1]}}, "facts"),
    ],
)
def test_bad_device(kwargs: dict, match: str) -> None:
    with pytest.raises(InventoryError, match=match):
        Device(**kwargs)


@pytest.mark.parametrize(
    "text, match",
    [
        ("[devices.pi\n", "not valid TOML"),
        ('[devices.pi]\nhost = "h"\nprot = 22\n', "unknown key"),
        ('[devices.pi]\nhost = "h"\nport = "x"\n', "port"),
        ("[settings]\nx = 1\n", "unknown top-level"),
        ("devices = 3\n", "table"),
        ("[devices]\npi = 3\n", "must be a table"),
        ("[devices.pi]\nport = 22\n", "host is required"),
    ],
)
def test_bad_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "inv.toml"
    path.write_text(text)
    with pytest.raises(InventoryError, match=match) as exc:
        Inventory.load(path)
    assert str(path) in str(exc.value)


def test_device_is_frozen_and_hashable() -> None:
    dev = Device(name="d", host="h", facts={"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        dev.host = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        dev.facts["b"] = 2  # type: ignore[index]
    assert hash(dev) == hash(Device(name="d", host="h"))


# ---- ~/.ssh/config


SSH_CONFIG = """
Host pi
    HostName 10.0.0.7
    Port 2201
    User pi
    IdentityFile ~/.ssh/pi_key

Host *.lab
    User labuser

Host broken
    Port notaport
"""


def test_ssh_config_fills_missing_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "ssh_config"
    cfg.write_text(SSH_CONFIG)
    path = tmp_path / "inv.toml"
    path.write_text(
        '[devices.a]\nhost = "pi"\n\n'
        '[devices.b]\nhost = "pi"\nport = 2300\nuser = "me"\n\n'
        '[devices.c]\nhost = "x.lab"\n\n'
        '[devices.d]\nhost = "other"\n'
    )
    inv = Inventory.load(path, ssh_config_path=cfg)
    a = inv.get("a")
    assert (a.host, a.port, a.user) == ("10.0.0.7", 2201, "pi")
    assert a.key_file == os.path.expanduser("~/.ssh/pi_key")
    b = inv.get("b")  # explicit keys win, HostName still resolves the alias
    assert (b.host, b.port, b.user) == ("10.0.0.7", 2300, "me")
    c = inv.get("c")
    assert (c.host, c.port, c.user) == ("x.lab", 22, "labuser")
    d = inv.get("d")
    assert (d.host, d.port, d.user) == ("other", 22, None)
    # saving keeps what the user wrote, not the resolved values
    inv.save()
    assert _load_toml(path.read_text())["devices"]["a"] == {"host": "pi"}
    assert inv.get_raw("a").host == "pi"


def test_ssh_config_ignored_when_absent_or_not_given(tmp_path: Path) -> None:
    path = tmp_path / "inv.toml"
    path.write_text('[devices.a]\nhost = "pi"\n')
    assert Inventory.load(path).get("a").host == "pi"
    assert Inventory.load(path, ssh_config_path=tmp_path / "nope").get("a").host == "pi"


def test_ssh_config_bad_port(tmp_path: Path) -> None:
    cfg = tmp_path / "ssh_config"
    cfg.write_text(SSH_CONFIG)
    path = tmp_path / "inv.toml"
    path.write_text('[devices.a]\nhost = "broken"\n')
    with pytest.raises(InventoryError, match="Port"):
        Inventory.load(path, ssh_config_path=cfg).get("a")


def test_list_and_to_dict(tmp_path: Path) -> None:
    inv = Inventory.load(tmp_path / "inv.toml")
    inv.add(Device(name="pi", host="a", facts={"k": "v"}))
    devs = inv.list()
    assert [d.name for d in devs] == ["local", "pi"]
    assert devs[1].to_dict()["facts"] == {"k": "v"}
