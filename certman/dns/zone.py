"""DNS plumbing shared by the providers and ``certman.dns.propagation``.

Server syntax: a resolver or server is written ``ADDR`` or ``ADDR@PORT`` (Unbound's
``forward-addr`` form; unambiguous for IPv6 too: ``::1@5353``). Every query goes through
``exchange`` so that timeouts and unreachable servers become one-line ``DnsError``s naming the
server. dnspython is imported inside functions: a cron run with nothing to do never loads it.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

from certman.dns.provider import AnyValue, Expected, RRset, canonical_name
from certman.errors import ConflictError, DnsError, ResolverUnreachable

if TYPE_CHECKING:
    import dns.message

Server = tuple[str, int]

# errnos meaning "this host has no route to that address family at all" (an IPv6 address on a
# host without IPv6), as opposed to a server that is down.
_NO_ROUTE_ERRNOS = (errno.ENETUNREACH, errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)


class NoRoute(DnsError):
    """The local host cannot reach the address at all (no route / address family)."""


def parse_server(text: str, default_port: int = 53) -> Server:
    """``"127.0.0.53"`` -> ("127.0.0.53", 53); ``"::1@5353"`` -> ("::1", 5353)."""
    address, _, port_text = text.strip().partition("@")
    try:
        ipaddress.ip_address(address)
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise DnsError(f"server {text!r}: expected an IP address, optionally @PORT") from None
    if not 0 < port < 65536:
        raise DnsError(f"server {text!r}: port {port} out of range")
    return address, port


def show_server(server: Server) -> str:
    address, port = server
    return address if port == 53 else f"{address}@{port}"


def resolver_servers(resolvers: Sequence[str]) -> list[Server]:
    """The configured resolvers, else the nameservers of the system's resolv.conf."""
    if resolvers:
        return [parse_server(r) for r in resolvers]
    import dns.resolver

    try:
        system = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        raise DnsError("no resolvers configured and /etc/resolv.conf names none") from None
    return [(str(address), 53) for address in system.nameservers]


def in_zone(name: str, zone: str) -> bool:
    name, zone = canonical_name(name), canonical_name(zone)
    return name == zone or name.endswith("." + zone)


def make_query(
    name: str, rdtype: str, *, recurse: bool, dnssec: bool = False
) -> dns.message.QueryMessage:
    """A query with EDNS0 (1232-octet payload, the DNS Flag Day 2020 value) and RD as asked.

    Authoritative checks send RD=0 (RFC 1035 §4.1.1) so a server that also recurses cannot
    answer from elsewhere; validation checks set AD (RFC 6840 §5.7) and DO to ask for the
    resolver's verdict.
    """
    import dns.flags
    import dns.message

    flags = dns.flags.RD if recurse else 0
    if dnssec:
        flags |= dns.flags.AD
    return dns.message.make_query(
        name + ".", rdtype, use_edns=0, payload=1232, want_dnssec=dnssec, flags=flags
    )


def exchange(
    message: dns.message.Message, server: Server, timeout: float, *, tcp: bool = False
) -> dns.message.Message:
    """Send ``message``; UDP with TCP fallback on truncation (RFC 7766 §5), or TCP only."""
    import dns.exception
    import dns.query
    import dns.tsig

    address, port = server
    try:
        if tcp:
            return dns.query.tcp(message, address, timeout=timeout, port=port)
        response, _ = dns.query.udp_with_fallback(message, address, timeout=timeout, port=port)
        return response
    except dns.exception.Timeout:
        raise DnsError(f"no answer within {timeout:g}s") from None
    except dns.tsig.PeerError as exc:
        raise DnsError(f"TSIG key rejected ({_tsig_error(exc)})") from None
    except ConnectionRefusedError:
        raise DnsError("connection refused") from None
    except OSError as exc:
        kind = NoRoute if exc.errno in _NO_ROUTE_ERRNOS else DnsError
        raise kind(exc.strerror or str(exc)) from None
    except dns.exception.DNSException as exc:
        raise DnsError(f"bad answer: {exc}") from None


def _tsig_error(exc: Exception) -> str:
    import dns.tsig

    names: dict[type[Exception], str] = {
        dns.tsig.PeerBadKey: "BADKEY: the server does not know this key name/algorithm",
        dns.tsig.PeerBadSignature: "BADSIG: wrong secret",
        dns.tsig.PeerBadTime: "BADTIME: clocks differ too much",
    }
    return names.get(type(exc), type(exc).__name__)


