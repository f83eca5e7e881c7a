"""The DNS provider contract, run against every built-in provider on a real server.

rfc2136 -> BIND primary (zone dane.test), powerdns -> pdns-server (zone pdns.test), route53 ->
moto in server mode (a hosted zone made here), exec -> this directory's exec_provider_script.py
keeping RRsets in a JSON file. Each provider also gets its failure cases: wrong credentials,
unknown zone, unreachable server, each a one-line DnsError naming server and record, with
nothing written.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from testbed import Testbed

from certman.config.toml import Section
from certman.dns.provider import DnsProvider, ProviderContext, RRset
from certman.dns.providers.exec import ExecProvider
from certman.dns.providers.powerdns import PowerDnsProvider
from certman.dns.providers.rfc2136 import Rfc2136Provider
from certman.dns.providers.route53 import Route53Provider
from certman.errors import ConflictError, DnsError

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).with_name("exec_provider_script.py")
CONTEXT = ProviderContext(resolvers=("127.0.0.53",), timeout=3.0)
KEY_A = "3 1 1 " + "a1" * 32
KEY_B = "3 1 1 " + "b2" * 32
KEY_C = "3 1 1 " + "c3" * 32


@dataclass
class Case:
    """One provider under test, a second instance of it (the "other writer"), and a way to
    see whether a write reached the server (a serial, a call or log count)."""

    provider: DnsProvider
    other: DnsProvider
    zone: str
    writes: Callable[[], object]

    def name(self, prefix: str = "_25._tcp") -> str:
        return f"{prefix}.t{uuid.uuid4().hex[:10]}.{self.zone}"


def build(cls: Any, name: str, options: dict[str, Any]) -> DnsProvider:
    section = Section(Path("/etc/certman/certman.toml"), f"dns.{name}", options)
    parsed = cls.parse_options(section)
    section.finish()
    provider: DnsProvider = cls(name, parsed, CONTEXT)
    return provider


def soa_serial(server: str, zone: str) -> int:
    import dns.message
    import dns.query

    reply = dns.query.tcp(dns.message.make_query(zone + ".", "SOA"), server, timeout=3)
    return int(reply.answer[0][0].serial)


@pytest.fixture(scope="module")
def aws_env(testbed: Testbed) -> Iterator[str]:
    """Fake credentials for moto; no instance-metadata lookups; a hosted zone for the tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE"):
            patch.delenv(variable, raising=False)
        import boto3

        client = boto3.client(
            "route53", endpoint_url=testbed.moto_endpoint, region_name="us-east-1"
        )
        zone = client.create_hosted_zone(Name="route53.test", CallerReference=uuid.uuid4().hex)
        yield str(zone["HostedZone"]["Id"]).removeprefix("/hostedzone/")


def rfc2136_case(testbed: Testbed) -> Case:
    options = {
        "server": testbed.bind.primary,
        "zone": "dane.test",
        "tsig_key_file": str(testbed.bind.tsig.file),
    }
    provider = build(Rfc2136Provider, "bind", options)
    other = build(Rfc2136Provider, "bind2", options)
    return Case(provider, other, "dane.test", lambda: soa_serial(testbed.bind.primary, "dane.test"))


def powerdns_case(testbed: Testbed) -> Case:
    assert testbed.pdns is not None, "the testbed runs PowerDNS"
    pdns = testbed.pdns
    options = {"api_url": pdns.api_url, "api_key_file": str(pdns.api_key_file), "zone": pdns.zone}
    provider = build(PowerDnsProvider, "pdns", options)
    other = build(PowerDnsProvider, "pdns2", options)
    return Case(provider, other, pdns.zone, lambda: soa_serial(pdns.address, pdns.zone))


