"""`nnflash agent ...`: install, upgrade and remove the agent on an SSH device (offline)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

import click
from rich.console import Console
from rich.table import Table

from nnflash.controller.agent_install import (
    DEFAULT_PREFIX,
    METER_EXTRAS,
    InstallError,
    install_agent,
    uninstall_agent,
)
from nnflash.controller.commands.common import connection_options, emit_json, inventory_option, load_inventory
from nnflash.controller.inventory import DEFAULT_AGENT_COMMAND, Device
from nnflash.controller.transport import SSHConnection, SSHSession
from nnflash_agent.runners import RUNTIMES

# Facts the installer writes into the inventory (and uninstall removes).
_FACT_KEYS = ("machine", "os", "python", "glibc", "board", "agent_version", "agent_prefix", "runtimes", "installed_at")


def _remote_for(device: Device, accept_new_host_key: bool) -> SSHSession:
    if device.is_local:
        raise InstallError(
            "the built-in device 'local' runs the agent from this checkout; nothing to install "
            "(add an SSH device with 'nnflash devices add')"
        )
    opts = connection_options()
    conn = SSHConnection(device, accept_new_host_key=accept_new_host_key, **opts)
    session = conn.open_session()
    if conn.pinned_key:
        click.echo(f"pinned host key of {conn.pinned_key[0]}: {conn.pinned_key[1]} {conn.pinned_key[2]}", err=True)
    return session


def _parse_runtimes(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in RUNTIMES]
    if not names or bad:
        raise click.BadParameter(
            f"expected a comma-separated list of {', '.join(RUNTIMES)}"
            + (f", not {', '.join(map(repr, bad))}" if bad else ""),
            param_hint="'--runtime'",
        )
    return names


@click.group("agent")
def agent_group() -> None:
    """Install the agent on a device over SSH, offline (the device needs no internet access).

    \b
    The wheels for the device's platform and Python are fetched here, shipped over SFTP and
    installed into a venv on the device; its selftest must pass; the device's agent command and
    facts are then recorded in the inventory.
    """


@agent_group.command("install")
@click.argument("name")
@click.option(
    "--runtime",
    "runtimes",
    default="onnxruntime,tflite",
    show_default=True,
    help="Runtimes to install, comma-separated (onnxruntime, tflite).",
)
@click.option(
    "--meter",
    type=click.Choice(sorted(METER_EXTRAS)),
    default=None,
    help="Energy meter on the device: installs its driver (smbus2 for ina219/ina260, pyserial for um25c) "
    "and sets the device's meter in the inventory.",
)
@click.option(
    "--prefix",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="Install directory on the device (holds wheels/, venv/, install.json).",
)
@click.option(
    "--wheelhouse",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Take every wheel from this directory (and the cache) and never ask a package index.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Wheel cache on this machine (default: $XDG_CACHE_HOME/nnflash/wheels).",
)
@click.option(
    "--service",
    is_flag=True,
    help="Also run a long-running agent (systemd unit nnflash-agent@USER, UNIX socket, nothing on the "
    "network) that saves the agent's start-up at every connection. Needs systemd and root or "
    "passwordless sudo on the device.",
)
@click.option("--force", is_flag=True, help="Recreate the venv and reinstall even when up to date.")
@click.option("--accept-new-host-key", is_flag=True, help="Pin the host key if it is unknown.")
@click.option("--json", "as_json", is_flag=True, help="Print the install report as one JSON object.")
@inventory_option
def agent_install(
    name: str,
    runtimes: str,
    meter: Optional[str],
    prefix: str,
    wheelhouse: Optional[Path],
    cache_dir: Optional[Path],
    service: bool,
    force: bool,
    accept_new_host_key: bool,
    as_json: bool,
    inventory_path: Optional[str],
) -> None:
    """Install or upgrade the agent on device NAME (re-running is idempotent)."""
    wanted = _parse_runtimes(runtimes)
    inv = load_inventory(inventory_path)
    raw = inv.get_raw(name)
    device = inv.get(name)
    remote = _remote_for(device, accept_new_host_key)
    t0 = time.perf_counter()
    try:
        report = install_agent(
            remote,
            device,
            runtimes=wanted,
            meter=meter,
            prefix=prefix,
            cache_dir=cache_dir,
            wheelhouse=wheelhouse,
            force=force,
            service=service,
            progress=lambda msg: click.echo(f"{name}: {msg}", err=True),
        )
    finally:
        remote.close()
    total_s = time.perf_counter() - t0
    facts: Dict[str, Any] = dict(raw.facts)
    facts.update(
        {
            "machine": report.facts.get("arch"),
            "os": report.facts.get("os") or "",
            "python": report.facts.get("python"),
            "glibc": report.facts.get("libc_version") or "",
            "agent_version": report.agent_version,
            "agent_prefix": report.prefix,
            "runtimes": ",".join(report.runtimes),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    if report.facts.get("board"):
        facts["board"] = report.facts["board"]
    changes: Dict[str, Any] = {"agent_command": report.agent_command, "facts": {k: v for k, v in facts.items() if v}}
    if raw.runtime not in report.runtimes:
        changes["runtime"] = report.runtimes[0]
    if meter is not None:
        changes["energy"] = meter
    inv.add(raw.replace(**changes), replace=True)
    path = inv.save()
    out = report.to_dict()
    out["seconds"]["total"] = round(total_s, 3)
    if as_json:
        emit_json(out)
        return
    t = Table(title=f"agent on {name}: {report.action}", show_header=False)
    t.add_column("k", style="bold")
    t.add_column("v")
    t.add_row("platform", f"{report.facts.get('arch')}, {report.facts.get('os')}, Python {report.facts.get('python')}")
    t.add_row("agent", f"{report.agent_version} in {report.prefix}")
    t.add_row("command", report.agent_command)
    if report.service:
        t.add_row("service", f"{report.service} (enabled, running)")
    for r in report.runtimes:
        entry = report.selftest.get("runtimes", {}).get(r, {})
        t.add_row(f"selftest {r}", f"{entry.get('status')} ({entry.get('runtime_version')})")
    t.add_row(
        "shipped",
        f"{len(report.wheels)} wheels, {report.shipped_bytes / 1e6:.1f} MB "
        f"({report.uploaded_bytes / 1e6:.1f} MB uploaded now)",
    )
    t.add_row("time", f"{total_s:.1f} s")
    Console(stderr=True).print(t)
    click.echo(f"updated device {name} in {path}", err=True)


@agent_group.command("uninstall")
@click.argument("name")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Install directory on the device.")
@click.option(
    "--purge",
    is_flag=True,
    help="Also delete the agent's artifact store and result journal on the device (~/.cache/nnflash-agent).",
)
@click.option("--accept-new-host-key", is_flag=True, help="Pin the host key if it is unknown.")
@inventory_option
def agent_uninstall(
    name: str, prefix: str, purge: bool, accept_new_host_key: bool, inventory_path: Optional[str]
) -> None:
    """Remove the agent from device NAME (the device stays in the inventory)."""
    inv = load_inventory(inventory_path)
    raw = inv.get_raw(name)
    remote = _remote_for(inv.get(name), accept_new_host_key)
    try:
        result = uninstall_agent(remote, prefix=prefix, purge=purge)
    finally:
        remote.close()
    if result["was_installed"]:
        facts = {k: v for k, v in raw.facts.items() if k not in _FACT_KEYS}
        command = DEFAULT_AGENT_COMMAND if result["prefix"] in raw.agent_command else raw.agent_command
        inv.add(raw.replace(agent_command=command, facts=facts), replace=True)
        inv.save()
    if result["was_installed"]:
        click.echo(f"{name}: removed {', '.join(result['removed'])}", err=True)
    else:
        click.echo(f"{name}: no agent installed in {result['prefix']}; nothing removed", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(agent_group)
