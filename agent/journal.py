"""The agent's local journal: every measure response, appended and fsynced before it is sent.

JSON lines ``{"id": request id, "time_unix": float, "response": {...}}``. A dropped connection loses
nothing: the controller asks ``results`` for the ids it did not get. The latest entry for an id
wins. A torn last line (power cut mid-write) is skipped when reading.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Iterable, Optional

__all__ = ["Journal"]


class Journal:
    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    @staticmethod
    def entry(rid: str, response: Dict[str, Any]) -> bytes:
        """The journal line for one response (ASCII JSON, newline-terminated)."""
        line = json.dumps(
            {"id": rid, "time_unix": time.time(), "response": response},
            separators=(",", ":"),
            allow_nan=False,
        )
        return (line + "\n").encode("utf-8")

    def append(self, rid: str, response: Dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        data = self.entry(rid, response)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # A previous torn write could leave a line without "\n": start on a fresh line.
            if os.fstat(fd).st_size > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def lookup(self, ids: Iterable[str]) -> Dict[str, Optional[Dict[str, Any]]]:
        ids = list(ids)
        wanted = set(ids)
        found: Dict[str, Optional[Dict[str, Any]]] = {i: None for i in ids}
        try:
            f = open(self.path, "rb")
        except OSError:
            return found
        with f:
            for raw in f:
                try:
                    entry = json.loads(raw)
                except (ValueError, RecursionError):  # a torn or damaged line: skipped
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"] in wanted:
                    found[entry["id"]] = entry.get("response")
        return found
