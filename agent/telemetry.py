"""Device facts (static) and device state (changes during a run): /proc, /sys and vcgencmd.

Everything here is injectable for tests: ``root`` is prepended to every /proc and /sys path, and
``vcgencmd`` is either a command (list of strings / string, ``None`` to disable) or a callable
``f(args: list[str]) -> str`` returning the tool's stdout. A missing file or tool yields ``None``
for that field, never an exception: telemetry must never break a measurement.

Standard library + psutil only.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

__all__ = [
    "Telemetry",
    "decode_throttled",
    "parse_measure_clock",
    "parse_get_throttled",
    "runtime_versions",
    "compare_states",
    "THROTTLE_BITS",
]

# `vcgencmd get_throttled` bits (REFERENCE.md section 3): 0-3 "now", 16-19 "occurred since boot".
THROTTLE_BITS = {
    0: "under_voltage",
    1: "arm_freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
}
NOW_MASK = 0xF
SINCE_BOOT_MASK = 0xF << 16

# Arm Ltd. (implementer 0x41) core part numbers, as in /proc/cpuinfo's "CPU part".
ARM_PARTS = {
    0xD03: "Cortex-A53",  # Raspberry Pi 3
    0xD04: "Cortex-A35",
    0xD05: "Cortex-A55",
    0xD07: "Cortex-A57",
    0xD08: "Cortex-A72",  # Raspberry Pi 4
    0xD09: "Cortex-A73",
    0xD0A: "Cortex-A75",
    0xD0B: "Cortex-A76",  # Raspberry Pi 5
    0xC07: "Cortex-A7",  # Raspberry Pi 2
}

VcgencmdSpec = Union[None, str, Sequence[str], Callable[[List[str]], str]]


def decode_throttled(value: int) -> Dict[str, Any]:
    """Decode the get_throttled bit field into named booleans."""
    now = {name: bool(value & (1 << bit)) for bit, name in THROTTLE_BITS.items()}
    since = {name: bool(value & (1 << (bit + 16))) for bit, name in THROTTLE_BITS.items()}
    return {
        "raw": value,
        "hex": hex(value),
        "now": now,
        "since_boot": since,
        "any_now": bool(value & NOW_MASK),
        "any_since_boot": bool(value & SINCE_BOOT_MASK),
    }


def parse_get_throttled(text: str) -> Optional[int]:
    """``throttled=0x50005`` -> 0x50005 (None when unparsable)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("throttled="):
            try:
                return int(line.split("=", 1)[1], 0)
            except ValueError:
                return None
    return None


def parse_measure_clock(text: str) -> Optional[int]:
    """``frequency(48)=1200000000`` -> 1200000000 Hz (None when unparsable)."""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("frequency(") and "=" in line:
            try:
                return int(line.split("=", 1)[1])
            except ValueError:
                return None
    return None