def ask_resolvers(
    name: str, rdtype: str, resolvers: Sequence[str], timeout: float
) -> tuple[Server, dns.message.Message]:
    """A recursive query through the first resolver that answers at all."""
    failures = []
    for server in resolver_servers(resolvers):
        try:
            return server, exchange(make_query(name, rdtype, recurse=True), server, timeout)
        except DnsError as exc:
            failures.append(f"{show_server(server)}: {exc}")
    raise ResolverUnreachable(f"{name} {rdtype}: no resolver answered ({'; '.join(failures)})")


def rcode_text(message: dns.message.Message) -> str:
    import dns.rcode

    return dns.rcode.to_text(message.rcode())


def answer_rrset(message: dns.message.Message, name: str, rdtype: str) -> RRset | None:
    """The RRset at exactly ``name``/``rdtype`` in the answer section, None for NXDOMAIN/NODATA."""
    import dns.name
    import dns.rdataclass
    import dns.rdatatype

    owner = dns.name.from_text(canonical_name(name) + ".")
    kind = dns.rdatatype.from_text(rdtype)
    for rrset in message.answer:
        if rrset.name == owner and rrset.rdtype == kind and rrset.rdclass == dns.rdataclass.IN:
            return RRset.of(name, rdtype, rrset.ttl, [r.to_text() for r in rrset])
    return None


def find_zone_name(name: str, resolvers: Sequence[str], timeout: float) -> str:
    """The zone ``name`` belongs to: walk up the labels asking the resolvers for SOA.

    A positive SOA answer at a candidate is the zone apex; a negative answer carries the zone's
    SOA in its authority section (RFC 2308 §3), which names the apex directly.
    """
    import dns.rcode
    import dns.rdatatype

    labels = canonical_name(name).split(".")
    for index in range(len(labels) - 1):
        candidate = ".".join(labels[index:])
        server, reply = ask_resolvers(candidate, "SOA", resolvers, timeout)
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DnsError(
                f"resolver {show_server(server)}: SOA {candidate}: answered {rcode_text(reply)}"
            )
        if answer_rrset(reply, candidate, "SOA") is not None:
            return candidate
        for rrset in reply.authority:
            apex = canonical_name(rrset.name.to_text())
            if rrset.rdtype == dns.rdatatype.SOA and in_zone(name, apex):
                return apex
    raise DnsError(f"{canonical_name(name)}: no zone found (SOA walk through the resolvers)")


def resolve_addresses(host: str, resolvers: Sequence[str], timeout: float) -> tuple[str, ...]:
    """Every A and AAAA address of ``host`` (an IP literal is returned as is)."""
    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        pass
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        _, reply = ask_resolvers(host, rdtype, resolvers, timeout)
        rrset = answer_rrset(reply, host, rdtype)
        if rrset is not None:
            found.extend(sorted(rrset.rdatas))
    return tuple(found)


def soa_mname(zone: str, resolvers: Sequence[str], timeout: float) -> str:
    """The primary master named in the zone's SOA record (RFC 1035 §3.3.13, MNAME)."""
    server, reply = ask_resolvers(zone, "SOA", resolvers, timeout)
    soa = answer_rrset(reply, zone, "SOA")
    if soa is None:
        raise DnsError(f"resolver {show_server(server)}: {zone} has no SOA record")
    return canonical_name(next(iter(soa.rdatas)).split()[0])


def show_rrset(rrset: RRset | None) -> str:
    """``TTL 300 [3 1 1 ab…, …]`` or ``no RRset``: how messages and reports show an RRset."""
    if rrset is None:
        return "no RRset"
    return f"TTL {rrset.ttl} [{', '.join(sorted(rrset.rdatas))}]"


def same_data(current: RRset | None, expected: RRset | None) -> bool:
    """Compare-and-swap compares record data only: RFC 2136 §2.4.2 prerequisites carry no TTL."""
    if current is None or expected is None:
        return current is expected
    return current.rdatas == expected.rdatas


def check_expected(current: RRset | None, expected: Expected, where: str) -> None:
    """Raise ConflictError when ``current`` is not what the compare-and-swap ``expected``."""
    if isinstance(expected, AnyValue) or same_data(current, expected):
        return
    raise ConflictError(f"{where}: expected {show_rrset(expected)}, found {show_rrset(current)}")
