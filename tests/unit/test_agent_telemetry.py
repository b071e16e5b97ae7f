"""nnflash_agent.telemetry on a fake /proc + /sys tree and a fake vcgencmd (hardware test doubles)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnflash_agent.telemetry import (
    Telemetry,
    compare_states,
    decode_throttled,
    parse_get_throttled,
    parse_measure_clock,
)

PI_CPUINFO = """processor\t: 0
BogoMIPS\t: 38.40
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd03

Hardware\t: BCM2835
Revision\t: a02082
Serial\t\t: 00000000deadbeef
Model\t\t: Raspberry Pi 3 Model B Rev 1.2
"""


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def fake_pi(root: Path, cur_khz: int = 1200000, temp_milli: int = 51540) -> None:
    write(root, "/proc/cpuinfo", PI_CPUINFO)
    write(root, "/proc/loadavg", "0.52 0.31 0.20 1/123 4567\n")
    write(root, "/proc/device-tree/model", "Raspberry Pi 3 Model B Rev 1.2\x00")
    write(root, "/etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    pol = "/sys/devices/system/cpu/cpufreq/policy0/"
    write(root, pol + "scaling_governor", "ondemand\n")
    write(root, pol + "scaling_cur_freq", f"{cur_khz}\n")
    write(root, pol + "scaling_min_freq", "600000\n")
    write(root, pol + "scaling_max_freq", "1200000\n")
    write(root, pol + "affected_cpus", "0 1 2 3\n")
    write(root, "/sys/class/thermal/thermal_zone0/temp", f"{temp_milli}\n")
    write(root, "/sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")


class FakeVcgencmd:
    def __init__(self, clock_hz: int = 1200000000, throttled: int = 0x0) -> None:
        self.clock_hz = clock_hz
        self.throttled = throttled
        self.calls: list = []

    def __call__(self, args):
        self.calls.append(args)
        if args == ["measure_clock", "arm"]:
            return f"frequency(48)={self.clock_hz}\n"
        if args == ["get_throttled"]:
            return f"throttled={self.throttled:#x}\n"
        return 'error=1 error_msg="Command not registered"\n'


def test_parsers():
    assert parse_measure_clock("frequency(48)=1200126000\n") == 1200126000
    assert parse_measure_clock("frequency(45)=600000000") == 600000000
    assert parse_measure_clock("garbage") is None
    assert parse_measure_clock("frequency(48)=abc") is None
    assert parse_get_throttled("throttled=0x50005\n") == 0x50005
    assert parse_get_throttled("throttled=0x0") == 0
    assert parse_get_throttled("nope") is None
    assert parse_get_throttled("throttled=zz") is None


def test_decode_throttled_bits():
    d = decode_throttled(0x50005)
    assert d["now"] == {
        "under_voltage": True,
        "arm_freq_capped": False,
        "throttled": True,
        "soft_temp_limit": False,
    }
    assert d["since_boot"]["under_voltage"] and d["since_boot"]["throttled"]
    assert not d["since_boot"]["arm_freq_capped"]
    assert d["any_now"] and d["any_since_boot"] and d["hex"] == "0x50005"
    clean = decode_throttled(0)
    assert not clean["any_now"] and not clean["any_since_boot"]
    past = decode_throttled(0x80000)
    assert past["since_boot"]["soft_temp_limit"] and not past["any_now"]


def test_state_from_fake_tree(tmp_path):
    fake_pi(tmp_path)
    tel = Telemetry(root=str(tmp_path), vcgencmd=FakeVcgencmd(throttled=0x50000))
    s = tel.state()
    assert s["governor"] == "ondemand"
    assert s["cpufreq"][0] == {
        "policy": "policy0",
        "cpus": "0 1 2 3",
        "governor": "ondemand",
        "cur_khz": 1200000,
        "min_khz": 600000,
        "max_khz": 1200000,
        "hw_cur_khz": None,
    }
    assert s["arm_clock_hz"] == 1200000000
    assert s["throttled"]["raw"] == 0x50000 and not s["throttled"]["any_now"]
    assert s["temp_c"] == pytest.approx(51.54)
    assert s["temperatures"][0]["type"] == "cpu-thermal"
    assert s["loadavg"] == [0.52, 0.31, 0.20]


def test_facts_from_fake_tree(tmp_path):
    fake_pi(tmp_path)
    f = Telemetry(root=str(tmp_path), vcgencmd=FakeVcgencmd()).facts()
    assert f["cpu_model"] == "ARM Cortex-A53"
    assert f["board_model"] == "Raspberry Pi 3 Model B Rev 1.2"
    assert f["os"] == "Debian GNU/Linux 12 (bookworm)"
    for key in ("cpu_count", "machine", "python", "libc", "mem_total_bytes", "runtimes"):
        assert key in f
    assert f["vcgencmd"] is True
    assert isinstance(f["runtimes"], dict)


def test_cpu_model_fallbacks(tmp_path):
    write(tmp_path, "/proc/cpuinfo", "processor : 0\nmodel name : Intel(R) Xeon(R)\nmodel : 85\n")
    assert Telemetry(root=str(tmp_path), vcgencmd=None).cpu_model() == "Intel(R) Xeon(R)"
    write(tmp_path, "/proc/cpuinfo", "processor : 0\nCPU implementer : 0x51\nHardware : Qualcomm\n")
    assert Telemetry(root=str(tmp_path), vcgencmd=None).cpu_model() == "Qualcomm"


def test_empty_tree_never_raises(tmp_path):
    tel = Telemetry(root=str(tmp_path), vcgencmd=None)
    s = tel.state()
    assert s["cpufreq"] == [] and s["temp_c"] is None and s["throttled"] is None
    assert s["arm_clock_hz"] is None and s["governor"] is None
    f = tel.facts()
    assert f["vcgencmd"] is False


def test_missing_vcgencmd_binary_is_none():
    tel = Telemetry(vcgencmd="definitely-not-a-command-xyz")
    assert tel.vcgencmd("get_throttled") is None


def test_broken_vcgencmd_is_none(tmp_path):
    def boom(args):
        raise OSError("device busy")

    tel = Telemetry(root=str(tmp_path), vcgencmd=boom)
    assert tel.state()["throttled"] is None


def test_vcgencmd_as_command(tmp_path):
    script = tmp_path / "vcgencmd"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        "  get_throttled) echo throttled=0x4;;\n"
        "  measure_clock) echo 'frequency(48)=600000000';;\n"
        "esac\n"
    )
    script.chmod(0o755)
    tel = Telemetry(root=str(tmp_path), vcgencmd=[str(script)])
    s = tel.state()
    assert s["throttled"]["now"]["throttled"] is True
    assert s["arm_clock_hz"] == 600000000


def _states(tmp_path, before_kw, after_kw, vc_before, vc_after):
    fake_pi(tmp_path, **before_kw)
    b = Telemetry(root=str(tmp_path), vcgencmd=vc_before).state()
    fake_pi(tmp_path, **after_kw)
    a = Telemetry(root=str(tmp_path), vcgencmd=vc_after).state()
    return b, a


def test_compare_states_clean_performance(tmp_path):
    b, a = _states(tmp_path, {}, {}, FakeVcgencmd(), FakeVcgencmd())
    flags = compare_states(b, a)
    assert flags == ["governor_not_performance"]  # ondemand in the fake tree
    for s in (b, a):
        s["cpufreq"][0]["governor"] = "performance"
    assert compare_states(b, a) == []


def test_compare_states_throttle_now_and_since_boot_change(tmp_path):
    b, a = _states(tmp_path, {}, {}, FakeVcgencmd(), FakeVcgencmd(throttled=0x4))
    assert "throttled" in compare_states(b, a)
    b, a = _states(tmp_path, {}, {}, FakeVcgencmd(throttled=0x0), FakeVcgencmd(throttled=0x40000))
    assert "throttled" in compare_states(b, a)
    # since-boot bit set before and unchanged: not suspect
    b, a = _states(tmp_path, {}, {}, FakeVcgencmd(throttled=0x40000), FakeVcgencmd(throttled=0x40000))
    assert "throttled" not in compare_states(b, a)
    b, a = _states(tmp_path, {}, {}, FakeVcgencmd(throttled=0x1), FakeVcgencmd(throttled=0x10001))
    flags = compare_states(b, a)
    assert "under_voltage" in flags and "throttled" in flags


def test_compare_states_freq_changed(tmp_path):
    b, a = _states(tmp_path, {}, {}, FakeVcgencmd(clock_hz=1200000000), FakeVcgencmd(clock_hz=600000000))
    assert "freq_changed" in compare_states(b, a)
    b, a = _states(tmp_path, {"cur_khz": 1200000}, {"cur_khz": 600000}, FakeVcgencmd(), FakeVcgencmd())
    assert "freq_changed" in compare_states(b, a)
    b, a = _states(tmp_path, {}, {}, FakeVcgencmd(), FakeVcgencmd(clock_hz=1200500000))
    assert "freq_changed" not in compare_states(b, a)  # within 1%


def test_thermal_gate_passes_and_times_out(tmp_path):
    fake_pi(tmp_path, temp_milli=50000)
    tel = Telemetry(root=str(tmp_path), vcgencmd=None)
    r = tel.wait_cool(60.0, 5.0, poll_s=0.01)
    assert not r["timed_out"] and r["temp_c"] == 50.0 and r["waited_s"] < 1.0
    r = tel.wait_cool(40.0, 0.1, poll_s=0.02)
    assert r["timed_out"] and 0.1 <= r["waited_s"] < 1.0


def test_thermal_gate_waits_until_cool(tmp_path):
    import threading

    fake_pi(tmp_path, temp_milli=82000)
    tel = Telemetry(root=str(tmp_path), vcgencmd=None)
    timer = threading.Timer(
        0.2,
        lambda: (tmp_path / "sys/class/thermal/thermal_zone0/temp").write_text("70000\n"),
    )
    timer.start()
    try:
        r = tel.wait_cool(75.0, 5.0, poll_s=0.02)
    finally:
        timer.cancel()
    assert not r["timed_out"] and r["temp_c"] == 70.0 and 0.15 <= r["waited_s"] < 2.0


def test_thermal_gate_without_sensor_returns_at_once(tmp_path):
    r = Telemetry(root=str(tmp_path), vcgencmd=None).wait_cool(10.0, 5.0)
    assert r == {"waited_s": r["waited_s"], "temp_c": None, "timed_out": False}


def test_real_machine_state_has_all_keys():
    s = Telemetry().state()
    for key in (
        "cpufreq",
        "governor",
        "arm_clock_hz",
        "throttled",
        "temperatures",
        "temp_c",
        "loadavg",
        "mem_available_bytes",
    ):
        assert key in s


def test_memory_and_physical_cores_from_proc_and_sysfs(tmp_path) -> None:
    from nnflash_agent.telemetry import memory, physical_cores

    info = tmp_path / "meminfo"
    info.write_text("MemTotal:         948280 kB\nMemFree:          512000 kB\nMemAvailable:     700000 kB\n")
    assert memory(str(info)) == {"total": 948280 * 1024, "available": 700000 * 1024}
    for cpu, core in enumerate((0, 1, 0, 1)):  # two cores with two hardware threads each
        topo = tmp_path / "cpu" / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "core_id").write_text(f"{core}\n")
        (topo / "physical_package_id").write_text("0\n")
    assert physical_cores(str(tmp_path / "cpu")) == 2
    real = memory()
    assert real["total"] is None or real["total"] > 0


def test_builtin_sha256_matches_hashlib(tmp_path) -> None:
    import hashlib

    from nnflash_agent.fileio import sha256_file

    p = tmp_path / "blob"
    p.write_bytes(bytes(range(256)) * 5000)
    assert sha256_file(str(p)) == hashlib.sha256(p.read_bytes()).hexdigest()
