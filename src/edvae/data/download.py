"""Download a file atomically with an md5 check, and extract tar archives safely."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from edvae.errors import EdvaeError


class DownloadError(EdvaeError):
    """The file could not be fetched (no network, server unreachable, HTTP error)."""


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file read in 1 MiB blocks (algorithm: a hashlib name, e.g. md5, sha256)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5sum(path: str | Path) -> str:
    return file_digest(path, "md5")


def sha256sum(path: str | Path) -> str:
    return file_digest(path, "sha256")


def download(url: str, dest_path: str | Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest_path` via a temporary file and an atomic rename.

    An existing file with the right md5 is kept. On an md5 mismatch nothing is left behind.
    """
    dest = Path(dest_path)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    shutil.copyfileobj(response, f, 1 << 20)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                raise DownloadError(f"cannot download {url} (no network?): {e}") from e
        if md5 is not None:
            got = md5sum(tmp)
            if got != md5:
                raise EdvaeError(f"md5 mismatch for {url}: expected {md5}, got {got}")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def extract_tar(archive: str | Path, dest: str | Path) -> None:
    """Extract a tar archive, refusing absolute paths, '..' and anything but files and folders."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                    raise EdvaeError(f"unsafe entry {m.name!r} in archive {archive}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise EdvaeError(f"cannot extract archive {archive}: {e}") from e
