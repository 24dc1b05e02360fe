"""Files on disk: where the data lives, md5 checks, downloads that never leave a half-written
file under the real name, and tar extraction that refuses paths escaping the target folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not in the data folder (and download=False)."""


class DataFileError(ValueError):
    """A data file is there but is not what it should be (bad header, size, archive member)."""


class ChecksumError(DataFileError):
    """A file's md5 is not the published one."""


class DownloadError(OSError):
    """Every mirror failed (network error or wrong md5); the message lists each failure."""


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """data_dir, else $FASTADV_DATA, else ~/.cache/fastadv/data."""
    if data_dir is None:
        data_dir = os.environ.get("FASTADV_DATA") or "~/.cache/fastadv/data"
    return Path(data_dir).expanduser()


def md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def expected_md5(checksums: dict[str, str], name: str) -> str:
    try:
        return checksums[name]
    except KeyError:
        raise KeyError(f"checksums has no md5 for {name!r} (it has {sorted(checksums)})") from None


def verify(path: Path, expected: str, advice: str | None = None) -> None:
    """Raise ChecksumError naming the file unless md5(path) == expected; ``advice`` (what to
    do about it) replaces the default "corrupt or incomplete: fetch it again"."""
    actual = md5(path)
    if actual != expected.lower():
        advice = advice or ("The file is corrupt or incomplete; delete it and fetch it again "
                            "(--download).")
        raise ChecksumError(f"{path}: md5 {actual}, expected {expected}. {advice}")


def download(urls: Sequence[str], dest: Path, expected: str) -> None:
    """Fetch dest from the first of urls that serves bytes with md5 `expected`.

    Streams into a temporary file in dest's folder and os.replace()s it onto dest only once
    the md5 matches, so an interrupted or corrupt download never sits under the real name
    (and the rename is atomic because it stays on one file system)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        print(f"downloading {url} -> {dest}", file=sys.stderr)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected.lower():
                failures.append(f"{url}: md5 {digest.hexdigest()}, expected {expected}")
                continue
            os.replace(tmp, dest)
            return
        except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
            failures.append(f"{url}: {error}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DownloadError(f"could not download {dest.name}:\n  " + "\n  ".join(failures))


def _checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        path = PurePosixPath(m.name)
        if path.is_absolute() or ".." in path.parts or m.name.startswith(("/", "\\")) or (
                len(m.name) > 1 and m.name[1] == ":"):
            raise DataFileError(f"{archive}: refusing member {m.name!r} (absolute path or '..')")
        # Links and device files are never in the datasets' archives; a link could point
        # a later member outside the target folder.
        if not (m.isfile() or m.isdir()):
            raise DataFileError(f"{archive}: refusing member {m.name!r} (not a file or folder)")
    return members


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz into dest, refusing absolute paths, '..' and links.

    Members go to a temporary folder beside dest first and are then os.replace()d into
    place one by one, so no file under its real name is ever half-written."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _checked_members(tar, archive)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **extra)
        for root, _, files in os.walk(tmp):
            for name in files:
                source = Path(root) / name
                target = dest / source.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
    except (tarfile.TarError, EOFError) as error:
        raise DataFileError(f"{archive}: not a readable .tar.gz ({error})") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
