"""The agent's content-addressed artifact store: ``<store_dir>/<sha256>.<format>``.

The controller puts files there (SFTP, or a copy for the local device); the agent only reads, lists
and removes them, and checks before every measurement that the file's sha256 matches its name.

No path leaves the store: a file is named by a reference that must be 64 lowercase hex digits and a
known format (so ``..``, ``/``, absolute paths and NUL bytes never reach the file system), and only
regular files directly in the store count as artifacts: a symbolic link (or a FIFO, a device node,
a directory) placed under an artifact's name is refused, never followed.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any, Dict, List, Optional

from nnflash_agent.fileio import sha256_stream
from nnflash_agent.protocol import BAD_REQUEST, CORRUPT_ARTIFACT, MISSING_ARTIFACT, ProtocolError

__all__ = ["FORMATS", "ArtifactStore", "default_store_dir", "default_journal_path"]

FORMATS = ("onnx", "tflite")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _cache_root() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nnflash-agent")


def default_store_dir() -> str:
    """``$XDG_CACHE_HOME/nnflash-agent/store`` (``~/.cache/...`` when unset)."""
    return os.path.join(_cache_root(), "store")


def default_journal_path() -> str:
    return os.path.join(_cache_root(), "journal.jsonl")


def check_artifact_ref(ref: Any) -> Dict[str, str]:
    """Check the ``artifact`` argument: ``{"sha256": 64 lowercase hex, "format": onnx|tflite}``."""
    if not isinstance(ref, dict):
        raise ProtocolError(BAD_REQUEST, "'artifact' must be an object {sha256, format}")
    sha, fmt = ref.get("sha256"), ref.get("format")
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise ProtocolError(BAD_REQUEST, "'artifact.sha256' must be 64 lowercase hex digits")
    if fmt not in FORMATS:
        raise ProtocolError(BAD_REQUEST, f"'artifact.format' must be one of {', '.join(FORMATS)}")
    extra = sorted(set(ref) - {"sha256", "format"})
    if extra:
        raise ProtocolError(BAD_REQUEST, f"unknown artifact field(s): {', '.join(extra)}")
    return {"sha256": sha, "format": fmt}


def _sha256_regular_file(path: str) -> str:
    """The sha256 of ``path``, opened without following a symbolic link (swapped in after the
    check above) and without blocking on a FIFO; anything but a regular file raises OSError."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    with os.fdopen(os.open(path, flags), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{os.path.basename(path)} is not a regular file")
        return sha256_stream(f)


class ArtifactStore:
    """The content-addressed directory of model files the controller uploaded (``<sha256>.<format>``)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def ensure(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def path(self, sha256: str, fmt: str) -> str:
        """``<root>/<sha256>.<fmt>``; refuses anything but a well-formed reference (no path can be
        built from a name with ``..``, a separator or a NUL byte)."""
        check_artifact_ref({"sha256": sha256, "format": fmt})
        return os.path.join(self.root, f"{sha256}.{fmt}")

    def verified_path(self, sha256: str, fmt: str) -> str:
        """The artifact's path after checking it is a regular file of the store (not a symbolic
        link, whose target could be anywhere) and hashes to its name."""
        path = self.path(sha256, fmt)
        try:
            st = os.lstat(path)
        except OSError:
            raise ProtocolError(MISSING_ARTIFACT, f"artifact {sha256[:12]}.{fmt} not in store") from None
        if stat.S_ISLNK(st.st_mode):
            raise ProtocolError(CORRUPT_ARTIFACT, f"artifact {sha256[:12]}.{fmt} is a symbolic link; refused")
        if not stat.S_ISREG(st.st_mode):
            raise ProtocolError(CORRUPT_ARTIFACT, f"artifact {sha256[:12]}.{fmt} is not a regular file; refused")
        try:
            actual = _sha256_regular_file(path)
        except OSError as exc:
            raise ProtocolError(MISSING_ARTIFACT, f"cannot read artifact: {exc}") from None
        if actual != sha256:
            raise ProtocolError(
                CORRUPT_ARTIFACT,
                f"artifact {sha256[:12]}.{fmt} is corrupt: its sha256 is {actual[:12]}...",
            )
        return path

    def list(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        try:
            names = sorted(os.listdir(self.root))
        except OSError:
            return out
        for name in names:
            stem, _, ext = name.partition(".")
            if ext in FORMATS and _SHA_RE.match(stem):
                try:
                    st = os.lstat(os.path.join(self.root, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):  # a symbolic link or anything else is not an artifact
                    out.append({"sha256": stem, "format": ext, "size": st.st_size})
        return out

    def remove(self, shas: Optional[List[str]] = None) -> int:
        removed = 0
        for item in self.list():
            if shas is None or item["sha256"] in shas:
                try:
                    os.remove(self.path(item["sha256"], item["format"]))
                    removed += 1
                except OSError:
                    pass
        return removed
