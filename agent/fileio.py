"""Two file primitives every part of nnflash uses, defined once: a file's sha256 and atomic writes.

They live in the agent because it is the lowest layer that needs them (its artifact store checks
hashes); the host packages depend on the agent's distribution and import them from here. Standard
library only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Iterator, Optional

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "sha256_file", "sha256_stream"]


def _sha256() -> Any:
    """A sha256 hasher. CPython's built-in one where present: hashlib's goes through OpenSSL,
    which maps libcrypto into the agent (3.3 MB resident on x86_64) for the one hash it needs;
    the built-in one hashes at ~250 MB/s here, plenty for model files."""
    for mod in ("_sha2", "_sha256"):  # Python >= 3.12, <= 3.11
        try:
            return __import__(mod).sha256()
        except (ImportError, AttributeError):
            continue
    import hashlib

    return hashlib.sha256()


def sha256_file(path: os.PathLike[str] | str, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return sha256_stream(f, chunk)


def sha256_stream(f: IO[bytes], chunk: int = 1 << 20) -> str:
    """The hex sha256 of what is left to read in an open binary file."""
    h = _sha256()
    while True:
        block = f.read(chunk)
        if not block:
            break
        h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: os.PathLike[str] | str, *, mode: Optional[int] = None, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block succeeds, the file written there is
    fsynced and renamed onto ``path`` (readers see the old file or the new one, never a part).

    On an exception the temporary file is removed and ``path`` is untouched. ``mode`` sets the new
    file's permissions (default: keep those of the file replaced, else 0o644). ``suffix`` ends the
    temporary name (for writers that choose a format by the file's extension)."""
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        yield tmp
        if mode is None:
            try:
                mode = os.stat(target).st_mode & 0o777
            except OSError:
                mode = 0o644
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: os.PathLike[str] | str, data: bytes, *, mode: Optional[int] = None) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path, mode=mode) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(
    path: os.PathLike[str] | str, text: str, *, encoding: str = "utf-8", mode: Optional[int] = None
) -> None:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename)."""
    atomic_write_bytes(path, text.encode(encoding), mode=mode)
