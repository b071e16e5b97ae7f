"""One set of measurement defaults: the controller's ``MeasureSettings`` takes the agent's
``OPTION_DEFAULTS``."""

from __future__ import annotations

import dataclasses

from nnflash.controller.campaign import MeasureSettings
from nnflash_agent.measure import OPTION_DEFAULTS, parse_options


def test_measure_settings_defaults_are_the_agents() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(MeasureSettings)}
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
