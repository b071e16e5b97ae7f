"""nnflash_agent.energy: trace integration and every meter, hardware-free.

Test doubles stand in for hardware registers (a fake SMBus whose register values follow the TI
datasheet equations), for the USB meter (a pseudo-terminal peer writing real UM25C frames) and for
the powercap tree (files under tmp_path). The numbers the product reports are always computed by the
product from those raw values.
"""

from __future__ import annotations

import math
import os
import select
import struct
import threading
import time

import pytest

from nnflash_agent.energy import METERS, MeterError, make_meter
from nnflash_agent.energy.base import PowerTrace
from nnflash_agent.energy.estimate import EstimateMeter, busy_cores
from nnflash_agent.energy.ina import (
    INA219,
    INA260,
    Ina219Meter,
    Ina260Meter,
    ina219_calibration,
    swap16,
    to_signed16,
)
from nnflash_agent.energy.rapl import RaplMeter, unwrap
from nnflash_agent.energy.um25c import FRAME_LEN, Um25cMeter, build_frame, parse_frame

# -- trace ------------------------------------------------------------------------------------


def test_trapezoid_constant_and_ramp():
    tr = PowerTrace()
    for i in range(11):
        tr.add(float(i), 2.0)
    assert tr.energy_j(0.0, 10.0) == pytest.approx(20.0)
    assert tr.energy_j(2.5, 7.5) == pytest.approx(10.0)  # interpolated ends
    ramp = PowerTrace()
    for i in range(11):
        ramp.add(float(i), float(i))  # P = t
    assert ramp.energy_j(0.0, 10.0) == pytest.approx(50.0)
    assert ramp.energy_j(1.5, 4.5) == pytest.approx((4.5**2 - 1.5**2) / 2)
    assert ramp.mean_power_w(0.0, 10.0) == pytest.approx(5.0)
    assert ramp.coverage(0.0, 10.0) and not ramp.coverage(-1.0, 10.0)
    assert ramp.samples_in(2.0, 4.0) == 3


def test_trace_errors():
    tr = PowerTrace()
    tr.add(0.0, 1.0)
    with pytest.raises(MeterError):
        tr.energy_j(0.0, 1.0)
    with pytest.raises(ValueError):
        tr.energy_j(1.0, 0.0)
    with pytest.raises(MeterError):
        tr.mean_power_w(1.0, 1.0)


def test_cumulative_counter_trace():
    tr = PowerTrace()
    tr.add_energy(0.0, 0.0)
    tr.add_energy(1.0, 3.0)
    tr.add_energy(2.0, 5.0)
    assert tr.energy_j(0.5, 1.5) == pytest.approx(1.5 + 1.0)
    assert len(tr) == 3


# -- registry -----------------------------------------------------------------------------------


def test_registry():
    assert METERS == ("none", "estimate", "rapl", "ina219", "ina260", "um25c")
    assert make_meter("none") is None and make_meter(None) is None
    assert isinstance(make_meter("estimate", {"rate_hz": 10}), EstimateMeter)
    with pytest.raises(MeterError, match="unknown energy meter"):
        make_meter("wattmeter-9000")
    with pytest.raises(MeterError, match="unknown option"):
        make_meter("estimate", {"bogus": 1})
    with pytest.raises(MeterError):
        make_meter("none", {"rate_hz": 1})
    with pytest.raises(MeterError):
        make_meter("estimate", {"rate_hz": -1})
    with pytest.raises(MeterError):
        make_meter("estimate", {"rate_hz": {"a": 1}})


# -- estimate ----------------------------------------------------------------------------------


def test_estimate_power_model():
    m = EstimateMeter()
    assert m.power_from_busy(0) == pytest.approx(1.2)
    assert m.power_from_busy(4) == pytest.approx(4.0)
    assert m.power_from_busy(2) == pytest.approx(2.6)
    assert m.power_from_busy(9) == pytest.approx(4.0)  # clamped at the model's cores
    assert m.describe()["estimated"] is True


def test_busy_cores_from_cpu_times():
    import collections

    T = collections.namedtuple("T", "user nice system idle iowait")
    prev = [T(0, 0, 0, 0, 0), T(0, 0, 0, 0, 0)]
    cur = [T(1.0, 0, 0, 0, 0), T(0.25, 0, 0, 0.75, 0)]
    assert busy_cores(prev, cur) == pytest.approx(1.25)


