"""Propagation against the real servers: BIND primary + secondary (dane.test follows at once by
NOTIFY, lag.test only on ``Testbed.retransfer``), PowerDNS (pdns.test), and the validating
Unbound at 127.0.0.53 (dane.test validates, broken.test has a wrong trust anchor).

Figures (round time, time to "published") are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import replace

import pytest
from test_provider_contract import KEY_A, KEY_B, build
from testbed import Testbed

from certman.dns.propagation import (
    Nameserver,
    ZoneInfo,
    check_published,
    current_ttl,
    find_zone,
    validated_rrset,
    wait_published,
)
from certman.dns.provider import DnsProvider, RRset
from certman.dns.providers.powerdns import PowerDnsProvider
from certman.dns.providers.rfc2136 import Rfc2136Provider
from certman.errors import DnsError, PropagationTimeout

pytestmark = pytest.mark.integration

RESOLVERS = ("127.0.0.53",)


def bind_provider(testbed: Testbed, zone: str) -> DnsProvider:
    options = {
        "server": testbed.bind.primary,
        "zone": zone,
        "tsig_key_file": str(testbed.bind.tsig.file),
    }
    return build(Rfc2136Provider, "bind", options)


def fresh(zone: str, prefix: str = "_25._tcp") -> str:
    return f"{prefix}.p{uuid.uuid4().hex[:10]}.{zone}"


def wait(name: str, expected: RRset | None, zone: ZoneInfo, serial: int | None) -> float:
    """Seconds until every nameserver serves ``expected`` (polling every 10 ms)."""
    started = time.monotonic()
    wait_published(
        name,
        "TLSA",
        expected,
        zone=zone,
        min_serial=serial,
        timeout=5,
        interval=0.01,
        sleep=time.sleep,
        clock=time.monotonic,
    )
    return time.monotonic() - started


def test_find_zone_gives_nameservers_addresses_and_negative_ttl(testbed: Testbed) -> None:
    zone = find_zone("_25._tcp.mx1.dane.test", RESOLVERS)
    assert zone.name == "dane.test"
    assert zone.nameservers == (
        Nameserver("ns1.dane.test", (testbed.bind.primary,)),
        Nameserver("ns2.dane.test", (testbed.bind.secondary,)),
    )
    # The SOA comes from an authoritative server: its own TTL, not a cache's countdown.
    assert (zone.soa_ttl, zone.soa_minimum, zone.negative_ttl) == (60, 3, 3)
    assert zone.serial > 0
    pdns = find_zone("_25._tcp.mx1.pdns.test", RESOLVERS)
    assert pdns.name == "pdns.test"
    assert pdns.nameservers == (Nameserver("ns1.pdns.test", ("127.0.0.13",)),)


def test_find_zone_of_an_unknown_name_is_a_clear_error(testbed: Testbed) -> None:
    with pytest.raises(DnsError) as caught:
        find_zone("_25._tcp.mx.nosuch.test", RESOLVERS, timeout=1)
    message = str(caught.value)
    assert "\n" not in message and "nosuch.test" in message


def test_write_to_lagging_zone_is_not_yet_published_until_the_secondary_transfers(
    testbed: Testbed,
) -> None:
    provider = bind_provider(testbed, "lag.test")
    name = fresh("lag.test")
    rrset = RRset.of(name, "TLSA", 30, [KEY_A])
    zone = find_zone(name, RESOLVERS)
    result = provider.replace(rrset)
    assert result.serial is not None

    report = check_published(name, "TLSA", rrset, zone=zone, min_serial=result.serial)
    assert not report.published
    served = {a.address: a for a in report.answers}
    assert served[testbed.bind.primary].matches
    secondary = served[testbed.bind.secondary]
    assert not secondary.matches and secondary.error is None
    assert secondary.rrset is None  # the old data: no such RRset yet
    assert secondary.serial is not None and secondary.serial < result.serial
    assert report.summary().count("\n") == 0 and testbed.bind.secondary in report.summary()

    started = time.monotonic()
    testbed.retransfer("lag.test")  # returns once the secondary serves the primary's serial
    caught_up = time.monotonic()
    waited = wait(name, rrset, zone, result.serial)
    print(
        f"\nlag.test: retransfer took {(caught_up - started) * 1000:.0f} ms,"
        f" then 'published' after {waited * 1000:.1f} ms"
    )
    assert waited < 0.5


def test_an_older_serial_on_a_secondary_is_not_yet_published(testbed: Testbed) -> None:
    """The secondary serves the right RRset but not yet the update's serial: not published."""
    provider = bind_provider(testbed, "lag.test")
    name = fresh("lag.test")
    rrset = RRset.of(name, "TLSA", 30, [KEY_A])
    zone = find_zone(name, RESOLVERS)
    provider.replace(rrset)
    testbed.retransfer("lag.test")
    later = provider.replace(RRset.of(fresh("lag.test"), "TLSA", 30, [KEY_B]))
    assert later.serial is not None
    report = check_published(name, "TLSA", rrset, zone=zone, min_serial=later.serial)
    assert not report.published
    assert [a.address for a in report.lagging()] == [testbed.bind.secondary]
    assert check_published(name, "TLSA", rrset, zone=zone).published
    testbed.retransfer("lag.test")


