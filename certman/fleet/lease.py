"""The leader lease: who may issue and publish for the fleet, until when, under which term.

The lease is one object (``lease.json``) changed only by conditional writes, so two hosts racing
for it cannot both win: the first write with ``If-None-Match: *`` (no lease yet) or with
``If-Match`` on the expired lease's ETag succeeds, the other gets 412. The ``term`` grows by one
each time the lease changes hands; the leader writes it into the lineage state on its first
write, which then fences off a previous leader that lost the lease without noticing (its next
``If-Match`` on the state fails). Decisions are pure (``may_take``, ``claimed``); the I/O is in
``acquire`` and ``renew``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass

from certman.errors import CertmanError
from certman.fleet.store import LostRace, Store

LEASE = "lease.json"


@dataclass(frozen=True)
class Lease:
    holder: str
    term: int
    expires_at: float

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Lease:
        try:
            raw = json.loads(data)
            return cls(str(raw["holder"]), int(raw["term"]), float(raw["expires_at"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CertmanError(f"{where}: corrupt lease ({exc!r})") from None


@dataclass(frozen=True)
class Held:
    """A lease we hold, with the ETag our next conditional write must match."""

    lease: Lease
    etag: str


def may_take(lease: Lease | None, me: str, now: float) -> bool:
    """Nobody holds it, we hold it, or its holder let it expire."""
    return lease is None or lease.holder == me or now >= lease.expires_at


def claimed(lease: Lease | None, me: str, now: float, seconds: float) -> Lease:
    """The lease we write to take or extend it: a new term whenever it changes hands."""
    if lease is not None and lease.holder == me:
        return Lease(me, lease.term, now + seconds)
    return Lease(me, (lease.term if lease else 0) + 1, now + seconds)


def read(store: Store) -> tuple[Lease | None, str | None]:
    blob = store.get(LEASE)
    if blob is None:
        return None, None
    return Lease.from_bytes(blob.body, store.where(LEASE)), blob.etag


def acquire(store: Store, me: str, now: float, seconds: float) -> Held | Lease:
    """Take or extend the lease; on failure the lease that stands in our way."""
    current, etag = read(store)
    if not may_take(current, me, now):
        assert current is not None
        return current
    wanted = claimed(current, me, now, seconds)
    try:
        if etag is None:
            new_etag = store.create(LEASE, wanted.to_bytes())
        else:
            new_etag = store.replace(LEASE, wanted.to_bytes(), etag)
    except LostRace:
        winner, _ = read(store)
        if winner is None:
            raise
        return winner
    return Held(wanted, new_etag)


def renew(store: Store, held: Held, now: float, seconds: float) -> Held:
    """Extend a lease we hold; LostRace if another host took it meanwhile (we must stop)."""
    if now >= held.lease.expires_at:
        raise LostRace(f"{store.where(LEASE)}: our lease expired; another host may lead now")
    wanted = Lease(held.lease.holder, held.lease.term, now + seconds)
    return Held(wanted, store.replace(LEASE, wanted.to_bytes(), held.etag))


def release(store: Store, held: Held, now: float) -> None:
    """Let the lease expire now, so another host need not wait (only if still ours)."""
    ended = Lease(held.lease.holder, held.lease.term, now)
    with contextlib.suppress(LostRace):
        store.replace(LEASE, ended.to_bytes(), held.etag)
