"""The ``nnflash`` command line (the workstation side).

Every deliberate error (``NnflashError``) becomes one line on stderr and exit code 2; ``--debug``
shows the traceback instead. Configuration files are read here, in the CLI layer, and passed down.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from nnflash.models.errors import NnflashError


def one_line(text: str) -> str:
    """``text`` on one printable line: a control character or lone surrogate (a newline in a field
    name read from a hostile file, say) is shown escaped, as Python writes it in a string."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NnflashError as e:
            if ctx.meta.get("nnflash.debug"):
                raise
            click.echo(f"nnflash: error: {one_line(str(e))}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("nnflash: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="nnflash", prog_name="nnflash")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """nnflash: hardware-aware neural architecture design for edge devices.

    \b
    Architecture metrics (NN-Mass, NN-Density, NN-Degree), search spaces and candidate
    generation, export to ONNX/TFLite, profiling on devices over SSH, cost-model calibration.
    """
    ctx.meta["nnflash.debug"] = debug


def _register() -> None:
    from nnflash.controller.commands import agent_cmds, campaign_cmds, device_cmds, models_cmds, run_cmd

    for module in (models_cmds, device_cmds, agent_cmds, campaign_cmds, run_cmd):
        module.register(cli)
    import importlib

    importlib.import_module("nnflash.controller.commands.accuracy_cmds").register(cli)
    importlib.import_module("nnflash.controller.commands.train_cmds").register(cli)
    importlib.import_module("nnflash.controller.commands.import_cmds").register(cli)
    try:  # calibration commands need the calibration package (scipy)
        calibration_cmds = importlib.import_module("nnflash.controller.commands.calibration_cmds")
    except ImportError:
        return
    calibration_cmds.register(cli)
    importlib.import_module("nnflash.controller.commands.accel_cmds").register(cli)
    importlib.import_module("nnflash.controller.commands.search_cmds").register(cli)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: click usage errors become one line too (``nnflash: error: ...``, exit 2)."""
    try:
        rc = cli.main(args=argv, prog_name="nnflash", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("nnflash: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        click.echo(f"nnflash: error: {one_line(e.format_message())}{hint}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