def runtime_versions() -> Dict[str, Optional[str]]:
    """Installed inference runtimes and their versions, found without importing them (fast)."""
    import importlib.util
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for module, dists in (
        ("onnxruntime", ("onnxruntime",)),
        ("ai_edge_litert", ("ai-edge-litert", "ai-edge-litert-nightly")),
        ("tflite_runtime", ("tflite-runtime", "tflite_runtime")),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            continue
        version: Optional[str] = None
        for dist in dists:
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        out[module] = version
    return out


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> Optional[int]:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def memory(meminfo: str = "/proc/meminfo") -> Dict[str, Optional[int]]:
    """``{"total", "available"}`` in bytes: ``/proc/meminfo`` on Linux (no psutil in the serving
    process: it costs 2.6 MB resident), psutil elsewhere; None where neither answers."""
    text = _read(meminfo)
    if text:
        kb = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                kb[key] = int(parts[0])
        if "MemTotal" in kb:
            return {
                "total": kb["MemTotal"] * 1024,
                "available": kb["MemAvailable"] * 1024 if "MemAvailable" in kb else None,
            }
    try:
        import psutil

        vm = psutil.virtual_memory()
        return {"total": int(vm.total), "available": int(vm.available)}
    except Exception:
        return {"total": None, "available": None}


def physical_cores(sys_cpu: str = "/sys/devices/system/cpu") -> Optional[int]:
    """Physical cores (distinct package/core pairs in sysfs), psutil where sysfs has no topology."""
    cores = set()
    for d in glob.glob(os.path.join(sys_cpu, "cpu[0-9]*", "topology")):
        core = _read_int(os.path.join(d, "core_id"))
        pkg = _read_int(os.path.join(d, "physical_package_id"))
        if core is not None:
            cores.add((pkg, core))
    if cores:
        return len(cores)
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        return int(n) if n else None
    except Exception:
        return None


class Telemetry:
    """Reads device facts and state. ``root``: prefix of /proc and /sys (tests pass a fake tree)."""

    def __init__(
        self,
        root: str = "/",
        vcgencmd: VcgencmdSpec = "vcgencmd",
        vcgencmd_timeout_s: float = 2.0,
    ) -> None:
        self.root = root
        self.vcgencmd_timeout_s = vcgencmd_timeout_s
        self._vcgencmd: Optional[Callable[[List[str]], str]] = self._make_vcgencmd(vcgencmd)

    # -- helpers -------------------------------------------------------------------------------

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _make_vcgencmd(self, spec: VcgencmdSpec) -> Optional[Callable[[List[str]], str]]:
        if spec is None:
            return None
        if callable(spec):
            return spec
        cmd = [spec] if isinstance(spec, str) else list(spec)
        if not cmd or shutil.which(cmd[0]) is None:
            return None
        timeout = self.vcgencmd_timeout_s

        def run(args: List[str]) -> str:
            proc = subprocess.run(
                cmd + list(args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            return proc.stdout.decode("utf-8", "replace")

        return run

    def vcgencmd(self, *args: str) -> Optional[str]:
        if self._vcgencmd is None:
            return None
        try:
            return self._vcgencmd(list(args))
        except Exception:  # a broken tool must not break a measurement
            return None

    # -- facts ---------------------------------------------------------------------------------

    def cpu_model(self) -> Optional[str]:
        text = _read(self._p("/proc/cpuinfo"))
        if not text:
            return platform.processor() or None
        fields: Dict[str, str] = {}
        for line in text.splitlines():
            if ":" in line:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
        # x86: "model name". Arm: "CPU implementer" + "CPU part" name the core (the Raspberry Pi's
        # "Model" line is the board, reported as board_model).
        if fields.get("model name"):
            return fields["model name"]
        try:
            implementer = int(fields.get("cpu implementer", ""), 16)
            part = int(fields.get("cpu part", ""), 16)
        except ValueError:
            implementer = part = -1
        if implementer == 0x41 and part in ARM_PARTS:
            return f"ARM {ARM_PARTS[part]}"
        for key in ("hardware", "model", "processor"):
            if fields.get(key):
                return fields[key]
        return None

    def board_model(self) -> Optional[str]:
        text = _read(self._p("/proc/device-tree/model"))
        return text.rstrip("\x00") if text else None

    def os_release(self) -> Optional[str]:
        text = _read(self._p("/etc/os-release"))
        if not text:
            return None
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
        return None

    def facts(self) -> Dict[str, Any]:
        """Static device facts (cheap: no runtime is imported)."""
        from nnflash_agent import __version__

        mem_total = memory().get("total")
        physical = physical_cores()
        libc, libc_version = platform.libc_ver()
        return {
            "agent_version": __version__,
            "cpu_model": self.cpu_model(),
            "board_model": self.board_model(),
            "cpu_count": os.cpu_count(),
            "cpu_count_physical": physical,
            "machine": platform.machine(),
            "system": platform.system(),
            "release": platform.release(),
            "os": self.os_release(),
            "python": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "libc": f"{libc} {libc_version}".strip() or None,
            "mem_total_bytes": mem_total,
            "runtimes": runtime_versions(),
            "vcgencmd": self._vcgencmd is not None,
            "hostname": platform.node(),
        }

    # -- state ---------------------------------------------------------------------------------

    def cpufreq(self) -> List[Dict[str, Any]]:
        base = self._p("/sys/devices/system/cpu/cpufreq")
        out = []
        for pdir in sorted(glob.glob(os.path.join(base, "policy*"))):
            name = os.path.basename(pdir)
            out.append(
                {
                    "policy": name,
                    "cpus": _read(os.path.join(pdir, "affected_cpus")),
                    "governor": _read(os.path.join(pdir, "scaling_governor")),
                    "cur_khz": _read_int(os.path.join(pdir, "scaling_cur_freq")),
                    "min_khz": _read_int(os.path.join(pdir, "scaling_min_freq")),
                    "max_khz": _read_int(os.path.join(pdir, "scaling_max_freq")),
                    "hw_cur_khz": _read_int(os.path.join(pdir, "cpuinfo_cur_freq")),
                }
            )
        return out

    def temperatures(self) -> List[Dict[str, Any]]:
        out = []
        pattern = os.path.join(self._p("/sys/class/thermal"), "thermal_zone*")
        for zdir in sorted(glob.glob(pattern)):
            milli = _read_int(os.path.join(zdir, "temp"))
            if milli is None:
                continue
            out.append(
                {
                    "zone": os.path.basename(zdir),
                    "type": _read(os.path.join(zdir, "type")),
                    "temp_c": milli / 1000.0,
                }
            )
        return out

    def max_temp_c(self) -> Optional[float]:
        temps = [t["temp_c"] for t in self.temperatures()]
        return max(temps) if temps else None

    def loadavg(self) -> Optional[List[float]]:
        text = _read(self._p("/proc/loadavg"))
        if text:
            try:
                return [float(x) for x in text.split()[:3]]
            except ValueError:
                return None
        return None

    def state(self) -> Dict[str, Any]:
        """The device's current state: clocks, governor, throttling, temperature, load, memory."""
        state: Dict[str, Any] = {"time_unix": time.time()}
        policies = self.cpufreq()
        state["cpufreq"] = policies
        governors = sorted({p["governor"] for p in policies if p["governor"]})
        state["governor"] = governors[0] if len(governors) == 1 else (governors or None)
        clock = self.vcgencmd("measure_clock", "arm")
        state["arm_clock_hz"] = parse_measure_clock(clock) if clock else None
        throttled_text = self.vcgencmd("get_throttled")
        raw = parse_get_throttled(throttled_text) if throttled_text else None
        state["throttled"] = decode_throttled(raw) if raw is not None else None
        temps = self.temperatures()
        state["temperatures"] = temps
        state["temp_c"] = max((t["temp_c"] for t in temps), default=None)
        state["loadavg"] = self.loadavg()
        mem = memory()
        state["mem_available_bytes"] = mem.get("available")
        if mem.get("total") is not None:
            state["mem_total_bytes"] = mem["total"]
        return state

    def wait_cool(self, threshold_c: float, max_wait_s: float, poll_s: float = 0.5) -> Dict[str, Any]:
        """Thermal gate: wait (at most ``max_wait_s``) until the hottest zone < ``threshold_c``.

        Returns ``{"waited_s", "temp_c", "timed_out"}``; with no thermal zone it returns at once
        (``temp_c`` None, not timed out).
        """
        start = time.monotonic()
        while True:
            temp = self.max_temp_c()
            waited = time.monotonic() - start
            if temp is None or temp < threshold_c:
                return {"waited_s": waited, "temp_c": temp, "timed_out": False}
            if waited >= max_wait_s:
                return {"waited_s": waited, "temp_c": temp, "timed_out": True}
            time.sleep(min(poll_s, max(0.0, max_wait_s - waited)) or poll_s)


def compare_states(before: Dict[str, Any], after: Dict[str, Any], freq_tol: float = 0.01) -> List[str]:
    """Flags for a run from the states around it (REFERENCE.md section 3):

    - ``throttled``: a "now" throttling bit (0-3) was set before or after, or a "since boot" bit
      (16-19) changed during the run;
    - ``under_voltage``: bit 0 (now) or its since-boot bit appeared;
    - ``freq_changed``: the real ARM clock (vcgencmd) or a policy's requested clock moved by more
      than ``freq_tol`` (relative), or a governor changed;
    - ``governor_not_performance``: a known governor other than ``performance``.
    """
    flags: List[str] = []
    tb, ta = before.get("throttled"), after.get("throttled")
    if tb or ta:
        raw_b = tb["raw"] if tb else 0
        raw_a = ta["raw"] if ta else 0
        if (raw_b | raw_a) & NOW_MASK or (raw_b ^ raw_a) & SINCE_BOOT_MASK:
            flags.append("throttled")
        if (raw_b | raw_a) & 0x1 or (raw_b ^ raw_a) & (0x1 << 16):
            flags.append("under_voltage")

    def moved(a: Any, b: Any) -> bool:
        if not a or not b:
            return False
        return abs(a - b) > freq_tol * max(a, b)

    changed = moved(before.get("arm_clock_hz"), after.get("arm_clock_hz"))
    pol_b = {p["policy"]: p for p in before.get("cpufreq") or []}
    for p in after.get("cpufreq") or []:
        q = pol_b.get(p["policy"])
        if q is None:
            continue
        if moved(q.get("cur_khz"), p.get("cur_khz")) or q.get("governor") != p.get("governor"):
            changed = True
    if changed:
        flags.append("freq_changed")
    governors = {p.get("governor") for s in (before, after) for p in (s.get("cpufreq") or []) if p.get("governor")}
    if governors and governors != {"performance"}:
        flags.append("governor_not_performance")
    return flags


def _main() -> None:  # pragma: no cover - debugging aid: python -m nnflash_agent.telemetry
    import json

    t = Telemetry()
    json.dump({"facts": t.facts(), "state": t.state()}, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":  # pragma: no cover
    _main()
