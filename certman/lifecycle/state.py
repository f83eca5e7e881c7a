"""The per-certificate rollover state and its JSON form (schema-versioned; no secrets)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from certman.errors import CertmanError
from certman.model import CertInfo, KeyInfo, KeyType

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
    confirm_since: float | None = None  # the propagation clock restarts here after a timeout

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
    # Write-ahead facts of the PUBLISH in flight (TTLs, emptiness, negative TTLs of the RRsets
    # as they were), saved before the first DNS write and never recomputed from what certman
    # itself wrote: a crash or a failure between two writes repeats the PUBLISH with these.
    publish_facts: TlsaProgress | None = None
    failures: int = 0  # consecutive failed attempts: the back-off grows with them
    ca_retry_after: float | None = None  # the CA's Retry-After, honoured by `issue`/`rollover`
    # Files switched, Postfix not yet reloaded: VERIFY reloads first (or `certman run`'s one
    # reload per instance covers it). A crash in between only repeats the reload.
    reload_pending: bool = False
    # Adopted a key another certificate owns (a service inheriting main.cf's files): roll to
    # this certificate's own next key as soon as the bootstrap is done (issue 12).
    own_key_due: bool = False

    def evolve(self, **changes: Any) -> State:
        return replace(self, **changes)

    def note(self, now: float, message: str) -> State:
        """Append to the short history shown by ``certman status`` (last 20 entries)."""
        entry = f"{_iso(now)} {message}"
        return replace(self, history=(*self.history, entry)[-20:])


def _iso(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _facts(raw: dict[str, Any] | None) -> TlsaProgress | None:
    return None if raw is None else TlsaProgress(**raw)


def to_json(state: State) -> dict[str, Any]:
    data = asdict(state)
    data["schema"] = SCHEMA
    return data


_TIMES = (
    "next_ready_at",
    "renew_after",
    "ari_checked_at",
    "ari_recheck_at",
    "retry_after",
    "last_success",
    "ca_retry_after",
)


def _check_numbers(data: dict[str, Any], where: str) -> None:
    """A hand-edited time or TTL that is not a number would break every later decision."""
    raw_tlsa = data.get("tlsa")
    tlsa: dict[str, Any] = raw_tlsa if isinstance(raw_tlsa, dict) else {}
    fields = [(k, data.get(k)) for k in _TIMES] + [(f"tlsa.{k}", v) for k, v in tlsa.items()]
    for key, value in fields:
        if key == "tlsa.name_was_empty":
            ok = isinstance(value, bool)
        else:
            ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
        if not ok:
            raise CertmanError(
                f"{where}: corrupt state file ({key}: expected a number, got {value!r})"
            )


def from_json(data: dict[str, Any], where: str) -> State:
    if data.get("schema") != SCHEMA:
        raise CertmanError(f"{where}: unsupported state schema {data.get('schema')!r}")
    _check_numbers(data, where)
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
            publish_facts=_facts(data.get("publish_facts")),
            failures=int(data.get("failures", 0)),
            ca_retry_after=data.get("ca_retry_after"),
            reload_pending=data.get("reload_pending", False) is True,
            own_key_due=data.get("own_key_due", False) is True,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CertmanError(f"{where}: corrupt state file ({exc!r})") from None
