"""Is a record published? Ask every authoritative nameserver of its zone, directly.

A provider's "written" is not "published": a record counts only when every address of every NS
host of the zone serves exactly the expected RRset (rdatas and TTL), or nothing for a deletion,
and - when the update's SOA serial is known - a SOA serial at least that one (RFC 1982 serial
arithmetic). Queries go to each address with recursion off (RD=0), UDP with TCP fallback on
truncation, all at once in threads. An unreachable server means "not yet", never a crash; only
the overall deadline turns into ``PropagationTimeout``, naming the servers that were behind.

Nothing here sleeps on its own: ``wait_published`` takes the ``sleep`` and ``clock`` to use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from certman.dns.provider import RRset, canonical_name
from certman.dns.zone import (
    NoRoute,
    Server,
    answer_rrset,
    ask_resolvers,
    exchange,
    find_zone_name,
    make_query,
    rcode_text,
    resolve_addresses,
    resolver_servers,
    show_rrset,
    show_server,
)
from certman.errors import DnsError, PropagationTimeout, ResolverUnreachable

SERIAL_BITS = 32
_HALF = 2 ** (SERIAL_BITS - 1)
_MOD = 2**SERIAL_BITS


def serial_gte(serial: int, reference: int) -> bool:
    """``serial >= reference`` in RFC 1982 §3.2 sequence space arithmetic (SERIAL_BITS 32)."""
    serial, reference = serial % _MOD, reference % _MOD
    if serial == reference:
        return True
    return (serial > reference and serial - reference < _HALF) or (
        serial < reference and reference - serial > _HALF
    )


@dataclass(frozen=True)
class Nameserver:
    host: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class ZoneInfo:
    name: str
    soa_ttl: int
    soa_minimum: int
    serial: int
    nameservers: tuple[Nameserver, ...]

    @property
    def negative_ttl(self) -> int:
        """How long resolvers cache "no such RRset": min(SOA TTL, SOA MINIMUM), RFC 2308 §5."""
        return min(self.soa_ttl, self.soa_minimum)

    def servers(self) -> list[tuple[str, str]]:
        """(NS host, address) for every address of every nameserver."""
        return [(ns.host, address) for ns in self.nameservers for address in ns.addresses]


@dataclass(frozen=True)
class ServerAnswer:
    server: str
    address: str
    rrset: RRset | None
    serial: int | None
    error: str | None
    matches: bool
    skipped: bool = False

    def describe(self) -> str:
        where = f"{self.server} ({self.address})"
        if self.error is not None:
            return f"{where}: {self.error}"
        serial = "" if self.serial is None else f", serial {self.serial}"
        served = show_rrset(self.rrset) if self.rrset else "no RRset (NXDOMAIN/NODATA)"
        return f"{where} served {served}{serial}"


@dataclass(frozen=True)
class PropagationReport:
    name: str
    rdtype: str
    published: bool
    answers: tuple[ServerAnswer, ...]
    expected: RRset | None = None
    min_serial: int | None = None

    def lagging(self) -> list[ServerAnswer]:
        return [a for a in self.answers if not a.matches and not a.skipped]

    def summary(self) -> str:
        """One line per nameserver address that does not serve the expected data yet."""
        return "\n".join(a.describe() for a in self.lagging())

    def wanted(self) -> str:
        serial = "" if self.min_serial is None else f" at serial >= {self.min_serial}"
        return f"{show_rrset(self.expected)}{serial}"


# -- the zone -------------------------------------------------------------------------------------


def find_zone(
    name: str, resolvers: Sequence[str], timeout: float = 3.0, port: int = 53
) -> ZoneInfo:
    """The zone of ``name``, its NS hosts with every A/AAAA address, and its SOA facts.

    The zone and addresses come from the resolvers; the SOA itself from an authoritative server
    (a cache would hand back a TTL that has been counting down). Asking the resolvers about a
    name that does not exist yet makes them cache NXDOMAIN for the zone's negative TTL (RFC 2308,
    RFC 8198 aggressive NSEC): harmless for a rollover, which waits that long anyway; pass the
    host (``mx1.example.com``) rather than the TLSA owner name when it matters.
    """
    zone = find_zone_name(name, resolvers, timeout)
    server, reply = ask_resolvers(zone, "NS", resolvers, timeout)
    ns_rrset = answer_rrset(reply, zone, "NS")
    if ns_rrset is None:
        raise DnsError(f"resolver {show_server(server)}: zone {zone} has no NS records")
    hosts = sorted(canonical_name(h) for h in ns_rrset.rdatas)
    with ThreadPoolExecutor(max_workers=min(len(hosts), 16)) as pool:
        found = pool.map(lambda h: resolve_addresses(h, resolvers, timeout), hosts)
        nameservers = tuple(Nameserver(h, a) for h, a in zip(hosts, found, strict=True))
    soa_ttl, minimum, serial = _authoritative_soa(zone, nameservers, timeout, port)
    return ZoneInfo(zone, soa_ttl, minimum, serial, nameservers)


def _authoritative_soa(
    zone: str, nameservers: Sequence[Nameserver], timeout: float, port: int
) -> tuple[int, int, int]:
    failures = []
    for ns in nameservers:
        for address in ns.addresses:
            try:
                soa = _ask(zone, "SOA", (address, port), timeout)
            except DnsError as exc:
                failures.append(f"{ns.host} ({address}): {exc}")
                continue
            if soa is not None:
                fields = next(iter(soa.rdatas)).split()
                return soa.ttl, int(fields[6]), int(fields[2])
            failures.append(f"{ns.host} ({address}): no SOA record")
    raise ResolverUnreachable(
        f"zone {zone}: no nameserver answered SOA ({'; '.join(failures) or 'no NS'})"
    )


# -- asking one server ----------------------------------------------------------------------------


def _ask(name: str, rdtype: str, server: Server, timeout: float) -> RRset | None:
    """The RRset an authoritative server serves, None for NXDOMAIN/NODATA; DnsError otherwise."""
    import dns.flags
    import dns.rcode

    reply = exchange(make_query(name, rdtype, recurse=False), server, timeout)
    if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise DnsError(f"answered {rcode_text(reply)}")
    if not reply.flags & dns.flags.AA:
        raise DnsError("answer not authoritative (no AA flag): lame delegation?")
    return answer_rrset(reply, name, rdtype)


def _check_one(
    host: str,
    address: str,
    expected: RRset | None,
    *,
    name: str,
    rdtype: str,
    zone: str,
    min_serial: int | None,
    timeout: float,
    port: int,
    superset: bool = False,
) -> ServerAnswer:
    server = (address, port)
    try:
        rrset = _ask(name, rdtype, server, timeout)
        serial = None
        if min_serial is not None:
            soa = _ask(zone, "SOA", server, timeout)
            serial = None if soa is None else int(next(iter(soa.rdatas)).split()[2])
    except DnsError as exc:
        # A host without IPv6 cannot ask an NS's IPv6 address: skipped (see _settle_skips).
        skip = isinstance(exc, NoRoute)
        return ServerAnswer(host, address, None, None, str(exc), matches=False, skipped=skip)
    serial_ok = min_serial is None or (serial is not None and serial_gte(serial, min_serial))
    if superset and expected is not None:
        # Our values among others' (DNS-01 TXT at a name several clients share): a value another
        # writer added or removed since must not hold us up.
        same = rrset is not None and expected.rdatas <= rrset.rdatas
    else:
        same = rrset == expected
    return ServerAnswer(host, address, rrset, serial, None, same and serial_ok)


def _settle_skips(answers: list[ServerAnswer]) -> tuple[ServerAnswer, ...]:
    """An unroutable address is skipped only when another address of that host matched."""
    matched_hosts = {a.server for a in answers if a.matches}
    return tuple(
        a
        if not a.skipped or a.server in matched_hosts
        else ServerAnswer(a.server, a.address, None, None, a.error, matches=False)
        for a in answers
    )


# -- one round, and waiting -----------------------------------------------------------------------


def check_published(
    name: str,
    rdtype: str,
    expected: RRset | None,
    *,
    zone: ZoneInfo,
    min_serial: int | None = None,
    timeout: float = 3.0,
    port: int = 53,
    superset: bool = False,
) -> PropagationReport:
    """One round: ask every nameserver address at once; no waiting, no retries.

    ``superset``: a server that serves ``expected``'s rdatas among others counts as published.
    """
    name, rdtype = canonical_name(name), rdtype.upper()
    targets = zone.servers()
    missing = [
        ServerAnswer(ns.host, "-", None, None, "no A/AAAA address", matches=False)
        for ns in zone.nameservers
        if not ns.addresses
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(len(targets), 32))) as pool:
        futures = [
            pool.submit(
                _check_one,
                host,
                address,
                expected,
                name=name,
                rdtype=rdtype,
                zone=zone.name,
                min_serial=min_serial,
                timeout=timeout,
                port=port,
                superset=superset,
            )
            for host, address in targets
        ]
        answers = _settle_skips([f.result() for f in futures] + missing)
    published = bool(targets) and all(a.matches or a.skipped for a in answers)
    return PropagationReport(name, rdtype, published, answers, expected, min_serial)


def wait_published(
    name: str,
    rdtype: str,
    expected: RRset | None,
    *,
    zone: ZoneInfo,
    min_serial: int | None = None,
    timeout: float,
    interval: float,
    min_wait: float = 0.0,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    on_wait: Callable[[PropagationReport], None] | None = None,
    query_timeout: float = 3.0,
    port: int = 53,
    superset: bool = False,
    first_interval: float | None = None,
) -> PropagationReport:
    """Poll ``check_published`` until published (and ``min_wait`` passed): every ``interval``,
    or adaptively from ``first_interval`` up to ``interval`` (``poll_pause``)."""

    def check() -> PropagationReport:
        return check_published(
            name,
            rdtype,
            expected,
            zone=zone,
            min_serial=min_serial,
            timeout=query_timeout,
            port=port,
            superset=superset,
        )

    return poll(
        check,
        timeout=timeout,
        interval=interval,
        min_wait=min_wait,
        sleep=sleep,
        clock=clock,
        on_wait=on_wait,
        zone=zone.name,
        first_interval=first_interval,
    )


def poll(
    check: Callable[[], PropagationReport],
    *,
    timeout: float,
    interval: float,
    min_wait: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    on_wait: Callable[[PropagationReport], None] | None,
    zone: str,
    first_interval: float | None = None,
) -> PropagationReport:
    """The waiting loop of ``wait_published``, apart from the DNS (so it is testable alone)."""
    start = clock()
    while True:
        report = check()
        elapsed = clock() - start
        if report.published and (elapsed >= min_wait or elapsed >= timeout):
            return report
        if elapsed >= timeout:
            raise PropagationTimeout(_timeout_message(report, zone, timeout))
        if on_wait is not None:
            on_wait(report)
        if report.published:
            pause = min_wait - elapsed
        elif first_interval is None:
            pause = interval
        else:
            pause = poll_pause(elapsed, first_interval, interval)
        sleep(max(0.0, min(pause, timeout - elapsed)))


POLL_FRACTION = 0.05  # adaptive poll: wait a twentieth of the time waited so far


def poll_pause(elapsed: float, first: float, cap: float) -> float:
    """Seconds until the next propagation poll, ``elapsed`` seconds after the change was written.

    Most changes reach every nameserver within a second (NOTIFY, RFC 1996), a lagging secondary
    takes its refresh interval: polling at ``first`` and then at a twentieth of the time waited
    so far (never more than ``cap``) notices the last nameserver within 5 % of the wait (at most
    ``cap``), for a few more queries than polling every ``cap`` seconds."""
    return min(cap, max(first, elapsed * POLL_FRACTION))


def _timeout_message(report: PropagationReport, zone: str, timeout: float) -> str:
    behind = "; ".join(a.describe() for a in report.lagging()) or "no nameserver answered"
    return (
        f"{report.name} {report.rdtype}: not on every nameserver of {zone} after {timeout:g}s"
        f" (want {report.wanted()}): {behind}"
    )


# -- TTL facts and validation ---------------------------------------------------------------------


def current_ttl(
    name: str, rdtype: str, *, zone: ZoneInfo, timeout: float = 3.0, port: int = 53
) -> int | None:
    """The TTL the authoritative servers give the RRset now (the largest, if they disagree), None
    when none serves it. Raises DnsError when no server answered at all."""
    report = check_published(name, rdtype, None, zone=zone, timeout=timeout, port=port)
    answered = [a for a in report.answers if a.error is None]
    if not answered:
        raise DnsError(
            f"{report.name} {rdtype}: no nameserver of {zone.name} answered: "
            + "; ".join(a.describe() for a in report.answers)
        )
    ttls = [a.rrset.ttl for a in answered if a.rrset is not None]
    return max(ttls) if ttls else None


def validated_rrset(
    name: str, rdtype: str, resolvers: Sequence[str], timeout: float = 3.0
) -> RRset | None:
    """The RRset as a DNSSEC-validating resolver serves it, with the AD bit (RFC 4035 §3.2.3).

    NXDOMAIN/NODATA with AD -> None. SERVFAIL (bogus data) or an answer without AD -> DnsError
    naming the resolver and the name. The first resolver that answers decides; one that does
    not answer at all passes the question to the next.
    """
    import dns.flags
    import dns.rcode

    name, rdtype = canonical_name(name), rdtype.upper()
    failures = []
    for server in resolver_servers(resolvers):
        try:
            reply = exchange(make_query(name, rdtype, recurse=True, dnssec=True), server, timeout)
        except DnsError as exc:
            failures.append(f"{show_server(server)}: {exc}")
            continue
        where = f"resolver {show_server(server)}: {name} {rdtype}"
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DnsError(f"{where}: answer not DNSSEC-validated ({rcode_text(reply)})")
        if not reply.flags & dns.flags.AD:
            raise DnsError(f"{where}: answer not DNSSEC-validated (no AD bit)")
        return answer_rrset(reply, name, rdtype)
    raise ResolverUnreachable(
        f"{name} {rdtype}: no validating resolver answered ({'; '.join(failures)})"
    )
