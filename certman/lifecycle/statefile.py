"""One certificate's state on disk: paths, atomic save, and the lock.

Layout under ``<state_dir>/certs/<name>/``::

    state.json         the rollover state (schema-versioned; no secrets: keys are referenced by id)
    lock               flock(2)-held while a run works on this certificate
    keys/<id>.key      private keys, 0600, in a 0700 directory
    certs/<id>.pem     full chains issued for a key (leaf first), staged before install
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from certman.errors import CertmanError, LockedError
from certman.fsutil import atomic_write, open_lock, private_dir
from certman.lifecycle.state import State, from_json, to_json


@dataclass(frozen=True)
class CertDir:
    """Paths of one certificate's state."""

    root: Path

    @classmethod
    def of(cls, state_dir: Path, name: str) -> CertDir:
        return cls(state_dir / "certs" / name)

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def key_file(self, key_id: str) -> Path:
        return self.root / "keys" / f"{key_id}.key"

    def cert_file(self, key_id: str, serial: str) -> Path:
        return self.root / "certs" / f"{key_id}-{serial}.pem"

    def load(self, name: str) -> State:
        try:
            raw = self.state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return State(name=name)
        except OSError as exc:
            raise CertmanError(f"{self.state_file}: cannot read state: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CertmanError(f"{self.state_file}: corrupt state file (not UTF-8 text)") from None
        try:
            # NaN and Infinity are not JSON (RFC 8259 §6); a wait computed from one never ends
            # or never waits.
            data = json.loads(raw, parse_constant=_not_a_number)
        except (json.JSONDecodeError, ValueError) as exc:
            raise CertmanError(f"{self.state_file}: corrupt state file ({exc})") from None
        if not isinstance(data, dict):
            raise CertmanError(f"{self.state_file}: corrupt state file (not a JSON object)")
        return from_json(data, str(self.state_file))

    def save(self, state: State) -> None:
        """Atomically; on failure (a full disk) the previous state file stays as it was."""
        text = json.dumps(to_json(state), indent=2, sort_keys=True) + "\n"
        try:
            private_dir(self.root)
            atomic_write(self.state_file, text.encode(), mode=0o600)
        except OSError as exc:
            raise CertmanError(
                f"{self.state_file}: cannot save state: {exc.strerror or exc}"
            ) from None

    @contextmanager
    def lock(self, *, wait: bool = False) -> Iterator[None]:
        """Hold this certificate's lock; another run gets ``LockedError`` (or waits, if asked).

        flock(2) is released by the kernel when the process dies, so a SIGKILLed run never
        leaves a stale lock behind.
        """
        private_dir(self.root)
        fd = open_lock(self.root / "lock")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = _read_holder(fd)
                raise LockedError(
                    f"certificate {self.root.name!r} is locked by another certman run{holder} "
                    f"({self.root / 'lock'}); use --wait-lock to wait for it"
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            os.close(fd)


def _not_a_number(name: str) -> object:
    raise ValueError(f"{name} is not a number certman writes")


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