def test_notified_secondary_serves_a_dane_test_write_within_a_second(testbed: Testbed) -> None:
    provider = bind_provider(testbed, "dane.test")
    name = fresh("dane.test")
    zone = find_zone(name, RESOLVERS)
    rrset = RRset.of(name, "TLSA", 30, [KEY_A, KEY_B])
    result = provider.replace(rrset)
    waited = wait(name, rrset, zone, result.serial)
    print(f"\ndane.test: written -> published on both servers in {waited * 1000:.1f} ms")
    assert waited < 1.0
    deleted = provider.delete(name, "TLSA")
    gone = wait(name, None, zone, deleted.serial)
    print(f"dane.test: deleted -> NXDOMAIN on both servers in {gone * 1000:.1f} ms")
    assert check_published(name, "TLSA", None, zone=zone).published


def test_a_round_against_both_bind_servers_takes_milliseconds(testbed: Testbed) -> None:
    provider = bind_provider(testbed, "dane.test")
    name = fresh("dane.test")
    zone = find_zone(name, RESOLVERS)
    rrset = RRset.of(name, "TLSA", 30, [KEY_A])
    result = provider.replace(rrset)
    wait(name, rrset, zone, result.serial)
    rounds = []
    for _ in range(30):
        started = time.perf_counter()
        report = check_published(name, "TLSA", rrset, zone=zone, min_serial=result.serial)
        rounds.append((time.perf_counter() - started) * 1000)
        assert report.published
    median, worst = statistics.median(rounds), max(rounds)
    print(f"\npropagation round, 2 BIND servers: median {median:.1f} ms, max {worst:.1f} ms")
    assert median < 100


def test_an_unreachable_nameserver_means_not_yet_and_times_out_naming_it(
    testbed: Testbed,
) -> None:
    provider = bind_provider(testbed, "dane.test")
    name = fresh("dane.test")
    zone = find_zone(name, RESOLVERS)
    broken = replace(
        zone, nameservers=(*zone.nameservers, Nameserver("ns9.dane.test", ("127.0.0.98",)))
    )
    rrset = RRset.of(name, "TLSA", 30, [KEY_A])
    result = provider.replace(rrset)
    wait(name, rrset, zone, result.serial)
    report = check_published(name, "TLSA", rrset, zone=broken, timeout=0.5)
    assert not report.published
    (down,) = report.lagging()
    assert (down.server, down.address) == ("ns9.dane.test", "127.0.0.98") and down.error
    with pytest.raises(PropagationTimeout) as caught:
        wait_published(
            name,
            "TLSA",
            rrset,
            zone=broken,
            timeout=0.3,
            interval=0.1,
            query_timeout=0.2,
            sleep=time.sleep,
            clock=time.monotonic,
        )
    message = str(caught.value)
    assert "\n" not in message
    assert "ns9.dane.test (127.0.0.98)" in message and name in message
    assert testbed.bind.primary not in message  # only the servers that were behind


