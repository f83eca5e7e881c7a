"""certman's log lines: levels, syslog priorities for the journal, timestamps, JSON.

Levels are syslog's (RFC 5424 §6.2.1): 3 err, 4 warning, 5 notice (one line per change: record
written, files switched, reload, rollback), 6 info (progress), 7 debug. Under systemd (stdout or
stderr is the stream named by ``JOURNAL_STREAM``, systemd.exec(5)) each line starts with
``<N>``, which journald reads as its priority (sd-daemon(3)) and the journal adds the time; on a
terminal lines are bare; anywhere else (a file, a pipe, cron's mail) they carry a UTC timestamp.
``--log-format json`` writes one JSON object per line instead. Errors and warnings go to stderr,
the rest to stdout. Command output (``status``, ``tlsa`` ...) is not log and is never decorated.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TextIO


class Level(IntEnum):
    ERR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7


def on_journal(env: Mapping[str, str], *streams: TextIO) -> bool:
    """True when one of ``streams`` is the journal stream systemd set up (dev:inode match)."""
    value = env.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    for stream in streams:
        try:
            st = os.fstat(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
        if (st.st_dev, st.st_ino) == (int(dev), int(ino)):
            return True
    return False


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


@dataclass
class Log:
    threshold: Level = Level.INFO
    json: bool = False
    journal: bool = False
    stamps: bool = False
    clock: Callable[[], float] = time.time
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err_out: TextIO = field(default_factory=lambda: sys.stderr)
    # `certman run` with [acme] concurrency logs from several threads: one line, one write.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def enabled(self, level: Level) -> bool:
        return level <= self.threshold

    def __call__(self, level: Level, message: str) -> None:
        if not self.enabled(level):
            return
        stream = self.err_out if level <= Level.WARNING else self.out
        line = self.format(level, message) + "\n"
        with self._lock:  # print() writes the text and the newline apart: lines interleaved
            stream.write(line)
            stream.flush()

    def format(self, level: Level, message: str) -> str:
        if self.json:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
            record = {
                "time": stamp,
                "level": level.name.lower(),
                "priority": int(level),
                "message": message,
            }
            return json.dumps(record)
        if self.journal:
            return f"<{int(level)}>{message}"
        if self.stamps:
            return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.clock()))} {message}"
        return message

    def err(self, message: str) -> None:
        self(Level.ERR, message)

    def warning(self, message: str) -> None:
        self(Level.WARNING, message)

    def notice(self, message: str) -> None:
        self(Level.NOTICE, message)

    def info(self, message: str) -> None:
        self(Level.INFO, message)

    def debug(self, message: str) -> None:
        self(Level.DEBUG, message)

    @property
    def terminal(self) -> bool:
        return _is_tty(self.out) and not self.json


def configure(
    *,
    verbose: int = 0,
    quiet: bool = False,
    fmt: str = "text",
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> Log:
    """The log for one command: ``-q`` shows warnings and errors only, ``-v`` adds debug."""
    out = out or sys.stdout
    err = err or sys.stderr
    journal = on_journal(os.environ if env is None else env, out, err)
    threshold = Level.WARNING if quiet else Level.DEBUG if verbose else Level.INFO
    stamps = not journal and not _is_tty(out)
    return Log(threshold, fmt == "json", journal, stamps, out=out, err_out=err)
