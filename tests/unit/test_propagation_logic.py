"""The pure parts of certman.dns.propagation: serial arithmetic, TTL facts, the judging of answers
and the waiting loop (fake clock; the DNS side: tests/integration/test_propagation.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from certman.dns.propagation import (
    Nameserver,
    PropagationReport,
    ServerAnswer,
    ZoneInfo,
    _settle_skips,
    check_published,
    poll,
    poll_pause,
    serial_gte,
)
from certman.dns.provider import RRset
from certman.errors import PropagationTimeout

NAME = "_25._tcp.mx1.example.com"
RR = RRset.of(NAME, "TLSA", 300, ["3 1 1 " + "ab" * 32])
ZONE = ZoneInfo(
    "example.com",
    soa_ttl=3600,
    soa_minimum=300,
    serial=7,
    nameservers=(Nameserver("ns1.example.com", ("192.0.2.1",)),),
)


@pytest.mark.parametrize(
    ("serial", "reference", "expected"),
    [
        (5, 5, True),
        (6, 5, True),
        (5, 6, False),
        (0, 4294967295, True),  # wrapped past 2^32 - 1: 0 follows 4294967295 (RFC 1982 §3.2)
        (4294967295, 0, False),
        (2**31 - 1, 0, True),  # the largest step forward that is still "greater"
        (2**31 + 1, 0, False),  # beyond half the space it counts as behind
        (2024010100, 2024010199, False),
    ],
)
def test_serials_compare_in_sequence_space(serial: int, reference: int, expected: bool) -> None:
    assert serial_gte(serial, reference) is expected


def test_negative_ttl_is_the_lesser_of_soa_ttl_and_minimum() -> None:
    assert ZONE.negative_ttl == 300
    assert ZoneInfo("z.test", 60, 3600, 1, ()).negative_ttl == 60


def answer(server: str, address: str, *, matches: bool, skipped: bool = False) -> ServerAnswer:
    error = "Network is unreachable" if skipped else None
    rrset = RR if matches else None
    return ServerAnswer(server, address, rrset, None, error, matches, skipped)


def test_unroutable_address_is_skipped_only_when_its_host_answered_elsewhere() -> None:
    settled = _settle_skips(
        [
            answer("ns1", "192.0.2.1", matches=True),
            answer("ns1", "2001:db8::1", matches=False, skipped=True),
            answer("ns2", "2001:db8::2", matches=False, skipped=True),
        ]
    )
    assert [a.skipped for a in settled] == [False, True, False]


def test_nameserver_without_addresses_is_never_published() -> None:
    zone = ZoneInfo("example.com", 60, 60, 1, (Nameserver("ns.elsewhere.test", ()),))
    report = check_published(NAME, "TLSA", RR, zone=zone)
    assert not report.published
    assert report.summary() == "ns.elsewhere.test (-): no A/AAAA address"


def test_summary_names_each_lagging_server_on_its_own_line() -> None:
    behind = ServerAnswer("ns2.example.com", "192.0.2.2", None, 6, None, matches=False)
    down = ServerAnswer("ns3.example.com", "192.0.2.3", None, None, "no answer within 3s", False)
    report = PropagationReport(
        NAME, "TLSA", False, (answer("ns1", "192.0.2.1", matches=True), behind, down), RR, 7
    )
    assert report.summary().splitlines() == [
        "ns2.example.com (192.0.2.2) served no RRset (NXDOMAIN/NODATA), serial 6",
        "ns3.example.com (192.0.2.3): no answer within 3s",
    ]
    assert report.wanted() == f"TTL 300 [{next(iter(RR.rdatas))}] at serial >= 7"


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def reports(*published: bool) -> Iterator[PropagationReport]:
    lagging = ServerAnswer("ns2.example.com", "192.0.2.2", None, 6, None, matches=False)
    for flag in published:
        answers = () if flag else (lagging,)
        yield PropagationReport(NAME, "TLSA", flag, answers, RR, 7)


def run_poll(
    sequence: Iterator[PropagationReport],
    fake: FakeTime,
    *,
    timeout: float = 10.0,
    interval: float = 1.0,
    min_wait: float = 0.0,
) -> PropagationReport:
    seen: list[PropagationReport] = []
    result = poll(
        lambda: next(sequence),
        timeout=timeout,
        interval=interval,
        min_wait=min_wait,
        sleep=fake.sleep,
        clock=fake.clock,
        on_wait=seen.append,
        zone="example.com",
    )
    assert len(seen) == len(fake.sleeps)
    return result


def test_poll_returns_at_once_when_already_published() -> None:
    fake = FakeTime()
    assert run_poll(reports(True), fake).published
    assert fake.sleeps == []


def test_poll_checks_again_every_interval_until_published() -> None:
    fake = FakeTime()
    assert run_poll(reports(False, False, True), fake, interval=0.5).published
    assert fake.sleeps == [0.5, 0.5]


def test_poll_keeps_waiting_for_min_wait_after_publication() -> None:
    fake = FakeTime()
    run_poll(reports(True, True), fake, min_wait=2.5)
    assert fake.sleeps == [2.5]


def test_poll_times_out_naming_the_servers_behind_and_what_they_served() -> None:
    fake = FakeTime()
    with pytest.raises(PropagationTimeout) as caught:
        run_poll(reports(*[False] * 20), fake, timeout=3.0, interval=1.0)
    assert sum(fake.sleeps) == pytest.approx(3.0)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{NAME} TLSA: not on every nameserver of example.com after 3s")
    assert "ns2.example.com (192.0.2.2) served no RRset (NXDOMAIN/NODATA), serial 6" in message


def test_poll_never_sleeps_past_the_deadline() -> None:
    fake = FakeTime()
    with pytest.raises(PropagationTimeout):
        run_poll(reports(*[False] * 20), fake, timeout=2.5, interval=1.0)
    assert fake.sleeps == [1.0, 1.0, 0.5]


def test_adaptive_poll_starts_fast_and_backs_off_to_the_interval() -> None:
    fake = FakeTime()
    sequence = reports(*[False] * 400, True)
    poll(
        lambda: next(sequence),
        timeout=600.0,
        interval=1.0,
        min_wait=0.0,
        sleep=fake.sleep,
        clock=fake.clock,
        on_wait=None,
        zone="example.com",
        first_interval=0.05,
    )
    assert fake.sleeps[:3] == [0.05, 0.05, 0.05]
    waited = 0.0
    for pause in fake.sleeps:
        assert pause == pytest.approx(min(1.0, max(0.05, waited * 0.05)))
        waited += pause
    assert fake.sleeps[-1] == 1.0
    assert 20 < fake.sleeps.index(1.0) < 120


def test_poll_pause_notices_the_last_server_within_5_percent_of_the_wait() -> None:
    assert poll_pause(0.0, 0.05, 1.0) == 0.05
    assert poll_pause(3.0, 0.05, 1.0) == pytest.approx(0.15)
    assert poll_pause(300.0, 0.05, 1.0) == 1.0
    assert poll_pause(300.0, 0.05, 0.2) == 0.2
