"""The agent's own wheel, built from this repository's ``agent/`` package without a build backend.

``nnflash agent install`` ships the agent to a device as a wheel (PEP 427) named
``nnflash_agent-<version>-py3-none-any.whl``. It holds only the ``agent`` package (its modules and
the bundled self-test models), so a device never receives torch, the controller or any other host
code. The wheel's metadata declares the agent's dependencies (numpy, psutil) and one extra per
optional piece: ``onnxruntime``, ``tflite`` (ai-edge-litert), ``tflite-legacy`` (tflite-runtime, for
32-bit ARM), ``i2c`` (smbus2), ``usb`` (pyserial).

The build is reproducible: files are sorted, timestamps fixed and permissions normalised, so the
same sources give the same bytes and the same sha256. The installer uses that hash to decide
whether a device is up to date.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from agent import __version__ as AGENT_VERSION

__all__ = ["AGENT_DIST", "AGENT_VERSION", "agent_source_dir", "build_agent_wheel", "wheel_name"]

AGENT_DIST = "nnflash_agent"
_PROJECT_NAME = "nnflash-agent"
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip timestamps (reproducible builds)
_SUFFIXES = (".py", ".onnx", ".tflite")

# Requirements the wheel declares. Kept in step with pyproject.toml's agent extras.
REQUIRES = ("numpy>=1.22", "psutil>=5.9")
EXTRAS = {
    "onnxruntime": ("onnxruntime>=1.17",),
    "tflite": ("ai-edge-litert>=1.2",),
    "tflite-legacy": ("tflite-runtime==2.14.0", "numpy<2"),
    "i2c": ("smbus2>=0.4",),
    "usb": ("pyserial>=3.5",),
}


def agent_source_dir() -> Path:
    """The ``agent`` package directory this controller runs with (the repository's, in a checkout)."""
    import agent

    return Path(agent.__file__).resolve().parent


def wheel_name(version: str = AGENT_VERSION) -> str:
    return f"{AGENT_DIST}-{version}-py3-none-any.whl"


def _package_files(src: Path) -> List[Tuple[str, Path]]:
    files = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix not in _SUFFIXES:
            continue
        files.append(("agent/" + rel.as_posix(), path))
    if not any(name == "agent/cli.py" for name, _ in files):
        raise FileNotFoundError(f"{src} does not look like the agent package (no cli.py)")
    return files


def _metadata(version: str) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {_PROJECT_NAME}",
        f"Version: {version}",
        "Summary: nnflash on-device agent: measures latency and energy of exported models",
        "License: Apache-2.0",
        "Requires-Python: >=3.9",
    ]
    lines += [f"Requires-Dist: {r}" for r in REQUIRES]
    for extra, reqs in EXTRAS.items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {r} ; extra == "{extra}"' for r in reqs]
    return "\n".join(lines) + "\n"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"{name},sha256={digest},{len(data)}"


def _write(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def build_agent_wheel(
    out_dir: Path, *, source: Optional[Path] = None, version: str = AGENT_VERSION
) -> Tuple[Path, str]:
    """Write the agent wheel into ``out_dir``; returns ``(path, sha256 hex)``.

    Overwrites a wheel of the same name only when its bytes differ."""
    src = source if source is not None else agent_source_dir()
    dist_info = f"{AGENT_DIST}-{version}.dist-info"
    entries: List[Tuple[str, bytes]] = [(name, path.read_bytes()) for name, path in _package_files(src)]
    entries.append((f"{dist_info}/METADATA", _metadata(version).encode()))
    entries.append(
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: nnflash\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
    )
    entries.append((f"{dist_info}/entry_points.txt", b"[console_scripts]\nnnflash-agent = agent.cli:main\n"))
    entries.append((f"{dist_info}/top_level.txt", b"agent\n"))
    record = "\n".join(_record_line(n, d) for n, d in entries) + f"\n{dist_info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in _iter_entries(entries, f"{dist_info}/RECORD", record.encode()):
            _write(zf, name, data)
    blob = buf.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / wheel_name(version)
    if not path.exists() or path.read_bytes() != blob:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
    return path, hashlib.sha256(blob).hexdigest()


def _iter_entries(entries: Iterable[Tuple[str, bytes]], record_name: str, record: bytes) -> Iterable[Tuple[str, bytes]]:
    yield from entries
    yield record_name, record
