"""One set of measurement defaults: the controller's ``MeasureSettings`` takes the agent's
``OPTION_DEFAULTS``."""

from __future__ import annotations

import dataclasses

import pytest

from nnflash.controller.campaign import DISTURBED_SHARE_ENV, MeasureSettings, default_disturbed_share
from nnflash.controller.errors import ConfigError
from nnflash_agent.measure import OPTION_DEFAULTS, parse_options


def test_measure_settings_defaults_are_the_agents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISTURBED_SHARE_ENV, raising=False)  # the suite's conftest switches the gate off
    made = MeasureSettings()
    fields = {f.name: getattr(made, f.name) for f in dataclasses.fields(MeasureSettings)}
    shared = set(fields) & set(OPTION_DEFAULTS)
    assert shared >= {"threads", "energy", "repeat", "min_repeat_ms", "warmup_runs", "warmup_s", "timeout_s", "isolate"}
    for name in shared:
        assert fields[name] == OPTION_DEFAULTS[name], name
    assert MeasureSettings().timeout_s == 600.0
    # what the controller sends by default is what the agent would do anyway
    args = MeasureSettings().agent_args("0" * 64)
    options = {k: v for k, v in args.items() if k not in ("artifact", "runtime")}
    assert parse_options(options) == parse_options({})


def test_profile_option_defaults_are_the_agents() -> None:
    from nnflash.controller.commands.campaign_cmds import profile_cmd

    defaults = {p.name: p.default for p in profile_cmd.params}
    assert defaults["timeout_s"] == OPTION_DEFAULTS["timeout_s"]
    assert defaults["repeat"] == OPTION_DEFAULTS["repeat"]
    assert defaults["min_repeat_ms"] == OPTION_DEFAULTS["min_repeat_ms"]


def test_disturbed_share_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISTURBED_SHARE_ENV, raising=False)
    assert default_disturbed_share() == OPTION_DEFAULTS["disturbed_share_max"] == 0.2
    monkeypatch.setenv(DISTURBED_SHARE_ENV, "off")
    assert default_disturbed_share() is None and MeasureSettings().disturbed_share_max is None
    monkeypatch.setenv(DISTURBED_SHARE_ENV, " 0.5 ")
    assert MeasureSettings().disturbed_share_max == 0.5
    assert MeasureSettings(disturbed_share_max=0.1).disturbed_share_max == 0.1  # explicit wins
    for bad in ("1.5", "-0.1", "nan", "half"):
        monkeypatch.setenv(DISTURBED_SHARE_ENV, bad)
        with pytest.raises(ConfigError, match=DISTURBED_SHARE_ENV):
            default_disturbed_share()


def test_profile_disturbed_share_option_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from nnflash.controller.cli import cli

    monkeypatch.setenv(DISTURBED_SHARE_ENV, "2")
    out = CliRunner().invoke(cli, ["profile", "nope.jsonl", "--device", "local"])
    assert out.exit_code == 2 and DISTURBED_SHARE_ENV in out.output
