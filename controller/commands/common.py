"""Options and helpers shared by the CLI commands (configuration is read here, in the CLI layer)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import click

from nnflash.controller.campaign import DISTURBED_SHARE_ENV, PRECISIONS, default_disturbed_share
from nnflash.controller.errors import ConfigError
from nnflash.controller.inventory import Device, Inventory, default_ssh_config_path, resolve_inventory_path
from nnflash.controller.store import DEFAULT_DB_NAME
from nnflash_agent.measure import OPTION_DEFAULTS


def inventory_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--inventory",
        "inventory_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Device inventory (TOML). Default: $NNFLASH_INVENTORY, else ~/.config/nnflash/devices.toml.",
    )(f)


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False),
        default=DEFAULT_DB_NAME,
        show_default=True,
        help="Results database (SQLite).",
    )(f)


def counting_options(repeat: int, min_repeat_ms: float, repeat_help: str) -> Callable[..., Any]:
    """``--repeat`` and ``--min-repeat-ms`` (the agent's counting rule) with these defaults."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option(
            "--min-repeat-ms",
            type=float,
            default=min_repeat_ms,
            show_default=True,
            help="Each repeat runs the model enough times to last at least this long.",
        )(f)
        return click.option("--repeat", type=int, default=repeat, show_default=True, help=repeat_help)(f)

    return wrap


def load_inventory(inventory_path: Optional[str]) -> Inventory:
    return Inventory.load(resolve_inventory_path(inventory_path), ssh_config_path=default_ssh_config_path())


def devices_from(inventory: Inventory, names: str) -> list[Device]:
    out = []
    for name in [n.strip() for n in names.split(",")]:
        if not name:
            raise ConfigError("--device: empty device name in the list")
        out.append(inventory.get(name))
    if len({d.name for d in out}) != len(out):
        raise ConfigError("--device: a device is named twice")
    return out


def connection_options() -> dict[str, Any]:
    """Options passed to every connection (environment overrides, used by tests and power users)."""
    opts: dict[str, Any] = {}
    kh = os.environ.get("NNFLASH_KNOWN_HOSTS")
    if kh:
        opts["known_hosts_path"] = kh
    return opts


def artifacts_dir_for(db_path: str) -> Path:
    p = Path(db_path)
    return p.parent / f"{p.stem}-artifacts"


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":")))


def precision_option(f: Any) -> Any:
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="fp32",
        show_default=True,
        help="Numeric precision of the deployed model; int8 (TFLite only) measures the static int8 quantized export.",
    )(f)


def check_precision(runtime: str, precision: str) -> None:
    """A one-line error for a precision the runtime cannot run (int8 is TFLite's quantized export)."""
    if precision != "fp32" and runtime != "tflite":
        raise ConfigError(f"--precision {precision}: needs --runtime tflite (got {runtime})")


def disturbance_options(f: Any) -> Any:
    """``--affinity`` and ``--disturbed-share``: where the measurement runs, and the agent's gate."""
    f = click.option(
        "--disturbed-share",
        type=float,
        default=default_disturbed_share,
        show_default=f"{OPTION_DEFAULTS['disturbed_share_max']}, or ${DISTURBED_SHARE_ENV}",
        help="A measurement is stored as disturbed (and measured again later) when more than this share of "
        f"its repeats waited for a CPU; 1 keeps only throttling and stolen time as reasons; {DISTURBED_SHARE_ENV}"
        "=off in the environment switches the gate off (figures still recorded).",
    )(f)
    return click.option(
        "--affinity",
        default=None,
        metavar="CPUS",
        help="Pin the measuring process to these CPU ids on the device (comma-separated, e.g. 3 or 2,3).",
    )(f)


def parse_affinity(text: Optional[str]) -> Optional[tuple[int, ...]]:
    """``"2,3"`` -> ``(2, 3)``; None stays None; anything else is a one-line error."""
    if text is None:
        return None
    try:
        cpus = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--affinity: expected comma-separated CPU ids, got {text!r}") from None
    if not cpus or any(c < 0 for c in cpus):
        raise ConfigError(f"--affinity: CPU ids must be non-negative integers, got {text!r}")
    return cpus


def check_disturbed_share(value: Optional[float]) -> None:
    """None (the gate off, from the environment) passes; a share must lie in 0..1."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(f"--disturbed-share: must be between 0 and 1, got {value}")
