"""Atomic file writes: a hidden temporary file next to the target, then ``os.replace``.

A crash leaves either the old file or the complete new one, never a half-written file, and no temporary
file behind (it is removed when the write fails).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "file_stem"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent directories; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # permissions follow the umask
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating parent directories; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_stem(label: str) -> str:
    """A label such as ``"lora-pgd r=3"`` as a file-name stem: ``"lora-pgd_r3"``."""
    return label.replace(" ", "_").replace("=", "")