def route53_case(testbed: Testbed, zone_id: str) -> Case:
    options = {"endpoint_url": str(testbed.moto_endpoint), "hosted_zone_id": zone_id}
    provider = build(Route53Provider, "r53", options)
    other = build(Route53Provider, "r53b", options)
    calls: list[str] = []
    assert isinstance(provider, Route53Provider)
    client = provider._api()  # count the change batches that really go out
    client.meta.events.register(
        "before-call.route53.ChangeResourceRecordSets", lambda **_: calls.append("change")
    )
    return Case(provider, other, "route53.test", lambda: len(calls))


def exec_case(store: Path) -> Case:
    options = {"command": [sys.executable, str(SCRIPT), str(store)], "zone": "exec.test"}
    log = Path(f"{store}.log")

    def writes() -> int:
        lines = log.read_text().splitlines() if log.exists() else []
        return sum(1 for line in lines if not line.startswith("read "))

    provider = build(ExecProvider, "hook", options)
    return Case(provider, build(ExecProvider, "hook2", options), "exec.test", writes)


@pytest.fixture(params=["rfc2136", "powerdns", "route53", "exec"])
def case(request: pytest.FixtureRequest, testbed: Testbed, tmp_path: Path) -> Case:
    kind = request.param
    if kind == "rfc2136":
        return rfc2136_case(testbed)
    if kind == "powerdns":
        return powerdns_case(testbed)
    if kind == "route53":
        return route53_case(testbed, request.getfixturevalue("aws_env"))
    return exec_case(tmp_path / "records.json")


# -- the contract ---------------------------------------------------------------------------------


def test_replace_then_read_returns_the_whole_rrset(case: Case) -> None:
    rrset = RRset.of(case.name(), "TLSA", 300, [KEY_A, KEY_B])
    result = case.provider.replace(rrset)
    assert result.zone == case.zone
    assert case.provider.read(rrset.name, "TLSA") == rrset
    assert case.other.read(rrset.name, "tlsa") == rrset


def test_replacing_with_what_is_there_writes_nothing(case: Case) -> None:
    rrset = RRset.of(case.name(), "TLSA", 300, [KEY_A])
    case.provider.replace(rrset)
    before = case.writes()
    case.provider.replace(rrset)
    case.provider.replace(RRset.of(rrset.name.upper(), "tlsa", 300, [KEY_A.upper()]))
    assert case.writes() == before
    assert case.provider.read(rrset.name, "TLSA") == rrset


def test_txt_rrset_with_several_strings_round_trips(case: Case) -> None:
    rrset = RRset.of(case.name("_acme-challenge"), "TXT", 60, ['"token one"', '"tok-2"'])
    case.provider.replace(rrset)
    assert case.provider.read(rrset.name, "TXT") == rrset


def test_replace_changes_rdatas_and_ttl(case: Case) -> None:
    name = case.name()
    case.provider.replace(RRset.of(name, "TLSA", 300, [KEY_A, KEY_B]))
    case.provider.replace(RRset.of(name, "TLSA", 60, [KEY_B, KEY_C]))
    assert case.provider.read(name, "TLSA") == RRset.of(name, "TLSA", 60, [KEY_B, KEY_C])
    case.provider.replace(RRset.of(name, "TLSA", 120, [KEY_B, KEY_C]))
    assert case.provider.read(name, "TLSA") == RRset.of(name, "TLSA", 120, [KEY_B, KEY_C])


def test_delete_removes_and_deleting_again_writes_nothing(case: Case) -> None:
    rrset = RRset.of(case.name(), "TLSA", 300, [KEY_A])
    case.provider.replace(rrset)
    case.provider.delete(rrset.name, "TLSA")
    assert case.provider.read(rrset.name, "TLSA") is None
    before = case.writes()
    case.provider.delete(rrset.name, "TLSA")
    case.provider.delete(rrset.name, "TLSA", expected=rrset)
    assert case.writes() == before


def test_reading_an_absent_rrset_gives_none(case: Case) -> None:
    assert case.provider.read(case.name(), "TLSA") is None


