"""Shared DNS helpers: server syntax, zone membership, compare-and-swap checks, answer parsing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from certman.dns.provider import ANY, RRset
from certman.dns.zone import (
    answer_rrset,
    check_expected,
    in_zone,
    parse_server,
    resolver_servers,
    same_data,
    show_rrset,
    show_server,
)
from certman.errors import ConflictError, DnsError

KEY = "3 1 1 " + "ab" * 32


@pytest.mark.parametrize(
    ("text", "server"),
    [
        ("127.0.0.53", ("127.0.0.53", 53)),
        ("127.0.0.53@5353", ("127.0.0.53", 5353)),
        ("::1", ("::1", 53)),
        ("2001:db8::53@853", ("2001:db8::53", 853)),
    ],
)
def test_server_is_an_address_with_an_optional_port(text: str, server: tuple[str, int]) -> None:
    assert parse_server(text) == server
    assert parse_server(show_server(server)) == server


@pytest.mark.parametrize("text", ["ns1.example.com", "127.0.0.1:53", "127.0.0.1@0", "1.2.3.4@x"])
def test_server_that_is_not_an_address_is_refused_by_name(text: str) -> None:
    with pytest.raises(DnsError, match=f"server {text!r}"):
        parse_server(text)


def test_configured_resolvers_are_used_as_given() -> None:
    assert resolver_servers(["127.0.0.53", "::1@5353"]) == [("127.0.0.53", 53), ("::1", 5353)]


def test_zone_membership_is_by_whole_labels() -> None:
    assert in_zone("_25._tcp.MX1.Example.COM.", "example.com")
    assert in_zone("example.com", "example.com.")
    assert not in_zone("badexample.com", "example.com")


def test_compare_and_swap_compares_record_data_not_ttl() -> None:
    one = RRset.of("a.example.com", "TLSA", 300, [KEY])
    assert same_data(one, RRset.of("a.example.com", "TLSA", 60, [KEY.upper()]))
    assert not same_data(one, None)
    assert same_data(None, None)
    check_expected(one, ANY, "here")
    check_expected(None, None, "here")
    with pytest.raises(ConflictError, match=r"^here: expected no RRset, found TTL 300 \[3 1 1 ab"):
        check_expected(one, None, "here")


def test_rrsets_show_sorted_on_one_line() -> None:
    rrset = RRset.of("a.example.com", "TXT", 60, ['"b"', '"a"'])
    assert show_rrset(rrset) == 'TTL 60 ["a", "b"]'
    assert show_rrset(None) == "no RRset"


def test_answer_rrset_picks_exactly_the_name_and_type_asked() -> None:
    import dns.message

    signature = "TLSA 13 5 300 20300101000000 20200101000000 1 example.com. AAAA"
    reply = dns.message.from_text(
        f"""id 1
opcode QUERY
rcode NOERROR
flags QR AA
;QUESTION
_25._tcp.mx1.example.com. IN TLSA
;ANSWER
_25._tcp.mx1.example.com. 300 IN TLSA {KEY.upper()}
_25._tcp.mx1.example.com. 300 IN RRSIG {signature}
"""
    )
    got = answer_rrset(reply, "_25._tcp.MX1.example.com", "TLSA")
    assert got == RRset.of("_25._tcp.mx1.example.com", "TLSA", 300, [KEY])
    assert answer_rrset(reply, "_25._tcp.mx1.example.com", "TXT") is None
    assert answer_rrset(reply, "_26._tcp.mx1.example.com", "TLSA") is None


def test_loading_providers_and_propagation_imports_no_dns_or_aws_library() -> None:
    """A cron run with nothing to do must not pay for dnspython or boto3 (house style)."""
    code = """
import sys
from pathlib import Path
from certman.dns.provider import ProviderContext
from certman.dns.providers.rfc2136 import Rfc2136Provider, Rfc2136Options
from certman.dns.providers.route53 import Route53Provider, Route53Options
from certman.dns.providers.powerdns import PowerDnsProvider, PowerDnsOptions
from certman.dns.providers.exec import ExecProvider, ExecOptions
import certman.dns.propagation
context = ProviderContext()
Rfc2136Provider("a", Rfc2136Options(server="192.0.2.1"), context)
Route53Provider("b", Route53Options(), context)
PowerDnsProvider("c", PowerDnsOptions("http://192.0.2.1:8081", "k"), context)
ExecProvider("d", ExecOptions(("/bin/true",)), context)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("dns", "boto3", "botocore")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
