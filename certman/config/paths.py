"""What the config reader refuses about files and paths: places certman must never write to,
directories and programs that do not exist, and files other users could change or read.

Each check raises ``ConfigError`` naming the file and key, like every other config error.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from certman.config.toml import Section
from certman.errors import ConfigError

# Pseudo filesystems: a write there is never a file (and /proc/self/... is a trap).
_PSEUDO = (Path("/proc"), Path("/sys"), Path("/dev"))
# System directories certman must never fill with its own files (or prune).
_SYSTEM = {
    Path(p)
    for p in ("/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/var", "/root")
} | {Path(p) for p in ("/home", "/tmp", "/var/lib", "/var/tmp", "/usr/local", "/etc/ssl")}

BOM = b"\xef\xbb\xbf"


def _under(path: Path, bases: tuple[Path, ...]) -> Path | None:
    for base in bases:
        if path == base or base in path.parents:
            return base
    return None


def writable_dir(s: Section, key: str, path: Path) -> None:
    """A directory certman creates and writes: not a system directory, not a pseudo filesystem,
    not a regular file, and not below one."""
    normal = Path(os.path.normpath(path))
    if normal in _SYSTEM:
        raise s.error(key, f"{normal} is a system directory; expected a directory of certman's own")
    base = _under(normal, _PSEUDO)
    if base is not None:
        raise s.error(key, f"{normal} is under {base}, which holds no real files")
    for candidate in (normal, *normal.parents):
        if candidate.exists() or candidate.is_symlink():
            if not candidate.is_dir():
                what = "is" if candidate == normal else f"is below {candidate}, which is"
                raise s.error(key, f"{normal} {what} not a directory")
            return


def existing_dir(s: Section, key: str, path: Path) -> None:
    if not path.is_dir():
        raise s.error(key, f"directory {path} does not exist")


def program(s: Section, key: str, name: str) -> None:
    """A program certman runs: found on PATH, or an executable file at an absolute path."""
    found = shutil.which(name) if os.path.isabs(name) or "/" not in name else None
    if found is None:
        raise s.error(key, f"program {name!r} not found (not an executable file or not on PATH)")


def read_config_file(path: Path) -> bytes:
    """The config file's bytes: a regular file (a FIFO would block the read forever) that no
    other user can write (it names commands certman runs, as root on most hosts)."""
    if "\0" in str(path):
        raise ConfigError(f"{str(path)!r}: cannot read config: a NUL byte in the path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: cannot read config: not a regular file")
        if info.st_mode & stat.S_IWOTH:
            raise ConfigError(
                f"{path}: writable by every user (mode {stat.S_IMODE(info.st_mode):04o}); it names "
                f"commands certman runs: chmod o-w {path}"
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    finally:
        os.close(fd)
    if raw.startswith(BOM):
        raise ConfigError(
            f"{path}: starts with a UTF-8 byte order mark (BOM); TOML is plain UTF-8: "
            "save the file without it"
        )
    return raw