def test_estimate_meter_samples_and_integrates():
    m = EstimateMeter(rate_hz=50)
    m.open()
    m.start()
    t0 = time.monotonic()
    end = t0 + 0.3
    while time.monotonic() < end:  # keep one core busy
        sum(i * i for i in range(1000))
    t1 = time.monotonic()
    tr = m.stop()
    m.close()
    assert tr.samples_in(t0, t1) >= 5
    p = tr.mean_power_w(t0, t1)
    assert 1.2 <= p <= 4.0
    assert tr.energy_j(t0, t1) == pytest.approx(p * (t1 - t0))


# -- RAPL ---------------------------------------------------------------------------------------


def test_unwrap():
    assert unwrap(100, 250, 1000) == 150
    assert unwrap(900, 100, 999) == 200  # wrapped once at max_range
    assert unwrap(5, 5, 1000) == 0


def make_powercap(root, energy_uj=0, max_range=262143328850):
    zone = root / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    sub = root / "sys/class/powercap/intel-rapl:0:0"
    sub.mkdir()
    (sub / "name").write_text("core\n")
    (sub / "energy_uj").write_text("123\n")
    (sub / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


def test_rapl_fake_tree_with_wraparound(tmp_path):
    zone = make_powercap(tmp_path, energy_uj=999_000, max_range=999_999)
    m = RaplMeter(root=str(tmp_path))
    m.open()
    assert m.describe()["zones"] == ["package-0"]  # the core sub-zone is not added
    tr = PowerTrace()
    m._zones[0].prev = None
    m.sample(tr)  # 999000
    (zone / "energy_uj").write_text("499000\n")  # wrapped: +1000 + 499000 = 500000 uJ
    m.sample(tr)
    (zone / "energy_uj").write_text("999000\n")  # +500000
    m.sample(tr)
    assert tr.cum_joules == [0.0, 0.5, 1.0]
    assert tr.energy_j(tr.cum_times[0], tr.cum_times[-1]) == pytest.approx(1.0)


def test_rapl_threaded_run(tmp_path):
    zone = make_powercap(tmp_path)
    stop = threading.Event()

    def writer():  # 5 W: 5 uJ per us; replace the file atomically, as sysfs reads are atomic
        t0 = time.monotonic()
        while not stop.is_set():
            (zone / "energy_uj.tmp").write_text(f"{int((time.monotonic() - t0) * 5e6)}\n")
            os.replace(zone / "energy_uj.tmp", zone / "energy_uj")
            time.sleep(0.002)

    th = threading.Thread(target=writer)
    th.start()
    try:
        time.sleep(0.02)
        m = RaplMeter(rate_hz=200, root=str(tmp_path))
        m.open()
        m.start()
        w0 = time.monotonic()
        time.sleep(0.3)
        w1 = time.monotonic()
        tr = m.stop()
    finally:
        stop.set()
        th.join()
    assert tr.mean_power_w(w0, w1) == pytest.approx(5.0, rel=0.15)


def test_rapl_missing(tmp_path):
    with pytest.raises(MeterError, match="no powercap"):
        RaplMeter(root=str(tmp_path)).open()
    (tmp_path / "sys/class/powercap").mkdir(parents=True)
    with pytest.raises(MeterError, match="no RAPL zone"):
        RaplMeter(root=str(tmp_path)).open()


# -- INA219 / INA260 on a fake SMBus --------------------------------------------------------------


class FakeSMBus:
    """Registers hold big-endian values; SMBus word transfers swap the bytes, as on real hardware."""

    def __init__(self, address, regs):
        self.address = address
        self.regs = dict(regs)
        self.writes = []

    def read_word_data(self, addr, reg):
        if addr != self.address:
            raise OSError(121, "Remote I/O error")
        value = self.regs[reg]
        return ((value & 0xFF) << 8) | (value >> 8)  # little-endian on the wire

    def write_word_data(self, addr, reg, word):
        if addr != self.address:
            raise OSError(121, "Remote I/O error")
        value = ((word & 0xFF) << 8) | (word >> 8)
        self.writes.append((reg, value))
        self.regs[reg] = value
        self.on_write(reg, value)

    def on_write(self, reg, value):
        pass


class FakeINA219(FakeSMBus):
    """Physical truth: V_bus, I through r_shunt. Registers per SBOS448 equations 3-5."""

    def __init__(self, v_bus, current_a, r_shunt=0.1, address=0x40):
        shunt_raw = int(round(current_a * r_shunt / 10e-6)) & 0xFFFF  # 10 uV LSB
        bus_raw = (int(round(v_bus / 0.004)) << 3) | 0x2  # CNVR set
        super().__init__(address, {0x00: 0x399F, 0x01: shunt_raw, 0x02: bus_raw, 0x05: 0})
        self.update()

    def on_write(self, reg, value):
        if reg == 0x05:
            self.regs[0x05] = value & 0xFFFE
            self.update()

    def update(self):
        cal = self.regs[0x05]
        shunt = to_signed16(self.regs[0x01])
        current = int(shunt * cal / 4096)
        self.regs[0x04] = current & 0xFFFF
        self.regs[0x03] = int(current * (self.regs[0x02] >> 3) / 5000) & 0xFFFF


def test_swap_and_sign():
    assert swap16(0x1234) == 0x3412
    assert swap16(swap16(0xBEEF)) == 0xBEEF
    assert to_signed16(0xFFFF) == -1 and to_signed16(0x7FFF) == 32767


def test_ina219_calibration_value():
    # SBOS448 worked example flavour: 0.1 ohm, 3.2 A max -> current_lsb 97.66 uA -> cal 4194.
    assert ina219_calibration(3.2 / 32768, 0.1) == 4194
    with pytest.raises(MeterError):
        ina219_calibration(1e-9, 0.1)


def test_ina219_register_decoding():
    bus = FakeINA219(v_bus=5.12, current_a=0.75)
    chip = INA219(bus, 0x40, r_shunt_ohm=0.1, max_current_a=3.2)
    chip.setup()
    assert (0x05, 4194) in bus.writes and (0x00, 0x399F) in bus.writes
    assert chip.bus_voltage_v() == pytest.approx(5.12, abs=0.004)
    assert chip.shunt_voltage_v() == pytest.approx(0.075, abs=1e-5)
    assert chip.current_a() == pytest.approx(0.75, rel=1e-3)
    assert chip.power_w() == pytest.approx(5.12 * 0.75, rel=2e-3)
    # The chip's own power register agrees (20 x current_lsb per bit).
    assert chip.read_reg(0x03) * 20 * chip.current_lsb_a == pytest.approx(3.84, rel=5e-3)


def test_ina219_negative_current_and_overflow():
    bus = FakeINA219(v_bus=5.0, current_a=-0.2)
    chip = INA219(bus, 0x40)
    chip.setup()
    assert chip.current_a() == pytest.approx(-0.2, rel=1e-2)
    bus.regs[0x02] |= 0x1  # OVF
    with pytest.raises(MeterError, match="overflow"):
        chip.bus_voltage_v()


def test_ina219_meter_background_sampling():
    bus = FakeINA219(v_bus=5.1, current_a=0.6)
    m = Ina219Meter(rate_hz=500, bus=bus)
    m.open()
    m.start()
    w0 = time.monotonic()
    time.sleep(0.2)
    w1 = time.monotonic()
    tr = m.stop()
    m.close()
    n = tr.samples_in(w0, w1)
    assert n >= 30  # a few hundred Hz requested; CI machines are slow, be lenient
    assert tr.mean_power_w(w0, w1) == pytest.approx(5.1 * 0.6, rel=3e-3)
    assert tr.energy_j(w0, w1) == pytest.approx(5.1 * 0.6 * (w1 - w0), rel=3e-3)


def test_ina219_wrong_address_is_meter_error():
    bus = FakeINA219(v_bus=5.0, current_a=0.5, address=0x41)
    with pytest.raises(MeterError, match="no answer"):
        Ina219Meter(bus=bus, address=0x40).open()


def test_ina219_needs_smbus2_when_no_bus(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "smbus2":
            raise ImportError("No module named 'smbus2'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MeterError, match="smbus2"):
        Ina219Meter().open()


class FakeINA260(FakeSMBus):
    def __init__(self, v_bus, current_a, address=0x40, die=0x2270):
        super().__init__(
            address,
            {
                0x00: 0x6127,
                0x01: int(round(current_a / 1.25e-3)) & 0xFFFF,
                0x02: int(round(v_bus / 1.25e-3)),
                0x03: int(round(v_bus * current_a / 10e-3)),
                0xFE: 0x5449,
                0xFF: die,
            },
        )


def test_ina260_register_decoding():
    bus = FakeINA260(v_bus=5.05, current_a=0.9)
    chip = INA260(bus, 0x40)
    chip.setup()
    assert chip.bus_voltage_v() == pytest.approx(5.05, abs=1.25e-3)
    assert chip.current_a() == pytest.approx(0.9, abs=1.25e-3)
    assert chip.power_w() == pytest.approx(5.05 * 0.9, rel=2e-3)
    # raw bytes as they come over SMBus: 0x0FC8 (4040 x 1.25 mV = 5.05 V) arrives as 0xC80F
    assert bus.read_word_data(0x40, 0x02) == 0xC80F


def test_ina260_identity_checks():
    with pytest.raises(MeterError, match="die id"):
        INA260(FakeINA260(5.0, 0.5, die=0x1230), 0x40).setup()
    bad = FakeINA260(5.0, 0.5)
    bad.regs[0xFE] = 0x1234
    with pytest.raises(MeterError, match="manufacturer"):
        INA260(bad, 0x40).setup()


def test_ina260_meter():
    m = Ina260Meter(rate_hz=300, bus=FakeINA260(5.0, -0.4))
    m.open()
    m.start()
    w0 = time.monotonic()
    time.sleep(0.1)
    w1 = time.monotonic()
    tr = m.stop()
    assert tr.mean_power_w(w0, w1) == pytest.approx(-2.0, rel=1e-2)


# -- UM25C over a pseudo-terminal ---------------------------------------------------------------


def test_um25c_frame_by_hand():
    frame = bytearray(FRAME_LEN)
    frame[0:2] = b"\x09\xc9"  # UM25C
    frame[2:4] = (5083).to_bytes(2, "big")  # 5.083 V
    frame[4:6] = (5120).to_bytes(2, "big")  # 0.5120 A
    frame[6:10] = (2602).to_bytes(4, "big")  # 2.602 W
    frame[10:12] = (31).to_bytes(2, "big")
    frame[128:130] = b"\xff\xf1"
    r = parse_frame(bytes(frame))
    assert r["voltage_v"] == pytest.approx(5.083)
    assert r["current_a"] == pytest.approx(0.512)
    assert r["power_w"] == pytest.approx(5.083 * 0.512)
    assert r["power_field_w"] == pytest.approx(2.602)
    assert r["temp_c"] == 31
    assert build_frame(5.083, 0.512, 31)[:12] == bytes(frame[:12])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda f: f[:-1], "bytes"),
        (lambda f: f[:-2] + b"\x00\x00", "end marker"),
        (lambda f: b"\x09\x63" + f[2:], "not a UM25C"),
    ],
)
def test_um25c_bad_frames(mutate, match):
    with pytest.raises(MeterError, match=match):
        parse_frame(mutate(build_frame(5.0, 0.5)))


