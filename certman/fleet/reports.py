"""Per-host reports and the fleet-wide decisions drawn from them (pure).

Each host writes only its own ``hosts/<host>.json``: the key and certificate it serves (per key
type), when it last verified them live (STARTTLS against the validated TLSA RRset), its last
error, and when it last reported. The old key's record may be retired only when every live
host serves the new certificates, verified (RFC 7671 §8.1: never remove the record of a key that
is still being served). A host silent for longer than ``silent_after`` no longer blocks: it is
named, and the operator removes it for good with ``certman fleet forget HOST``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from certman.errors import CertmanError


@dataclass(frozen=True)
class Served:
    """What one host serves for one key type."""

    spki_sha256: str
    serial: str


@dataclass(frozen=True)
class HostReport:
    host: str
    reported_at: float
    served: dict[str, Served] = field(default_factory=dict)  # key type -> key and certificate
    verified_at: float | None = None  # last live verification of ``served``
    last_error: str | None = None
    error_at: float | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> HostReport:
        try:
            raw: dict[str, Any] = json.loads(data)
            served = {k: Served(**v) for k, v in raw.get("served", {}).items()}
            return cls(
                host=str(raw["host"]),
                reported_at=float(raw["reported_at"]),
                served=served,
                verified_at=raw.get("verified_at"),
                last_error=raw.get("last_error"),
                error_at=raw.get("error_at"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CertmanError(f"{where}: corrupt host report ({exc!r})") from None

    def same_facts(self, other: HostReport | None) -> bool:
        """Equal but for the report time: nothing new to tell the fleet."""
        return other is not None and (self.served, self.verified_at, self.last_error) == (
            other.served,
            other.verified_at,
            other.last_error,
        )


@dataclass(frozen=True)
class Readiness:
    """Whether the fleet serves ``target``; which live hosts lag; which hosts went silent."""

    ready: bool
    lagging: tuple[str, ...]
    silent: tuple[str, ...]


def serves(report: HostReport, target: Mapping[str, Served]) -> bool:
    """The host serves exactly the target key and certificate for every key type, verified."""
    return (
        report.verified_at is not None
        and report.last_error is None
        and all(report.served.get(slot) == want for slot, want in target.items())
    )


def readiness(
    reports: Sequence[HostReport], target: Mapping[str, Served], now: float, silent_after: float
) -> Readiness:
    """Ready when at least one host and every live host serve ``target``, verified."""
    silent = tuple(sorted(r.host for r in reports if now - r.reported_at > silent_after))
    live = [r for r in reports if r.host not in silent]
    lagging = tuple(sorted(r.host for r in live if not serves(r, target)))
    return Readiness(bool(live) and not lagging, lagging, silent)


def heartbeat_due(previous: HostReport | None, now: float, silent_after: float) -> bool:
    """Report again before the fleet could take this host for silent (at a third of the time)."""
    return previous is None or now - previous.reported_at >= silent_after / 3
