"""Pluggable power meters, chosen by name (see :func:`make_meter`).

- ``none``: no energy figure (``energy`` is null in the record);
- ``estimate``: CPU utilization x a Pi 3B power model (always ``"estimated": true``);
- ``rapl``: Linux powercap energy counters;
- ``ina219`` / ``ina260``: I2C current monitors in the 5 V feed (smbus2);
- ``um25c``: RDTech UM25C USB meter over a serial port.

Drivers are imported only when their meter is chosen.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from nnflash_agent.energy.base import Meter, MeterError, PowerTrace

__all__ = ["METERS", "Meter", "MeterError", "PowerTrace", "make_meter"]

METERS = ("none", "estimate", "rapl", "ina219", "ina260", "um25c")


def _meter_class(name: str) -> Any:
    if name == "estimate":
        from nnflash_agent.energy.estimate import EstimateMeter

        return EstimateMeter
    if name == "rapl":
        from nnflash_agent.energy.rapl import RaplMeter

        return RaplMeter
    if name == "ina219":
        from nnflash_agent.energy.ina import Ina219Meter

        return Ina219Meter
    if name == "ina260":
        from nnflash_agent.energy.ina import Ina260Meter

        return Ina260Meter
    if name == "um25c":
        from nnflash_agent.energy.um25c import Um25cMeter

        return Um25cMeter
    raise MeterError(f"unknown energy meter {name!r} (known: {', '.join(METERS)})")


def make_meter(name: Optional[str], options: Optional[Dict[str, Any]] = None) -> Optional[Meter]:
    """A meter by name (``None``/``"none"`` -> None). Options are the meter's keyword arguments;
    an unknown option is a :class:`MeterError` naming the allowed ones."""
    options = dict(options or {})
    if name in (None, "none"):
        if options:
            raise MeterError("energy_options given without an energy meter")
        return None
    if not isinstance(name, str):
        raise MeterError("energy meter name must be a string")
    import inspect  # only here: ~2 MB of modules an agent measuring without a meter never needs

    cls = _meter_class(name)
    params = inspect.signature(cls.__init__).parameters
    allowed = sorted(p for p in params if p not in ("self", "bus"))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise MeterError(f"{name}: unknown option(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")
    for key, value in options.items():
        if not isinstance(value, (int, float, str, bool, list)) or value is None:
            raise MeterError(f"{name}: option {key!r} has an unsupported type")
    try:
        meter: Meter = cls(**options)
    except (TypeError, ValueError) as exc:
        raise MeterError(f"{name}: bad option: {exc}") from None
    return meter