class UmPeer(threading.Thread):
    """The meter's side of a pseudo-terminal: answers each 0xF0 with a frame."""

    def __init__(self, master_fd, volts=5.0, amps=0.8, silent=False):
        super().__init__(daemon=True)
        self.fd = master_fd
        self.volts, self.amps, self.silent = volts, amps, silent
        self.stop_evt = threading.Event()
        self.polls = 0

    def run(self):
        while not self.stop_evt.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if not r:
                continue
            try:
                data = os.read(self.fd, 64)
            except OSError:
                return
            for b in data:
                if b == 0xF0:
                    self.polls += 1
                    if not self.silent:
                        os.write(self.fd, build_frame(self.volts, self.amps))


@pytest.fixture
def pty_meter():
    master, slave = os.openpty()
    port = os.ttyname(slave)
    peers = []

    def start(**kw):
        peer = UmPeer(master, **kw)
        peer.start()
        peers.append(peer)
        return port, peer

    yield start
    for p in peers:
        p.stop_evt.set()
        p.join(1)
    os.close(master)
    os.close(slave)


def test_um25c_over_pty_raw_termios(pty_meter):
    port, peer = pty_meter(volts=5.08, amps=0.64)
    m = Um25cMeter(port=port, rate_hz=20, use_pyserial=False, timeout_s=1.0)
    m.open()
    m.start()
    w0 = time.monotonic()
    time.sleep(0.4)
    w1 = time.monotonic()
    tr = m.stop()
    m.close()
    assert peer.polls >= 5
    assert tr.samples_in(w0, w1) >= 3
    assert tr.mean_power_w(w0, w1) == pytest.approx(5.08 * 0.64, rel=1e-3)


def test_um25c_silent_meter_times_out(pty_meter):
    port, _ = pty_meter(silent=True)
    m = Um25cMeter(port=port, use_pyserial=False, timeout_s=0.2)
    with pytest.raises(MeterError, match="timed out"):
        m.open()


def test_um25c_missing_port():
    with pytest.raises(MeterError, match="cannot open"):
        Um25cMeter(port="/dev/does-not-exist-um25c", use_pyserial=False).open()


def test_frame_struct_layout_is_big_endian():
    f = build_frame(5.0, 1.0)
    assert struct.unpack_from(">H", f, 2)[0] == 5000
    assert struct.unpack_from(">H", f, 4)[0] == 10000
    assert math.isclose(struct.unpack_from(">I", f, 6)[0], 5000)