def test_powerdns_serial_from_the_api_is_what_its_server_serves(testbed: Testbed) -> None:
    assert testbed.pdns is not None
    provider = build(
        PowerDnsProvider,
        "pdns",
        {"api_url": testbed.pdns.api_url, "api_key_file": str(testbed.pdns.api_key_file)},
    )
    name = fresh("pdns.test")
    rrset = RRset.of(name, "TLSA", 60, [KEY_A])
    zone = find_zone(name, RESOLVERS)
    result = provider.replace(rrset)
    report = check_published(name, "TLSA", rrset, zone=zone, min_serial=result.serial)
    assert report.published, report.summary()


def test_current_ttl_is_the_served_ttl_or_none(testbed: Testbed) -> None:
    provider = bind_provider(testbed, "dane.test")
    name = fresh("dane.test")
    zone = find_zone(name, RESOLVERS)
    assert current_ttl(name, "TLSA", zone=zone) is None
    rrset = RRset.of(name, "TLSA", 120, [KEY_A])
    result = provider.replace(rrset)
    wait(name, rrset, zone, result.serial)
    assert current_ttl(name, "TLSA", zone=zone) == 120


def test_validating_resolver_returns_the_rrset_with_ad(testbed: Testbed) -> None:
    provider = bind_provider(testbed, "dane.test")
    name = fresh("dane.test")
    zone = find_zone("dane.test", RESOLVERS)
    rrset = RRset.of(name, "TLSA", 30, [KEY_A, KEY_B])
    result = provider.replace(rrset)
    wait(name, rrset, zone, result.serial)
    # Earlier lookups of names that did not exist left NSEC denials in the resolver's cache;
    # with aggressive NSEC use (RFC 8198) they deny this name too for the zone's negative TTL
    # (3 s here) - the very wait DANE accounts for. Flush rather than wait it out.
    testbed.unbound_control("flush_zone", "dane.test")
    validated = validated_rrset(name, "TLSA", RESOLVERS)
    assert validated is not None and validated.rdatas == rrset.rdatas
    assert validated.ttl <= 30
    assert validated_rrset(fresh("dane.test"), "TLSA", RESOLVERS) is None  # NXDOMAIN, with AD


def test_bogus_zone_fails_validation_naming_resolver_and_name(testbed: Testbed) -> None:
    with pytest.raises(DnsError) as caught:
        validated_rrset("_25._tcp.mx1.broken.test", "TLSA", RESOLVERS)
    assert str(caught.value) == (
        "resolver 127.0.0.53: _25._tcp.mx1.broken.test TLSA: answer not DNSSEC-validated (SERVFAIL)"
    )


def test_an_answer_without_ad_is_not_accepted_as_validated(testbed: Testbed) -> None:
    """The BIND primary answers authoritatively but validates nothing: no AD bit."""
    with pytest.raises(DnsError) as caught:
        validated_rrset("mx1.dane.test", "A", (testbed.bind.primary,))
    assert "no AD bit" in str(caught.value) and testbed.bind.primary in str(caught.value)


def test_superset_match_accepts_our_values_among_another_writers(testbed: Testbed) -> None:
    """DNS-01 at a name several clients share: our TXT value among others counts as served."""
    provider = bind_provider(testbed, "dane.test")
    name = fresh("dane.test", prefix="_acme-challenge")
    ours = RRset.of(name, "TXT", 60, ['"ours"'])
    change = provider.replace(RRset.of(name, "TXT", 60, ['"ours"', '"theirs"']))
    zone = find_zone(name, [testbed.resolver])
    both = provider.read(name, "TXT")
    deadline = time.monotonic() + 5
    while not check_published(name, "TXT", both, zone=zone, min_serial=change.serial).published:
        assert time.monotonic() < deadline, "not on both nameservers within 5 s"
        time.sleep(0.05)
    exact = check_published(name, "TXT", ours, zone=zone, min_serial=change.serial)
    superset = check_published(
        name, "TXT", ours, zone=zone, min_serial=change.serial, superset=True
    )
    assert not exact.published
    assert superset.published
    provider.delete(name, "TXT")
