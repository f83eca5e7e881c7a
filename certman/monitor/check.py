"""``certman check``: every check at once, concurrently, within one overall time limit.

Each piece of I/O (a TLSA lookup, a STARTTLS probe, reading certman's state and Postfix's files,
the Postfix audit) runs in its own daemon thread; the check waits for all of them until the
deadline, and whatever has not finished by then is UNKNOWN and makes the whole check UNKNOWN
(exit 3). Daemon threads do not keep the process alive, so a hung resolver costs at most the
``--timeout``. An unreachable resolver is UNKNOWN for the names it was asked about; a resolver
that answers without validating is CRITICAL, since senders cannot use the records either.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certman.config.schema import CertificateConfig, Config, DhMode
from certman.errors import CertmanError, DnsError, ResolverUnreachable
from certman.lifecycle.state import Phase, State
from certman.lifecycle.statefile import CertDir
from certman.monitor.endpoints import (
    WORKERS,
    CachedRunner,
    Endpoint,
    Job,
    Pool,
    endpoints,
    fetch,
    postfix_for,
)
from certman.monitor.result import Item, Perf, Report, Severity
from certman.monitor.state import Thresholds, expiry_item, state_items

if TYPE_CHECKING:
    from cryptography import x509

    from certman.dns.provider import RRset
    from certman.postfix.commands import Postfix


def run_check(
    cfg: Config,
    *,
    thresholds: Thresholds,
    timeout: float,
    postfix_audit: bool = True,
    only_postfix: bool = False,
    clock: Callable[[], float] = time.time,
) -> Report:
    """Everything ``certman check`` reports, within ``timeout`` seconds in all.

    Each distinct endpoint (address, port, protocol, SNI name) is probed once and each TLSA
    name looked up once, whichever certificates share them; all I/O runs in one bounded pool.
    """
    started = time.monotonic()
    deadline = started + timeout
    query_timeout = min(cfg.propagation.query_timeout, timeout)
    now = clock()
    jobs: dict[str, Job] = {}
    pool = Pool(WORKERS)
    runner = CachedRunner()

    def spawn(label: str, work: Callable[[], Any]) -> None:
        if label not in jobs:
            jobs[label] = pool.submit(Job(label, work))

    if postfix_audit or only_postfix:
        spawn("postfix", lambda: _postfix_items(cfg, query_timeout, only_postfix))
    certs = [] if only_postfix else list(cfg.certificates.values())
    points: dict[str, list[Endpoint] | CertmanError] = {}
    for cert in certs:
        postfix = postfix_for(cfg, cert, runner, timeout)
        spawn(f"state {cert.name}", functools.partial(_load_state, cert, postfix, cfg.state_dir))
        for name in cert.dane.tlsa_names() if cert.dane else ():
            spawn(f"tlsa {name}", functools.partial(_lookup, cfg, name, query_timeout))
        try:
            found = endpoints(cert, postfix)  # postconf only for master.cf services (cached)
        except CertmanError as exc:
            points[cert.name] = exc
            continue
        points[cert.name] = found
        for ep in found:
            spawn(ep.probe.label, functools.partial(fetch, ep.probe, deadline))
    if not only_postfix and cfg.dhparams.mode is not DhMode.OFF:
        spawn("dhparams", lambda: _dh_items(cfg, now))
    for job in jobs.values():
        job.done.wait(max(0.0, deadline - time.monotonic()))
    items: list[Item] = []
    perf: list[Perf] = []
    late = [j.label for j in jobs.values() if not j.done.is_set()]
    for label in late:
        items.append(Item(Severity.UNKNOWN, "timeout", label, f"no answer within {timeout:g} s"))
    for cert in certs:
        items += _certificate_items(cert, points[cert.name], jobs, now, thresholds, perf)
    for label in ("postfix", "dhparams"):
        extra = jobs.get(label)
        if extra is not None and extra.done.is_set():
            items += extra.value if extra.error is None else [_crashed(label, extra.error)]
    return Report(tuple(items), tuple(perf), time.monotonic() - started, bool(late))


def _crashed(label: str, error: BaseException) -> Item:
    return Item(Severity.UNKNOWN, label.split(maxsplit=1)[0], label, f"check failed: {error}")


def _load_state(
    cert: CertificateConfig, postfix: Postfix, state_dir: Path
) -> tuple[State, set[str] | None, str | None, str | None]:
    """The state, the SPKI digests of the keys every target's files hold (None if unreadable),
    the error reading them, and a note when they belong to certbot (issue 12)."""
    from certman import keys
    from certman.postfix.targets import foreign_owner, served_keys_for

    state = CertDir.of(state_dir, cert.name).load(cert.name)
    try:
        served = [s for t in cert.install.targets for s in served_keys_for(cert, postfix, t)]
    except CertmanError as exc:
        return state, None, str(exc), None
    digests = {
        keys.spki_sha256(keys.load_private_key(s.private_key_pem, s.source_path).public_key())
        for s in served
    }
    return state, digests, None, foreign_owner([s.source_path for s in served])


def _lookup(cfg: Config, name: str, query_timeout: float) -> RRset | None:
    from certman.dns.propagation import validated_rrset

    return validated_rrset(name, "TLSA", cfg.resolvers, query_timeout)


def _dh_items(cfg: Config, now: float) -> list[Item]:
    from certman.dh import run as dhparams
    from certman.postfix.commands import Postfix

    problems = dhparams.check(cfg.dhparams, Postfix(cfg.postfix), cfg.state_dir, now)
    if not problems:
        return [Item(Severity.OK, "dhparams", "dhparams", "files present, current, >= 2048 bits")]
    return [
        Item(Severity.WARNING, "dhparams", "dhparams", p, fix="certman dhparams --now")
        for p in problems
    ]


def resolver_validates(
    names: Sequence[str], resolvers: Sequence[str], timeout: float
) -> Callable[[], str | None]:
    """For the Postfix audit: does the resolver Postfix uses (``resolvers``; empty: the system's
    /etc/resolv.conf, as Postfix's libc does) answer a name in a signed zone with AD?"""

    def ask() -> str | None:
        from certman.dns.propagation import validated_rrset

        for name in names[:1]:
            try:
                validated_rrset(name, "TLSA", resolvers, timeout)
            except DnsError as exc:
                return str(exc)
        return None

    return ask


def _postfix_items(cfg: Config, query_timeout: float, only_postfix: bool) -> list[Item]:
    from certman.postfix.audit import audit
    from certman.postfix.commands import Postfix

    signed = [n for c in cfg.certificates.values() if c.dane for n in c.dane.tlsa_names()]
    validates = resolver_validates(signed, (), query_timeout) if signed else None
    try:
        findings = audit(Postfix(cfg.postfix), validates=validates)
    except CertmanError as exc:
        return [Item(Severity.UNKNOWN, "postfix", str(cfg.postfix.config_dir), str(exc))]
    # In the default check the audit only warns; `certman check --postfix` makes it decide.
    severity = Severity.CRITICAL if only_postfix else Severity.WARNING
    if not findings:
        return [Item(Severity.OK, "postfix", str(cfg.postfix.config_dir), "TLS settings sound")]
    return [
        Item(severity, "postfix", f.where, f"[{f.code}] {f.what}", why=f.why, fix=f.fix)
        for f in findings
    ]


# -- putting one certificate's answers together ---------------------------------------------------


def _certificate_items(
    cert: CertificateConfig,
    points: list[Endpoint] | CertmanError,
    jobs: dict[str, Job],
    now: float,
    t: Thresholds,
    perf: list[Perf],
) -> list[Item]:
    job = jobs[f"state {cert.name}"]
    if not job.done.is_set():
        return []
    if job.error is not None:
        return [_crashed(f"state {cert.name}", job.error)]
    state, served, served_error, foreign = job.value
    items = state_items(cert, state, now, t)
    if served_error:
        items.append(Item(Severity.CRITICAL, "served", cert.name, served_error))
    if foreign:
        items.append(
            Item(
                Severity.WARNING,
                "served",
                cert.name,
                f"{foreign}: certbot will replace the key behind certman's back",
                fix=f"certman adopt --from-certbot {foreign.rpartition(' ')[2]} (docs/certbot.md)",
            )
        )
    known = {k.spki_sha256 for k in (*state.current.values(), *state.next.values())}
    if served and state.phase is not Phase.NEW and served - known:
        items.append(
            Item(
                Severity.WARNING,
                "served",
                cert.name,
                "Postfix serves a key certman does not know (changed by hand or by another tool?)",
                fix="`certman status`; `certman run` adopts only on its first run",
            )
        )
    if isinstance(points, CertmanError):
        items.append(Item(Severity.UNKNOWN, "tls", cert.name, f"no endpoints: {points}"))
        points = []
    for ep in points:
        items += _endpoint_items(ep, state, jobs, now, t, perf)
    if cert.dane is None:
        for slot, info in state.certs.items():
            items.append(
                expiry_item(
                    f"{cert.name} {slot}",
                    info.not_before,
                    info.not_after,
                    state.renew_after,
                    now,
                    t,
                )
            )
        return items
    return items + _next_records(cert, state, jobs)


def _rrset(jobs: dict[str, Job], name: str) -> tuple[RRset | None, Item | None]:
    job = jobs[f"tlsa {name}"]
    if not job.done.is_set():
        return None, Item(Severity.UNKNOWN, "tlsa", name, "lookup did not finish")
    if isinstance(job.error, ResolverUnreachable):
        return None, Item(Severity.UNKNOWN, "tlsa", name, str(job.error))
    if job.error is not None:
        return None, Item(
            Severity.CRITICAL,
            "tlsa",
            name,
            str(job.error),
            why="DANE senders cannot validate this name (RFC 7672 §2.2)",
        )
    if job.value is None:
        return None, Item(
            Severity.CRITICAL,
            "tlsa",
            name,
            "no DNSSEC-validated TLSA RRset",
            why="senders see no DANE records at all",
        )
    return job.value, None


def _next_records(cert: CertificateConfig, state: State, jobs: dict[str, Job]) -> list[Item]:
    """In steady state every next key must already be published (RFC 7671 §8.1, current +
    next): otherwise the next rollover has to wait 2 x TTL first, or an unplanned one breaks."""
    if state.phase is not Phase.STEADY or cert.dane is None:
        return []
    items = []
    for name in cert.dane.tlsa_names():
        rrset, _problem = _rrset(jobs, name)
        if rrset is None:
            continue
        digests = {r.split()[-1].lower() for r in rrset.rdatas}
        for key in state.next.values():
            if key.spki_sha256 not in digests:
                items.append(
                    Item(
                        Severity.WARNING,
                        "next-key",
                        name,
                        f"no record for the next key {key.id}",
                        fix="`certman run` republishes it",
                    )
                )
    return items


def _stale(ep: Endpoint, state: State, leaf: x509.Certificate) -> list[Item]:
    """The target serves a key certman does not know, or not the certificate certman installed
    (an install that did not reach this service, a reload missing, a hand edit)."""
    from certman.keys import cert_spki_sha256

    if state.phase is Phase.NEW:
        return []
    known = {k.spki_sha256 for k in (*state.current.values(), *state.next.values())}
    if cert_spki_sha256(leaf) not in known:
        return [
            Item(
                Severity.WARNING,
                "served",
                ep.subject,
                f"{ep.target} serves a key certman does not know",
                why="certman would not keep its TLSA record",
            )
        ]
    slots = [ep.kind.value] if ep.kind else list(state.certs)
    info = state.certs.get(slots[0]) if len(slots) == 1 else None
    serial = f"{leaf.serial_number:x}"
    if state.phase is not Phase.STEADY or info is None or info.serial == serial:
        return []
    return [
        Item(
            Severity.WARNING,
            "served",
            ep.subject,
            f"{ep.target} serves certificate {serial}, not {info.serial} that certman installed",
            fix="`postfix reload`; `certman status`",
        )
    ]


def _endpoint_items(
    ep: Endpoint,
    state: State,
    jobs: dict[str, Job],
    now: float,
    t: Thresholds,
    perf: list[Perf],
) -> list[Item]:
    from certman.dane.tlsa import record_matches, unmatched_combinations, usable_records

    fetched = jobs[ep.probe.label]
    if not fetched.done.is_set():
        return []
    if fetched.error is not None:
        return [Item(Severity.CRITICAL, "tls", ep.subject, f"{ep.target}: {fetched.error}")]
    chain: list[x509.Certificate] = fetched.value
    leaf = chain[0]
    items = [
        expiry_item(
            ep.subject,
            leaf.not_valid_before_utc.timestamp(),
            leaf.not_valid_after_utc.timestamp(),
            state.renew_after,
            now,
            t,
        )
    ]
    left = (leaf.not_valid_after_utc.timestamp() - now) / 86400
    perf.append(Perf(f"{ep.subject} days", round(left, 2), "", None, t.expiry_critical_days))
    items += _stale(ep, state, leaf)
    if not ep.dane:
        return items
    rrset, problem = _rrset(jobs, f"_{ep.port}._tcp.{ep.host}")
    if problem is not None:
        return [*items, problem]
    assert rrset is not None
    records = usable_records(rrset.rdatas)
    hits = [r for r in records if record_matches(r, chain)]
    if not hits:
        items.append(
            Item(
                Severity.CRITICAL,
                "tlsa",
                ep.subject,
                f"the served chain matches none of the {len(records)} TLSA records at {rrset.name}",
                why="DANE senders refuse to deliver (RFC 7672 §2.2)",
            )
        )
        return items
    missing = unmatched_combinations(rrset.rdatas, chain)
    if missing:
        combos = ", ".join(str(p) for p in missing)
        items.append(
            Item(
                Severity.WARNING,
                "tlsa",
                ep.subject,
                f"no {combos} record matches",
                why="senders using only that combination fail (RFC 7671 §8)",
            )
        )
    else:
        matched = ", ".join(sorted({str(r.params) for r in hits}))
        items.append(Item(Severity.OK, "tlsa", ep.subject, f"chain matches TLSA {matched}"))
    return items
