"""Addresses, options, and the context every server's start step receives."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .proc import Deadline, PidFile, Started, spawn

PRIMARY = "127.0.0.11"
SECONDARY = "127.0.0.12"
PDNS = "127.0.0.13"
PEBBLE = "127.0.0.14"
MOTO = "127.0.0.15"
MX = {"mx1": "127.0.0.25", "mx2": "127.0.0.26"}
RESOLVER = "127.0.0.53"
CA_RESOLVER = "127.0.0.54"
# Put on `lo`: BIND listens only on configured addresses, `postfix check` wants its
# inet_interfaces there; the rest are added so every testbed address answers ping.
ADDRESSES = (PRIMARY, SECONDARY, PDNS, PEBBLE, MOTO, *MX.values(), RESOLVER, CA_RESOLVER)

START_SECONDS = 20.0


@dataclass(frozen=True)
class Options:
    dir: Path
    netns: str
    nonce_reject: int = 0
    va_sleep: bool = False
    cert_validity: int | None = None
    moto_python: str = ""
    pdns: bool = True
    moto: bool = True
    eab: bool = False


@dataclass(frozen=True)
class Context:
    """What a start step needs: where to write, how to start a server, when to give up."""

    opts: Options
    pids: PidFile
    abort: threading.Event

    def path(self, *parts: str) -> Path:
        """A path under the testbed directory; its parent directory exists."""
        path = self.opts.dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, name: str) -> Path:
        return self.path("logs", f"{name}.log")

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Started:
        return spawn(self.opts.netns, self.pids, name, argv, self.log(name), env=env)

    def deadline(self) -> Deadline:
        return Deadline.after(START_SECONDS, self.abort)
