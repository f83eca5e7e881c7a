"""The cron fast path: an idle ``certman run --quiet`` answered from a record, before argparse.

A quiet run that changed nothing, printed nothing and exited 0 writes ``<state_dir>/run-fastpath``:
the identity (device, inode, size, mtime, ctime) of the config file and of every certificate's
state file, and the earliest instant at which any certificate's next step may change
(``rollover.next_change``). The next quiet run exits 0 at once, printing nothing as the full run
would, only if every identity still matches and that instant is more than ``--max-wait`` away;
anything else (a record missing, corrupt, stale or from another config, an edited config, a saved
state, a new certificate, the clock reaching the due time, ``CERTMAN_NO_FASTPATH`` set, other
options) takes the full path. Runs without ``--quiet`` print every certificate's status, through
the log's formats: they always take the full path.

This module imports only the standard library's ``os`` and ``sys`` at the top: it runs before the
rest of certman is imported, and that is the whole point.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not `from typing import`: typing alone costs ~2 ms at start-up

if TYPE_CHECKING:  # pathlib and collections cost milliseconds this path does not have
    from collections.abc import Sequence
    from pathlib import Path

RECORD = "run-fastpath"
MAGIC = "certman-fastpath 1"
DEFAULT_CONFIG = "/etc/certman/certman.toml"  # == config.schema.DEFAULT_CONFIG (a test checks)
DEFAULT_STATE_DIR = "/var/lib/certman"  # == config.schema.DEFAULT_STATE_DIR
DEFAULT_MAX_WAIT = 30.0  # == `certman run --max-wait` default


def identity(path: str | os.PathLike[str]) -> str:
    """What changes whenever ``path`` is written, renamed over, or removed ("-" if absent)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "-"
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def parse_run_args(argv: Sequence[str]) -> tuple[str, float] | None:
    """``[--config X] [-q] run [-q] [--max-wait S]`` with ``-q`` somewhere: (config, max_wait)."""
    config: str | None = None
    quiet = False
    args = list(argv)
    while args and args[0] != "run":
        if args[0] in ("--config", "-c") and len(args) >= 2:
            config, args = args[1], args[2:]
        elif args[0] in ("--quiet", "-q"):
            quiet, args = True, args[1:]
        else:
            return None  # -v, --log-format, --version, another command: the full path
    if not args:
        return None
    max_wait, rest = DEFAULT_MAX_WAIT, args[1:]
    while rest:
        if rest[0] in ("--quiet", "-q"):
            quiet, rest = True, rest[1:]
        elif rest[0] == "--max-wait" and len(rest) >= 2:
            try:
                max_wait = float(rest[1])
            except ValueError:
                return None
            rest = rest[2:]
        else:
            return None  # certificate names, other options: the full path handles them
    if not quiet or not 0 <= max_wait < float("inf"):
        return None
    return config or os.environ.get("CERTMAN_CONFIG") or DEFAULT_CONFIG, max_wait


def state_dir_of(config_text: str) -> str | None:
    """``[certman] state_dir`` when written plainly (``state_dir = "..."``), else the default.

    A guess that cannot go wrong unsafely: the record found there must name this very config
    file's identity, which only a full run that parsed this file writes.
    """
    table = ""
    for raw in config_text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            if table == "certman":
                break
            table = line.split("#", 1)[0].strip().strip("[]").strip()
            continue
        if table != "certman" or not line.startswith("state_dir"):
            continue
        key, sep, value = line.partition("=")
        value = value.strip()
        if key.strip() != "state_dir" or not sep or len(value) < 2:
            return None
        quote = value[0]
        end = value.find(quote, 1)
        if quote not in "\"'" or end < 0 or "\\" in value[1:end]:
            return None
        return value[1:end]
    return DEFAULT_STATE_DIR


def read_record(text: str, config: str, now: float, max_wait: float) -> bool:
    """True if ``text`` is a valid record for ``config`` that still holds at ``now`` for a run
    allowed to wait ``max_wait`` seconds inline."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[0] != MAGIC or lines[-2:] != ["end", ""]:
        return False
    if lines[1] != f"config\t{identity(config)}" or lines[1] == "config\t-":
        return False
    kind, _, due = lines[2].partition("\t")
    if kind != "due" or not now + max_wait < float(due):  # NaN compares False: full path
        return False
    for line in lines[3:-2]:
        kind, _, rest = line.partition("\t")
        ident, _, path = rest.partition("\t")
        if kind != "file" or not path or identity(path) != ident:
            return False
    return True


def try_run(argv: Sequence[str] | None = None) -> int | None:
    """Answer an idle ``certman run --quiet`` from the record: 0, or None for the full path."""
    if os.environ.get("CERTMAN_NO_FASTPATH"):
        return None
    parsed = parse_run_args(sys.argv[1:] if argv is None else argv)
    if parsed is None:
        return None
    config, max_wait = parsed
    import time

    try:
        with open(config, encoding="utf-8") as handle:
            state_dir = state_dir_of(handle.read())
        if state_dir is None or not os.path.isabs(state_dir):
            return None
        with open(os.path.join(state_dir, RECORD), encoding="utf-8") as handle:
            valid = read_record(handle.read(), config, time.time(), max_wait)
    except (OSError, ValueError):
        return None
    return 0 if valid else None


def render_record(config_identity: str, files: Sequence[tuple[str, str]], due: float) -> str | None:
    """The record text: the config's identity, the due instant, the state ``files`` as (path,
    identity) pairs; None when a path cannot be written unambiguously (a newline or tab)."""
    if any("\n" in p or "\t" in p or "\r" in p for p, _ in files):
        return None
    body = [MAGIC, f"config\t{config_identity}", f"due\t{due!r}"]
    body += [f"file\t{ident}\t{path}" for path, ident in files]
    return "\n".join([*body, "end", ""])


def write_record(state_dir: Path, text: str) -> None:
    """Replace the record atomically (fsync'd), unless it already says the same."""
    from certman.fsutil import atomic_write

    target = state_dir / RECORD
    try:
        if target.read_text(encoding="utf-8") == text:
            return
    except (OSError, ValueError):
        pass
    atomic_write(target, text.encode(), mode=0o600)
