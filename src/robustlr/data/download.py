"""Verified, atomic downloads and safe tar extraction (standard library ``urllib`` and ``tarfile``).

A download streams into a temporary file next to its destination while hashing it (MD5 and SHA-256
in one pass), checks the byte count against ``Content-Length``, compares every known checksum, and
only then renames the file into place with ``os.replace``.  On any failure, including Ctrl-C, the
temporary file is deleted, so the destination never holds a partial or unverified file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from .catalog import REMOTE_FILES, RemoteFile
from ..checks import check_choice, check_number

__all__ = ["DownloadError", "download_dataset", "download_file", "extract_tar", "file_matches"]

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed: network error, truncated body, or checksum mismatch."""


class _Hashes:
    """MD5 and SHA-256 of a byte stream, fed chunk by chunk."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha256.update(chunk)

    def mismatches(self, md5: str | None, sha256: str | None) -> list[str]:
        """Descriptions of the known checksums that differ from the computed ones."""
        expected = {"md5": (md5, self.md5), "sha256": (sha256, self.sha256)}
        return [
            f"{kind} is {digest.hexdigest()}, expected {want.lower()}"
            for kind, (want, digest) in expected.items()
            if want is not None and digest.hexdigest() != want.lower()
        ]


def _require_checksum(url: str, md5: str | None, sha256: str | None) -> None:
    if md5 is None and sha256 is None:
        raise ValueError(f"md5 and sha256 are both None for {url}: a file without a known checksum is refused")


def file_matches(path: Path, md5: str | None = None, sha256: str | None = None) -> bool:
    """Whether the existing file ``path`` matches every known checksum (at least one must be given)."""
    _require_checksum(str(path), md5, sha256)
    hashes = _Hashes()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            hashes.update(chunk)
    return not hashes.mismatches(md5, sha256)


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its size and every known checksum.

    Args:
        url: the address to fetch (any scheme ``urllib`` supports).
        dest: the final file path; its directory is created if needed.
        md5, sha256: expected hex digests; at least one must be given, and all given must match.
        timeout: seconds to wait for the connection and for each read.
        progress: show a tqdm progress bar on stderr.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        ValueError: if neither ``md5`` nor ``sha256`` is given, or ``timeout`` is not a positive number.
        DownloadError: on a network error, a body shorter than its ``Content-Length``, or a checksum
            mismatch; nothing is left at ``dest`` or beside it.
    """
    _require_checksum(url, md5, sha256)
    check_number("timeout", timeout, strict=True)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as sink:
            hashes, received, declared = _stream(url, sink, timeout, progress, dest.name)
        if declared is not None and received != declared:
            raise DownloadError(f"{url}: truncated download: received {received} of {declared} bytes")
        mismatches = hashes.mismatches(md5, sha256)
        if mismatches:
            raise DownloadError(f"{url}: checksum mismatch: {'; '.join(mismatches)}")
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return dest


def _stream(
    url: str, sink: BinaryIO, timeout: float, progress: bool, label: str
) -> tuple[_Hashes, int, int | None]:
    """Copy ``url`` into the open file ``sink``; return its hashes, bytes received and declared length."""
    hashes = _Hashes()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            declared = int(length) if length is not None and length.isdigit() else None
            with tqdm(total=declared, unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    sink.write(chunk)
                    hashes.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as error:
        raise DownloadError(f"{url}: download failed after {received} bytes: {error}") from error
    return hashes, received, declared


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse members that could land outside the extraction directory or are not plain files/dirs."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts:
        raise DownloadError(f"{archive}: unsafe member path {member.name!r} (absolute or containing '..')")
    if not (member.isfile() or member.isdir()):
        raise DownloadError(f"{archive}: member {member.name!r} is not a regular file or directory")


def extract_tar(archive: str | os.PathLike[str], dest_dir: str | os.PathLike[str]) -> list[Path]:
    """Extract ``archive`` into ``dest_dir`` safely and return the top-level paths created.

    Members with absolute paths, ``..`` components, links or device files are refused before
    anything is written.  Extraction goes to a staging directory inside ``dest_dir`` whose entries
    are then renamed into place, so a failed extraction leaves nothing behind.

    Raises:
        DownloadError: for an unreadable archive, an unsafe member, or a top-level entry that already exists
            in ``dest_dir``.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(archive, member)
                tar.extractall(staging, members=members, filter="data")
        except tarfile.TarError as error:
            raise DownloadError(f"{archive}: not a readable tar archive: {error}") from error
        created = []
        for entry in sorted(staging.iterdir()):
            target = dest_dir / entry.name
            if target.exists():
                raise DownloadError(f"{archive}: refusing to overwrite existing {target}; remove it and retry")
            os.replace(entry, target)
            created.append(target)
        return created
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_dataset(
    name: str,
    dest_dir: str | os.PathLike[str],
    *,
    registry: Mapping[str, tuple[RemoteFile, ...]] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download every file of dataset ``name`` into ``dest_dir``, unpacking archives; return ``dest_dir``.

    Files already present with matching checksums are kept; archives are deleted once extracted.

    Args:
        registry: the download table to use; defaults to :data:`robustlr.data.catalog.REMOTE_FILES`.

    Raises:
        ValueError: if ``name`` has no entry in the table.
        DownloadError: as :func:`download_file` and :func:`extract_tar`.
    """
    table = REMOTE_FILES if registry is None else registry
    check_choice("name", name, tuple(table))
    dest_dir = Path(dest_dir)
    for remote in table[name]:
        target = dest_dir / remote.filename
        if not remote.extract and target.is_file() and file_matches(target, remote.md5, remote.sha256):
            continue
        download_file(remote.url, target, md5=remote.md5, sha256=remote.sha256, timeout=timeout, progress=progress)
        if remote.extract:
            try:
                extract_tar(target, dest_dir)
            finally:
                target.unlink()
    return dest_dir
