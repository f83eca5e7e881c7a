"""The per-certificate state: one JSON file saved atomically, one lock, and the keys beside it.

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
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from certman.config import KeyType
from certman.errors import CertmanError, LockedError
from certman.fsutil import atomic_write, private_dir

SCHEMA = 1


class Phase(StrEnum):
    NEW = "new"  # never run: adopt what Postfix serves, stage a next key
    PUBLISH = "publish"  # write the wanted TLSA records (compare-and-swap)
    CONFIRM = "confirm"  # wait until every authoritative nameserver serves them
    AGE = "age"  # wait out cached answers: not_before = confirmed + 2 x TTL + margin
    ISSUE = "issue"  # get a certificate for the key about to be served
    INSTALL = "install"  # write the files Postfix reads, switch, reload
    VERIFY = "verify"  # STARTTLS to every endpoint against the validated TLSA RRset
    ROLLBACK = "rollback"  # verification failed: restore the previous files, reload
    STEADY = "steady"  # nothing in progress


class Operation(StrEnum):
    BOOTSTRAP = "bootstrap"  # first run: publish current + next, install a certificate if none
    RENEW = "renew"  # new certificate, same key: DNS untouched
    ROLLOVER = "rollover"  # promote the published next key
    COMPROMISED = "compromised"  # roll to a fresh key at once, dropping the old next key too
    RETIRE = "retire"  # after a verified swap: drop the old key's record, publish a new next


@dataclass(frozen=True)
class KeyInfo:
    """A key certman knows, by the SHA-256 of its SubjectPublicKeyInfo (what 3 1 1 publishes)."""

    id: str
    key_type: KeyType
    spki_sha256: str
    created: float
    adopted_from: str | None = None  # the file it was found in, for keys certman did not make

    @staticmethod
    def make_id(key_type: KeyType, spki_sha256: str) -> str:
        return f"{key_type.value}-{spki_sha256[:16]}"


@dataclass(frozen=True)
class CertInfo:
    """The certificate served (or staged) for one key."""

    key_id: str
    serial: str
    not_before: float
    not_after: float
    ari_id: str | None
    path: str  # the full chain in certs/


@dataclass(frozen=True)
class TlsaProgress:
    """A TLSA change in flight: what we wrote and the timing facts of RFC 7671 §8.1."""

    written_at: float | None = None
    serial: int | None = None
    ttl_before: int | None = None  # largest TTL of the RRsets before the change (None if absent)
    ttl_after: int | None = None
    negative_ttl: int | None = None  # RFC 2308 §5; counts when a name had no TLSA RRset before
    name_was_empty: bool = False
    confirmed_at: float | None = None
    not_before: float | None = None

    def wait_seconds(self, margin: float) -> float:
        """2 x the largest TTL a resolver may still hold, plus the operator's margin."""
        ttls = [t for t in (self.ttl_before, self.ttl_after) if t is not None]
        if self.name_was_empty and self.negative_ttl is not None:
            ttls.append(self.negative_ttl)
        return 2 * max(ttls, default=0) + margin


@dataclass(frozen=True)
class State:
    name: str
    phase: Phase = Phase.NEW
    operation: Operation | None = None
    current: dict[str, KeyInfo] = field(default_factory=dict)  # key type -> key served
    next: dict[str, KeyInfo] = field(default_factory=dict)  # key type -> published next key
    previous: dict[str, KeyInfo] = field(default_factory=dict)  # served before the last swap
    retired: tuple[str, ...] = ()  # spki_sha256 of keys whose records we removed
    issuer_records: tuple[str, ...] = ()  # the 2 1 x rdatas we published last (opt-in)
    certs: dict[str, CertInfo] = field(default_factory=dict)  # key type -> served certificate
    staged: dict[str, CertInfo] = field(default_factory=dict)  # key type -> issued, not served
    tlsa: TlsaProgress = field(default_factory=TlsaProgress)
    next_ready_at: float | None = None  # when the next keys' records have aged everywhere
    install_record: str | None = None  # store.InstallRecord.to_json(), for rollback
    renew_after: float | None = None  # ARI / lifetime fraction: when renewal is due
    ari_checked_at: float | None = None
    ari_recheck_at: float | None = None  # next renewalInfo request (RFC 9773 §4.3.3)
    retry_after: float | None = None  # back-off after a failure (rate limit, verification)
    last_error: str | None = None
    last_success: float | None = None
    history: tuple[str, ...] = ()

    def evolve(self, **changes: Any) -> State:
        return replace(self, **changes)

    def note(self, now: float, message: str) -> State:
        """Append to the short history shown by ``certman status`` (last 20 entries)."""
        entry = f"{_iso(now)} {message}"
        return replace(self, history=(*self.history, entry)[-20:])


def _iso(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# -- serialization ------------------------------------------------------------------------------


def to_json(state: State) -> dict[str, Any]:
    data = asdict(state)
    data["schema"] = SCHEMA
    return data


def from_json(data: dict[str, Any], where: str) -> State:
    if data.get("schema") != SCHEMA:
        raise CertmanError(f"{where}: unsupported state schema {data.get('schema')!r}")
    try:

        def keys(raw: dict[str, Any]) -> dict[str, KeyInfo]:
            return {k: KeyInfo(**{**v, "key_type": KeyType(v["key_type"])}) for k, v in raw.items()}

        def certs(raw: dict[str, Any]) -> dict[str, CertInfo]:
            return {k: CertInfo(**v) for k, v in raw.items()}

        return State(
            name=data["name"],
            phase=Phase(data["phase"]),
            operation=Operation(data["operation"]) if data.get("operation") else None,
            current=keys(data["current"]),
            next=keys(data["next"]),
            previous=keys(data["previous"]),
            retired=tuple(data["retired"]),
            issuer_records=tuple(data.get("issuer_records", ())),
            certs=certs(data["certs"]),
            staged=certs(data["staged"]),
            tlsa=TlsaProgress(**data["tlsa"]),
            next_ready_at=data["next_ready_at"],
            install_record=data["install_record"],
            renew_after=data["renew_after"],
            ari_checked_at=data["ari_checked_at"],
            ari_recheck_at=data.get("ari_recheck_at"),
            retry_after=data["retry_after"],
            last_error=data["last_error"],
            last_success=data["last_success"],
            history=tuple(data["history"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CertmanError(f"{where}: corrupt state file ({exc!r})") from None


# -- the store on disk --------------------------------------------------------------------------


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
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CertmanError(f"{self.state_file}: corrupt state file ({exc})") from None
        return from_json(data, str(self.state_file))

    def save(self, state: State) -> None:
        private_dir(self.root)
        text = json.dumps(to_json(state), indent=2, sort_keys=True) + "\n"
        atomic_write(self.state_file, text.encode(), mode=0o600)

    @contextmanager
    def lock(self, *, wait: bool = False) -> Iterator[None]:
        """Hold this certificate's lock; another run gets ``LockedError`` (or waits, if asked).

        flock(2) is released by the kernel when the process dies, so a SIGKILLed run never
        leaves a stale lock behind.
        """
        private_dir(self.root)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
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


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
