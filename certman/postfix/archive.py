"""The archive of an install: staged copies of the new files, the files they replace, pruning.

Every install gets ``<state_dir>/archive/<cert>/<time>-<n>/``; ``rollback`` puts the archived
files back. Private key copies are 0600 in 0700 directories.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from certman.config.schema import CertificateConfig, Layout
from certman.errors import CertmanError
from certman.fsutil import atomic_write, private_dir
from certman.model import KeyType


@dataclass(frozen=True)
class NewFile:
    """A file install writes: ``path`` gets the bytes of ``staged`` (a copy in the archive)."""

    path: str
    staged: str
    mode: int


@dataclass(frozen=True)
class OldFile:
    """A file as it was before install: ``archived`` is its copy (None: it did not exist).

    ``overwritten``: install writes this path, so rollback always puts the copy back; other
    (served, untouched) files are restored only if they have gone missing.
    """

    path: str
    archived: str | None
    mode: int
    overwritten: bool


def new_archive(base: Path, now: float) -> Path:
    private_dir(base)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    for attempt in range(1000):
        candidate = base / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return candidate
    raise CertmanError(f"{base}: cannot create a new archive directory for {stamp}")


def stage(archive: Path, path: Path, data: bytes, mode: int) -> NewFile:
    staged = private_dir(archive / "new") / path.name
    atomic_write(staged, data, mode=0o600)
    return NewFile(str(path), str(staged), mode)


def archive_old(archive: Path, written: list[str], served: list[str]) -> tuple[OldFile, ...]:
    old: list[OldFile] = []
    for index, name in enumerate(dict.fromkeys([*written, *served])):
        path = Path(name)
        overwritten = name in written
        if not path.exists():
            if overwritten:
                old.append(OldFile(name, None, 0, True))
            continue
        copy = private_dir(archive / "old") / f"{index}-{path.name}"
        data = read(path, "served file")
        atomic_write(copy, data, mode=0o600)
        old.append(OldFile(name, str(copy), path.stat().st_mode & 0o7777, overwritten))
    return tuple(old)


def version_pattern(cert: CertificateConfig) -> re.Pattern[str]:
    kinds = "|".join(re.escape(k.value) for k in KeyType)
    return re.compile(
        rf"^{re.escape(cert.name)}-(?:{kinds})-\d{{8}}T\d{{6}}Z(?:-\d+)?\.(?:key|crt)$"
    )


def prunable(cert: CertificateConfig, keep: set[str]) -> tuple[str, ...]:
    """key-cert versions that are neither the new one nor the one served before it."""
    directory = cert.install.directory
    if cert.install.layout is not Layout.KEY_CERT or not directory.is_dir():
        return ()
    pattern = version_pattern(cert)
    return tuple(
        str(p) for p in sorted(directory.iterdir()) if pattern.match(p.name) and str(p) not in keep
    )


def archive_order(path: Path) -> tuple[str, int]:
    """``20260101T000000Z-10`` after ``...-2``: the stamp, then the counter as a number."""
    stamp, _, counter = path.name.partition("-")
    return stamp, int(counter) if counter.isdigit() else 0


def prune_archives(base: Path, keep: int) -> None:
    dirs = sorted((p for p in base.iterdir() if p.is_dir()), key=archive_order)
    for old in dirs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def mkdir(directory: Path) -> None:
    # 0755: the key files themselves are 0600; smtpd reads them as root before dropping
    # privileges (TLS_README), other readers of the .crt files may not be root.
    if not directory.is_dir():
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)


def read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertmanError(f"{path}: cannot read {what}: {exc.strerror}") from None
