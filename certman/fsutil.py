"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

A reader (Postfix starting an smtpd, another certman run) sees either the old file or the new one,
never a torn one, and after a power loss the rename is durable (rename(2) + fsync of the parent).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from certman.errors import CertmanError


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically; the file has ``mode`` from its first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        write_point(f"before rename {path}")
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # write/fsync errors (ENOSPC, EIO) name no file: name ours
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    write_point(f"after rename {path}")


def private_dir(path: Path) -> Path:
    """Create ``path`` (and the parents it lacks) with mode 0700, whatever the umask.

    A symbolic link is refused, never followed: chmod through it would change the mode of a
    directory certman does not own (another user may have planted the link).
    """
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        _make_private(directory)
    _make_private(path)
    return path


def _make_private(path: Path) -> None:
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise CertmanError(f"{path}: cannot create directory: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise CertmanError(f"{path}: is a symbolic link; refusing to use it as a private directory")
    if not stat.S_ISDIR(info.st_mode):
        raise CertmanError(f"{path}: not a directory")
    if stat.S_IMODE(info.st_mode) != 0o700:
        # fchmod on a descriptor opened without following links: no race with a swapped link.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


def open_lock(path: Path) -> int:
    """Open (create) a lock file, 0600, never through a symbolic link (O_NOFOLLOW)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise CertmanError(f"{path}: cannot open lock file: {exc.strerror}") from None


FAULT_LOG = "CERTMAN_FAULT_LOG"
FAULT_KILL_AT = "CERTMAN_FAULT_KILL_AT"


def write_point(label: str) -> None:
    """Mark a point where certman changes the world: a DNS change, a file rename, ``postconf
    -e``, a reload, a state save (each called before and after the change).

    For the crash tests (tests/integration/test_kill_points.py) only: with ``$CERTMAN_FAULT_LOG``
    set, every point is numbered in that file, across processes, and the process SIGKILLs itself
    at point number ``$CERTMAN_FAULT_KILL_AT`` (or, given as ``label:TEXT``, at the first point
    whose label starts with TEXT). Unset, as in production, it costs one lookup.
    """
    log = os.environ.get(FAULT_LOG)
    if log:
        _fault_point(Path(log), label, os.environ.get(FAULT_KILL_AT))


def _fault_point(log: Path, label: str, kill_at: str | None) -> None:
    import fcntl
    import signal

    with open(log, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.seek(0)
        number = sum(1 for _ in handle) + 1
        handle.write(f"{number} {os.getpid()} {label}\n")
        handle.flush()
        os.fsync(handle.fileno())
    if kill_at is None:
        return
    # A number kills at that point; "label:TEXT" at the first point whose label starts with TEXT.
    hit = label.startswith(kill_at[6:]) if kill_at.startswith("label:") else kill_at.strip()
    if hit is True or hit == str(number):
        os.kill(os.getpid(), signal.SIGKILL)
