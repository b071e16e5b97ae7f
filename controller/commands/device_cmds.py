"""`nnflash devices ...`: the device inventory and connectivity checks."""

from __future__ import annotations

from typing import Any, Optional

import click
from rich.console import Console
from rich.table import Table

from nnflash.controller.commands.common import connection_options, emit_json, inventory_option, load_inventory
from nnflash.controller.errors import InventoryError
from nnflash.controller.inventory import Device
from nnflash.controller.transport import SSHConnection, make_connection
from nnflash_agent.runners import RUNTIMES


def pin_host_key(device: Device, **options: Any) -> Optional[tuple[str, str, str]]:
    """Connect once over SSH (no agent started) so an unknown host key is recorded and pinned.

    Returns ``(name, key type, fingerprint)`` when a new key was pinned, None when it was already
    known. A changed key raises ``HostKeyError`` like every connection does.
    """
    conn = SSHConnection(device, accept_new_host_key=True, **options)
    conn.open_session().close()  # the transport's own host-key policy does the pinning
    return conn.pinned_key


@click.group("devices")
def devices_group() -> None:
    """The device inventory: add, list, check, remove.

    The built-in device `local` (the agent as a local subprocess) is always there.
    """


@devices_group.command("add")
@click.argument("name")
@click.option("--host", required=True, help="Host name or address (an ~/.ssh/config alias works too).")
@click.option("--port", type=int, default=None, help="SSH port (default 22 or from ~/.ssh/config).")
@click.option("--user", default=None, help="SSH user (default: ~/.ssh/config, else your user name).")
@click.option("--key", "key_file", default=None, help="Private key file (key authentication only).")
@click.option(
    "--agent-command",
    default=None,
    help="Command that starts the agent on the device (default: 'nnflash-agent serve').",
)
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None, help="Default runtime.")
@click.option("--threads", type=int, default=None, help="Default thread count.")
@click.option(
    "--energy", default=None, help="Energy meter on the device (none, estimate, ina219, ina260, um25c, rapl)."
)
@click.option("--replace", is_flag=True, help="Overwrite an existing device of that name.")
@click.option(
    "--accept-new-host-key",
    is_flag=True,
    help="Connect now and pin the host's key if it is unknown (like OpenSSH accept-new). "
    "A changed key is always refused.",
)
@inventory_option
def devices_add(
    name: str,
    host: str,
    port: Optional[int],
    user: Optional[str],
    key_file: Optional[str],
    agent_command: Optional[str],
    runtime: Optional[str],
    threads: Optional[int],
    energy: Optional[str],
    replace: bool,
    accept_new_host_key: bool,
    inventory_path: Optional[str],
) -> None:
    """Add an SSH device to the inventory."""
    inv = load_inventory(inventory_path)
    fields: dict[str, Any] = {"name": name, "host": host, "kind": "ssh"}
    for k, v in (
        ("port", port),
        ("user", user),
        ("key_file", key_file),
        ("agent_command", agent_command),
        ("runtime", runtime),
        ("threads", threads),
        ("energy", energy),
    ):
        if v is not None:
            fields[k] = v
    dev = inv.add(Device(**fields), replace=replace)
    if accept_new_host_key:
        pinned = pin_host_key(inv.resolve(dev), **connection_options())
        if pinned:
            click.echo(f"pinned host key of {pinned[0]}: {pinned[1]} {pinned[2]}", err=True)
        else:
            click.echo(f"host key of {host} already known", err=True)
    path = inv.save()
    click.echo(f"added device {name} ({host}) to {path}", err=True)


@devices_group.command("remove")
@click.argument("name")
@inventory_option
def devices_remove(name: str, inventory_path: Optional[str]) -> None:
    """Remove a device from the inventory (measurements stay in the database)."""
    inv = load_inventory(inventory_path)
    inv.remove(name)
    inv.save()
    click.echo(f"removed device {name}", err=True)


@devices_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
@inventory_option
def devices_list(as_json: bool, inventory_path: Optional[str]) -> None:
    """List the devices (the built-in `local` first)."""
    inv = load_inventory(inventory_path)
    devs = inv.list()
    if as_json:
        for d in devs:
            emit_json(d.to_dict())
        return
    t = Table(title=f"devices ({inv.path})")
    for col in ("name", "kind", "host", "port", "user", "runtime", "threads", "energy", "agent command"):
        t.add_column(col)
    for d in devs:
        t.add_row(
            d.name,
            d.kind,
            d.host or "-",
            str(d.port) if d.kind == "ssh" else "-",
            d.user or "-",
            d.runtime,
            str(d.threads or "-"),
            d.energy,
            d.agent_command,
        )
    Console().print(t)


def _facts_summary(facts: dict[str, Any]) -> dict[str, Any]:
    runtimes = facts.get("runtimes") or {}
    if isinstance(runtimes, dict):
        rt = ", ".join(f"{k} {v}" for k, v in runtimes.items() if v) or "none"
    else:
        rt = str(runtimes)
    return {
        "machine": facts.get("machine"),
        "os": facts.get("os") or facts.get("system"),
        "python": facts.get("python"),
        "cpu": facts.get("cpu_model"),
        "cores": facts.get("cores") or facts.get("cpu_count"),
        "runtimes": rt,
    }


@devices_group.command("check")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the device facts as one JSON object.")
@click.option("--accept-new-host-key", is_flag=True, help="Pin the host key if it is unknown.")
@inventory_option
def devices_check(name: str, as_json: bool, accept_new_host_key: bool, inventory_path: Optional[str]) -> None:
    """Connect to a device, say hello to its agent and print the device facts."""
    inv = load_inventory(inventory_path)
    dev = inv.get(name)
    opts = connection_options()
    if accept_new_host_key and not dev.is_local:
        opts["accept_new_host_key"] = True
    conn = make_connection(dev, **opts)
    try:
        hello = conn.open()
    finally:
        conn.close()
    facts = dict(hello.get("facts") or {})
    if as_json:
        emit_json(
            {
                "device": name,
                "agent_version": hello.get("agent_version"),
                "protocol": hello.get("protocol"),
                "store_dir": hello.get("store_dir"),
                **_facts_summary(facts),
                "facts": facts,
            }
        )
        return
    t = Table(title=f"device {name}", show_header=False)
    t.add_column("k", style="bold")
    t.add_column("v")
    t.add_row("agent", f"{hello.get('agent_version')} (protocol {hello.get('protocol')})")
    for k, v in _facts_summary(facts).items():
        t.add_row(k, str(v))
    t.add_row("store", str(hello.get("store_dir")))
    Console().print(t)


def register(cli: click.Group) -> None:
    cli.add_command(devices_group)


__all__ = ["register", "pin_host_key", "InventoryError"]