def test_compare_and_swap_with_the_right_expectation_succeeds(case: Case) -> None:
    name = case.name()
    old = RRset.of(name, "TLSA", 300, [KEY_A])
    new = RRset.of(name, "TLSA", 300, [KEY_A, KEY_B])
    case.provider.replace(old, expected=None)
    case.provider.replace(new, expected=old)
    assert case.provider.read(name, "TLSA") == new
    case.provider.delete(name, "TLSA", expected=new)
    assert case.provider.read(name, "TLSA") is None


def test_compare_and_swap_conflict_raises_and_changes_nothing(case: Case) -> None:
    name = case.name()
    there = RRset.of(name, "TLSA", 300, [KEY_A])
    case.provider.replace(there)
    before = case.writes()
    stale = RRset.of(name, "TLSA", 300, [KEY_B])
    attempts: list[Callable[[], object]] = [
        lambda: case.provider.replace(RRset.of(name, "TLSA", 300, [KEY_C]), expected=stale),
        lambda: case.provider.replace(RRset.of(name, "TLSA", 300, [KEY_C]), expected=None),
        lambda: case.provider.delete(name, "TLSA", expected=stale),
        lambda: case.provider.delete(name, "TLSA", expected=None),
    ]
    for attempt in attempts:
        with pytest.raises(ConflictError) as caught:
            attempt()
        assert name in str(caught.value) and "\n" not in str(caught.value)
    assert case.provider.read(name, "TLSA") == there
    assert case.writes() == before


def test_repeating_a_finished_compare_and_swap_is_a_no_op(case: Case) -> None:
    """A crash after the write but before the state was saved repeats the write: no conflict."""
    name = case.name()
    old = RRset.of(name, "TLSA", 300, [KEY_A])
    new = RRset.of(name, "TLSA", 300, [KEY_B])
    case.provider.replace(old)
    case.provider.replace(new, expected=old)
    case.provider.replace(new, expected=old)
    case.provider.delete(name, "TLSA", expected=new)
    case.provider.delete(name, "TLSA", expected=new)
    assert case.provider.read(name, "TLSA") is None


@pytest.mark.parametrize("kind", ["rfc2136", "exec"])
def test_compare_and_swap_holds_when_another_writer_slips_in_between(
    kind: str, testbed: Testbed, tmp_path: Path
) -> None:
    """The server itself enforces ``expected`` (UPDATE prerequisites; the script's lock):
    another writer's change between our read and our write is kept.

    PowerDNS has no such check (its provider documents the small window). Route 53 rejects a
    DELETE whose values are not the current ones, but moto only checks that those values were
    written at some time, so Route 53's batch is checked in tests/unit/test_dns_route53.py."""
    case = rfc2136_case(testbed) if kind == "rfc2136" else exec_case(tmp_path / "records.json")
    name = case.name()
    old = RRset.of(name, "TLSA", 300, [KEY_A])
    theirs = RRset.of(name, "TLSA", 300, [KEY_B])
    case.provider.replace(old)
    real_read = case.provider._read  # type: ignore[attr-defined]

    def read_then_other_writer(*args: Any) -> RRset | None:
        seen: RRset | None = real_read(*args)
        case.provider._read = real_read  # type: ignore[attr-defined]
        case.other.replace(theirs)
        return seen

    case.provider._read = read_then_other_writer  # type: ignore[attr-defined]
    with pytest.raises(ConflictError):
        case.provider.replace(RRset.of(name, "TLSA", 300, [KEY_C]), expected=old)
    assert case.provider.read(name, "TLSA") == theirs


# -- failures: one line, naming server and record, nothing written --------------------------------


