"""The ``um25c`` meter: RDTech UM25C USB power meter over a (Bluetooth rfcomm) serial port.

Poll protocol: send the byte ``0xF0``; the meter answers one 130-byte frame, big-endian fields:
offset 0 model id (0x09C9 for the UM25C), 2 voltage (u16, mV), 4 current (u16, 0.1 mA), 6 power
(u32, mW), 10 temperature (u16, C), ..., 128 end marker 0xFFF1. 9600 baud, 8N1.

pyserial is used when installed, else the tty is put in raw mode with termios (standard library).
USB meters update a few times per second: good for idle baselines and long averages, not for
per-inference energy of short windows (REFERENCE.md section 5).
"""

from __future__ import annotations

import os
import select
import struct
import time
from typing import Any, Dict, Optional

from nnflash_agent.energy.base import MeterError, PowerTrace, SamplingMeter

__all__ = ["FRAME_LEN", "POLL_CMD", "parse_frame", "build_frame", "Um25cMeter", "RawTty"]

FRAME_LEN = 130
POLL_CMD = b"\xf0"
MODEL_UM25C = 0x09C9
END_MARKER = 0xFFF1


def parse_frame(frame: bytes) -> Dict[str, float]:
    """Decode one UM25C frame; raises :class:`MeterError` if it is not one."""
    if len(frame) != FRAME_LEN:
        raise MeterError(f"um25c: frame of {len(frame)} bytes, expected {FRAME_LEN}")
    model, mv, tenth_ma, mw, temp_c = struct.unpack_from(">HHHIH", frame, 0)
    (end,) = struct.unpack_from(">H", frame, FRAME_LEN - 2)
    if end != END_MARKER:
        raise MeterError(f"um25c: bad end marker {end:#06x}")
    if model != MODEL_UM25C:
        raise MeterError(f"um25c: model id {model:#06x} is not a UM25C (0x09c9)")
    voltage_v = mv / 1000.0
    current_a = tenth_ma / 10000.0
    return {
        "voltage_v": voltage_v,
        "current_a": current_a,
        "power_w": voltage_v * current_a,  # finer than the meter's own 1 mW power field
        "power_field_w": mw / 1000.0,
        "temp_c": float(temp_c),
    }


def build_frame(voltage_v: float, current_a: float, temp_c: int = 25) -> bytes:
    """A frame as the meter sends it (used by tests and the pseudo-terminal peer)."""
    mv = int(round(voltage_v * 1000))
    tenth_ma = int(round(current_a * 10000))
    mw = int(round(voltage_v * current_a * 1000))
    buf = bytearray(FRAME_LEN)
    struct.pack_into(">HHHIH", buf, 0, MODEL_UM25C, mv, tenth_ma, mw, temp_c)
    struct.pack_into(">H", buf, 12, int(temp_c * 9 / 5 + 32))
    struct.pack_into(">H", buf, FRAME_LEN - 2, END_MARKER)
    return bytes(buf)


class RawTty:
    """A serial port through termios (no pyserial): raw mode, 8N1, given baud rate."""

    def __init__(self, port: str, baudrate: int = 9600, timeout_s: float = 1.0) -> None:
        import termios
        import tty

        self.timeout_s = timeout_s
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(self.fd)
            attrs = termios.tcgetattr(self.fd)
            speed = getattr(termios, f"B{baudrate}", termios.B9600)
            attrs[4] = attrs[5] = speed
            attrs[2] |= termios.CLOCAL | termios.CREAD
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
            termios.tcflush(self.fd, termios.TCIOFLUSH)
        except BaseException:
            os.close(self.fd)
            raise

    def write(self, data: bytes) -> int:
        return os.write(self.fd, data)

    def read(self, n: int) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        buf = b""
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                break
            try:
                chunk = os.read(self.fd, n - len(buf))
            except BlockingIOError:
                continue
            if not chunk:
                break
            buf += chunk
        return buf

    def reset_input_buffer(self) -> None:
        import termios

        termios.tcflush(self.fd, termios.TCIFLUSH)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _open_port(port: str, baudrate: int, timeout_s: float, use_pyserial: bool) -> Any:
    if use_pyserial:
        try:
            import serial  # pyserial
        except ImportError:
            pass
        else:
            try:
                return serial.Serial(port, baudrate=baudrate, timeout=timeout_s)
            except (OSError, ValueError) as exc:
                raise MeterError(f"um25c: cannot open {port}: {exc}") from None
    try:
        return RawTty(port, baudrate, timeout_s)
    except OSError as exc:
        raise MeterError(f"um25c: cannot open {port}: {exc}") from None


class Um25cMeter(SamplingMeter):
    name = "um25c"

    def __init__(
        self,
        port: str = "/dev/rfcomm0",
        rate_hz: float = 5.0,
        baudrate: int = 9600,
        timeout_s: float = 1.0,
        use_pyserial: bool = True,
    ) -> None:
        super().__init__(rate_hz)
        self.port = port
        self.baudrate = int(baudrate)
        self.timeout_s = float(timeout_s)
        self.use_pyserial = bool(use_pyserial)
        self._dev: Optional[Any] = None
        self.last: Optional[Dict[str, float]] = None

    def open(self) -> None:
        self._dev = _open_port(self.port, self.baudrate, self.timeout_s, self.use_pyserial)
        try:
            self.poll()
        except MeterError:
            self.close()
            raise

    def poll(self) -> Dict[str, float]:
        if self._dev is None:
            raise MeterError("um25c: not opened")
        try:
            self._dev.reset_input_buffer()
            self._dev.write(POLL_CMD)
            frame = self._dev.read(FRAME_LEN)
        except OSError as exc:
            raise MeterError(f"um25c: {self.port}: {exc}") from None
        if len(frame) < FRAME_LEN:
            raise MeterError(f"um25c: {self.port}: timed out ({len(frame)} of {FRAME_LEN} bytes)")
        self.last = parse_frame(bytes(frame))
        return self.last

    def sample(self, trace: PowerTrace) -> None:
        t0 = time.monotonic()
        reading = self.poll()
        trace.add((t0 + time.monotonic()) / 2.0, reading["power_w"])

    def read_power_w(self) -> float:
        return self.poll()["power_w"]

    def close(self) -> None:
        if self._dev is not None:
            try:
                self._dev.close()
            except Exception:
                pass
            self._dev = None

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["port"] = self.port
        return d
