"""INA219 and INA260 current/power monitors on I2C (smbus2, imported only when a meter opens).

Both chips have big-endian 16-bit registers, while SMBus word transfers are little-endian: a word
read returns the register's bytes swapped, so every read is swapped back (and every write
swapped out). Power is ``P = V_bus * I`` from the bus-voltage and current registers, sampled in a
background thread.

INA219 (TI datasheet SBOS448): config 0x00, shunt voltage 0x01 (signed, 10 uV/LSB), bus voltage 0x02
(bits 15..3, 4 mV/LSB; bit 1 CNVR, bit 0 OVF), power 0x03 (20 x current_lsb), current 0x04 (signed,
current_lsb), calibration 0x05 = trunc(0.04096 / (current_lsb * r_shunt_ohm)).

INA260 (TI datasheet SBOS656): config 0x00, current 0x01 (signed, 1.25 mA/LSB), bus voltage 0x02
(1.25 mV/LSB), power 0x03 (10 mW/LSB), manufacturer id 0xFE = 0x5449 ("TI"), die id 0xFF = 0x227x.
Internal 2 mOhm shunt, no calibration register.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from nnflash_agent.energy.base import MeterError, SamplingMeter

__all__ = [
    "swap16",
    "to_signed16",
    "INA219",
    "INA260",
    "Ina219Meter",
    "Ina260Meter",
    "ina219_calibration",
]


def swap16(word: int) -> int:
    """SMBus word <-> big-endian register value."""
    return ((word & 0xFF) << 8) | ((word >> 8) & 0xFF)


def to_signed16(value: int) -> int:
    return value - 0x10000 if value & 0x8000 else value


def ina219_calibration(current_lsb_a: float, r_shunt_ohm: float) -> int:
    """Calibration register value (datasheet equation 1)."""
    cal = math.trunc(0.04096 / (current_lsb_a * r_shunt_ohm))
    if not 1 <= cal <= 0xFFFE:
        raise MeterError(f"ina219: calibration {cal} out of range; choose another max current / shunt")
    return cal & 0xFFFE  # bit 0 is read-only / unused


class INA219:
    REG_CONFIG = 0x00
    REG_SHUNT = 0x01
    REG_BUS = 0x02
    REG_POWER = 0x03
    REG_CURRENT = 0x04
    REG_CALIBRATION = 0x05
    # 32 V range, PGA /8 (320 mV), 12-bit bus and shunt ADC (532 us), shunt+bus continuous:
    # the power-on default.
    CONFIG_DEFAULT = 0x399F

    def __init__(
        self,
        bus: Any,
        address: int = 0x40,
        r_shunt_ohm: float = 0.1,
        max_current_a: float = 3.2,
        config: int = CONFIG_DEFAULT,
    ) -> None:
        self.bus = bus
        self.address = address
        self.r_shunt_ohm = r_shunt_ohm
        self.current_lsb_a = max_current_a / 32768.0
        self.calibration = ina219_calibration(self.current_lsb_a, r_shunt_ohm)
        # The LSB the chip actually uses follows from the truncated calibration value.
        self.current_lsb_a = 0.04096 / (self.calibration * r_shunt_ohm)
        self.config = config

    def read_reg(self, reg: int) -> int:
        return swap16(self.bus.read_word_data(self.address, reg))

    def write_reg(self, reg: int, value: int) -> None:
        self.bus.write_word_data(self.address, reg, swap16(value & 0xFFFF))

    def setup(self) -> None:
        self.write_reg(self.REG_CONFIG, self.config)
        self.write_reg(self.REG_CALIBRATION, self.calibration)
        if self.read_reg(self.REG_CALIBRATION) != self.calibration:
            raise MeterError(f"ina219 at {self.address:#x}: calibration register did not stick")

    def bus_voltage_v(self) -> float:
        raw = self.read_reg(self.REG_BUS)
        if raw & 0x1:
            raise MeterError("ina219: math overflow (OVF) - current beyond the calibrated range")
        return (raw >> 3) * 0.004

    def shunt_voltage_v(self) -> float:
        return to_signed16(self.read_reg(self.REG_SHUNT)) * 10e-6

    def current_a(self) -> float:
        return to_signed16(self.read_reg(self.REG_CURRENT)) * self.current_lsb_a

    def power_w(self) -> float:
        return self.bus_voltage_v() * self.current_a()


class INA260:
    REG_CONFIG = 0x00
    REG_CURRENT = 0x01
    REG_BUS = 0x02
    REG_POWER = 0x03
    REG_MANUFACTURER = 0xFE
    REG_DIE = 0xFF
    MANUFACTURER_TI = 0x5449
    # AVG 1, VBUSCT 1.1 ms, ISHCT 1.1 ms, shunt+bus continuous: the power-on default.
    CONFIG_DEFAULT = 0x6127
    CURRENT_LSB_A = 1.25e-3
    BUS_LSB_V = 1.25e-3
    POWER_LSB_W = 10e-3

    def __init__(self, bus: Any, address: int = 0x40, config: int = CONFIG_DEFAULT) -> None:
        self.bus = bus
        self.address = address
        self.config = config

    def read_reg(self, reg: int) -> int:
        return swap16(self.bus.read_word_data(self.address, reg))

    def write_reg(self, reg: int, value: int) -> None:
        self.bus.write_word_data(self.address, reg, swap16(value & 0xFFFF))

    def setup(self) -> None:
        mfr = self.read_reg(self.REG_MANUFACTURER)
        if mfr != self.MANUFACTURER_TI:
            raise MeterError(f"ina260 at {self.address:#x}: manufacturer id {mfr:#06x}, expected 0x5449")
        die = self.read_reg(self.REG_DIE)
        if die >> 4 != 0x227:
            raise MeterError(f"ina260 at {self.address:#x}: die id {die:#06x}, expected 0x227x")
        self.write_reg(self.REG_CONFIG, self.config)

    def bus_voltage_v(self) -> float:
        return self.read_reg(self.REG_BUS) * self.BUS_LSB_V

    def current_a(self) -> float:
        return to_signed16(self.read_reg(self.REG_CURRENT)) * self.CURRENT_LSB_A

    def power_w(self) -> float:
        return self.bus_voltage_v() * self.current_a()


def _open_bus(bus: Any, busnum: int) -> Any:
    if bus is not None:
        return bus
    try:
        from smbus2 import SMBus
    except ImportError:
        raise MeterError("this meter needs smbus2 (pip install smbus2)") from None
    try:
        return SMBus(busnum)
    except OSError as exc:
        raise MeterError(f"cannot open /dev/i2c-{busnum}: {exc} (user in group i2c?)") from None


class _InaMeter(SamplingMeter):
    def __init__(self, rate_hz: float, busnum: int, address: int, bus: Any) -> None:
        super().__init__(rate_hz)
        self.busnum = int(busnum)
        self.address = int(address)
        self._bus_arg = bus
        self._bus: Any = None
        self.chip: Optional[Any] = None

    def _make_chip(self, bus: Any) -> Any:
        raise NotImplementedError

    def open(self) -> None:
        self._bus = _open_bus(self._bus_arg, self.busnum)
        chip = self._make_chip(self._bus)
        try:
            chip.setup()
        except OSError as exc:
            raise MeterError(f"{self.name}: no answer at i2c-{self.busnum} address {self.address:#x}: {exc}") from None
        self.chip = chip

    def read_power_w(self) -> float:
        if self.chip is None:
            raise MeterError(f"{self.name}: not opened")
        return float(self.chip.power_w())

    def close(self) -> None:
        if self._bus is not None and self._bus_arg is None:
            try:
                self._bus.close()
            except Exception:
                pass
        self._bus = None
        self.chip = None

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d.update({"i2c_bus": self.busnum, "address": self.address})
        return d


class Ina219Meter(_InaMeter):
    name = "ina219"

    def __init__(
        self,
        rate_hz: float = 500.0,
        busnum: int = 1,
        address: int = 0x40,
        r_shunt_ohm: float = 0.1,
        max_current_a: float = 3.2,
        config: int = INA219.CONFIG_DEFAULT,
        bus: Any = None,
    ) -> None:
        super().__init__(rate_hz, busnum, address, bus)
        self.r_shunt_ohm = float(r_shunt_ohm)
        self.max_current_a = float(max_current_a)
        self.config = int(config)

    def _make_chip(self, bus: Any) -> Any:
        return INA219(bus, self.address, self.r_shunt_ohm, self.max_current_a, self.config)


class Ina260Meter(_InaMeter):
    name = "ina260"

    def __init__(
        self,
        rate_hz: float = 500.0,
        busnum: int = 1,
        address: int = 0x40,
        config: int = INA260.CONFIG_DEFAULT,
        bus: Any = None,
    ) -> None:
        super().__init__(rate_hz, busnum, address, bus)
        self.config = int(config)

    def _make_chip(self, bus: Any) -> Any:
        return INA260(bus, self.address, self.config)