def assert_one_line_naming(error: BaseException, *parts: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_rfc2136_wrong_tsig_secret_is_refused_and_nothing_is_written(testbed: Testbed) -> None:
    good = rfc2136_case(testbed)
    name = good.name()
    key = f'key "{testbed.bind.tsig.name}" {{ algorithm hmac-sha256; secret "{"A" * 43}="; }};'
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WRONG_TSIG", key)
        bad = build(
            Rfc2136Provider,
            "bind",
            {"server": testbed.bind.primary, "zone": "dane.test", "tsig_key_env": "WRONG_TSIG"},
        )
    with pytest.raises(DnsError) as caught:
        bad.replace(RRset.of(name, "TLSA", 300, [KEY_A]))
    assert_one_line_naming(caught.value, testbed.bind.primary, name, "BADSIG")
    assert "A" * 43 not in str(caught.value)
    assert good.provider.read(name, "TLSA") is None


def test_rfc2136_unknown_key_name_is_refused(testbed: Testbed) -> None:
    options = {
        "server": testbed.bind.primary,
        "zone": "dane.test",
        "tsig_key_env": "OTHER_KEY",
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTHER_KEY", f"hmac-sha256:nobody-key:{testbed.bind.tsig.secret}")
        bad = build(Rfc2136Provider, "bind", options)
    name = "_25._tcp.nokey.dane.test"
    with pytest.raises(DnsError) as caught:
        bad.delete(name, "TLSA")
    assert_one_line_naming(caught.value, testbed.bind.primary, name, "BADKEY")


def test_rfc2136_unknown_zone_is_a_clear_error(testbed: Testbed) -> None:
    provider = build(
        Rfc2136Provider,
        "bind",
        {
            "server": testbed.bind.primary,
            "zone": "nosuch.test",
            "tsig_key_file": str(testbed.bind.tsig.file),
        },
    )
    with pytest.raises(DnsError) as caught:
        provider.replace(RRset.of("_25._tcp.mx.nosuch.test", "TLSA", 300, [KEY_A]))
    assert_one_line_naming(caught.value, testbed.bind.primary, "_25._tcp.mx.nosuch.test", "REFUSED")


def test_rfc2136_unreachable_server_is_a_clear_error(testbed: Testbed) -> None:
    options = {"server": "127.0.0.98", "zone": "dane.test", "timeout": 0.5}
    provider = build(Rfc2136Provider, "bind", options)
    with pytest.raises(DnsError) as caught:
        provider.replace(RRset.of("_25._tcp.x.dane.test", "TLSA", 300, [KEY_A]))
    assert_one_line_naming(caught.value, "127.0.0.98", "_25._tcp.x.dane.test")


def test_rfc2136_finds_the_zone_and_its_primary_through_the_resolver(testbed: Testbed) -> None:
    """No zone or server configured: SOA walk for the zone, SOA MNAME -> address for the
    primary (ns1.dane.test -> 127.0.0.11)."""
    provider = build(Rfc2136Provider, "bind", {"tsig_key_file": str(testbed.bind.tsig.file)})
    name = f"_25._tcp.auto{uuid.uuid4().hex[:8]}.mx1.dane.test"
    result = provider.replace(RRset.of(name, "TLSA", 300, [KEY_A]))
    assert result.zone == "dane.test"
    assert result.serial == soa_serial(testbed.bind.primary, "dane.test")
    provider.delete(name, "TLSA")


def test_powerdns_rejected_api_key_is_a_clear_error(testbed: Testbed) -> None:
    assert testbed.pdns is not None
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PDNS_KEY", "not-the-key")
        provider = build(
            PowerDnsProvider,
            "pdns",
            {"api_url": testbed.pdns.api_url, "api_key_env": "PDNS_KEY", "zone": "pdns.test"},
        )
    with pytest.raises(DnsError) as caught:
        provider.replace(RRset.of("_25._tcp.x.pdns.test", "TLSA", 300, [KEY_A]))
    assert_one_line_naming(caught.value, testbed.pdns.api_url, "_25._tcp.x.pdns.test", "401")
    assert "not-the-key" not in str(caught.value)


def test_powerdns_unknown_zone_and_unreachable_api_are_clear_errors(testbed: Testbed) -> None:
    assert testbed.pdns is not None
    key = str(testbed.pdns.api_key_file)
    unknown = build(
        PowerDnsProvider,
        "pdns",
        {"api_url": testbed.pdns.api_url, "api_key_file": key, "zone": "nosuch.test"},
    )
    with pytest.raises(DnsError) as caught:
        unknown.read("_25._tcp.x.nosuch.test", "TLSA")
    assert_one_line_naming(caught.value, "nosuch.test", "_25._tcp.x.nosuch.test", "not found")
    down = build(
        PowerDnsProvider,
        "pdns",
        {"api_url": "http://127.0.0.98:8081", "api_key_file": key, "timeout": 1.0},
    )
    with pytest.raises(DnsError) as caught:
        down.read("_25._tcp.x.pdns.test", "TLSA")
    assert_one_line_naming(caught.value, "127.0.0.98", "_25._tcp.x.pdns.test", "cannot reach")


def test_powerdns_serial_after_a_change_is_the_served_serial(testbed: Testbed) -> None:
    case = powerdns_case(testbed)
    before = case.writes()
    result = case.provider.replace(RRset.of(case.name(), "TLSA", 300, [KEY_A]))
    assert result.serial == case.writes()
    assert isinstance(before, int) and result.serial is not None and result.serial > before


def test_route53_unknown_hosted_zone_and_missing_credentials(
    testbed: Testbed, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = str(testbed.moto_endpoint)
    unknown = build(Route53Provider, "r53", {"endpoint_url": endpoint, "hosted_zone_id": "ZNONE"})
    with pytest.raises(DnsError) as caught:
        unknown.read("_25._tcp.x.route53.test", "TLSA")
    assert_one_line_naming(caught.value, "_25._tcp.x.route53.test", "NoSuchHostedZone")
    by_name = build(Route53Provider, "r53", {"endpoint_url": endpoint, "zone": "nosuch.test"})
    with pytest.raises(DnsError) as caught:
        by_name.read("_25._tcp.x.nosuch.test", "TLSA")
    assert_one_line_naming(caught.value, "no hosted zone found for nosuch.test")
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    anonymous = build(Route53Provider, "r53", {"endpoint_url": endpoint, "hosted_zone_id": aws_env})
    with pytest.raises(DnsError) as caught:
        anonymous.read("_25._tcp.x.route53.test", "TLSA")
    assert_one_line_naming(caught.value, "_25._tcp.x.route53.test", "no AWS credentials")


def test_route53_finds_the_hosted_zone_by_walking_up_the_name(
    testbed: Testbed, aws_env: str
) -> None:
    import boto3

    zone = f"z{uuid.uuid4().hex[:8]}.test"
    client = boto3.client("route53", endpoint_url=testbed.moto_endpoint, region_name="us-east-1")
    client.create_hosted_zone(Name=zone, CallerReference=uuid.uuid4().hex)
    provider = build(Route53Provider, "r53", {"endpoint_url": str(testbed.moto_endpoint)})
    rrset = RRset.of(f"_25._tcp.mx.{zone}", "TLSA", 300, [KEY_A])
    result = provider.replace(rrset)
    assert result.zone == zone and result.change_id is not None
    provider.wait_in_sync(result, timeout=5)
    assert provider.read(rrset.name, "TLSA") == rrset


def test_exec_command_failure_reports_its_last_stderr_line(tmp_path: Path) -> None:
    case = exec_case(tmp_path / "records.json")
    with pytest.raises(DnsError) as caught:
        case.provider.read("fail-now.exec.test", "TXT")
    assert_one_line_naming(caught.value, "fail-now.exec.test", "exit status 1", "zone is read-only")


def test_exec_command_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), str(tmp_path / "records.json")]
    provider = build(
        ExecProvider, "hook", {"command": command, "zone": "exec.test", "timeout": 0.5}
    )
    started = time.monotonic()
    with pytest.raises(DnsError) as caught:
        provider.read("slow-one.exec.test", "TXT")
    assert time.monotonic() - started < 5
    assert_one_line_naming(caught.value, "slow-one.exec.test", "no exit within 0.5s")
