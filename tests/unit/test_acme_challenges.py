"""Challenge responders: record naming, TXT grouping, add/remove, cleanup, HTTP-01 serving."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from certman.acme import challenges
from certman.acme.challenges import (
    Dns01Answer,
    Http01Answer,
    add_txt,
    challenge_record_name,
    dns01_published,
    http01_standalone,
    http01_webroot,
    remove_txt,
    txt_rrsets,
)
from certman.config.schema import PropagationConfig
from certman.dns.provider import ANY, AnyValue, ChangeResult, Expected, RRset
from certman.errors import CertmanError, ConflictError, PropagationTimeout


class MemoryProvider:
    """A DnsProvider over a dict, with compare-and-swap; ``race`` injects a concurrent writer."""

    def __init__(self, name: str = "mem") -> None:
        self.name = name
        self.records: dict[tuple[str, str], RRset] = {}
        self.serial = 100
        self.race: Callable[[], None] | None = None
        self.writes = 0

    def read(self, name: str, rdtype: str) -> RRset | None:
        return self.records.get((name, rdtype))

    def _check(self, key: tuple[str, str], expected: Expected) -> None:
        if self.race is not None:
            race, self.race = self.race, None
            race()
        if isinstance(expected, AnyValue):
            return
        current = self.records.get(key)
        if (current.rdatas if current else None) != (expected.rdatas if expected else None):
            raise ConflictError(f"{key[0]} {key[1]}: changed")

    def replace(self, rrset: RRset, expected: Expected = ANY) -> ChangeResult:
        key = (rrset.name, rrset.rdtype)
        self._check(key, expected)
        self.records[key] = rrset
        self.serial += 1
        self.writes += 1
        return ChangeResult("dane.test", self.serial)

    def delete(self, name: str, rdtype: str, expected: Expected = ANY) -> ChangeResult:
        self._check((name, rdtype), expected)
        self.records.pop((name, rdtype), None)
        self.serial += 1
        return ChangeResult("dane.test", self.serial)

    def wait_in_sync(self, change: ChangeResult, timeout: float) -> None:
        pass


def test_challenge_record_name_prefixes_the_domain() -> None:
    assert challenge_record_name("mx1.dane.test") == "_acme-challenge.mx1.dane.test"
    assert challenge_record_name("MX1.Dane.Test.") == "_acme-challenge.mx1.dane.test"


def test_wildcard_is_validated_at_the_base_name() -> None:
    assert challenge_record_name("*.dane.test") == "_acme-challenge.dane.test"


def test_domain_and_its_wildcard_share_one_rrset_with_two_values() -> None:
    answers = [
        Dns01Answer("dane.test", "AAA"),
        Dns01Answer("*.dane.test", "BBB"),
        Dns01Answer("mx1.dane.test", "CCC"),
    ]
    rrsets = txt_rrsets(answers, ttl=60)
    assert [(r.name, sorted(r.rdatas)) for r in rrsets] == [
        ("_acme-challenge.dane.test", ['"AAA"', '"BBB"']),
        ("_acme-challenge.mx1.dane.test", ['"CCC"']),
    ]
    assert all(r.ttl == 60 and r.rdtype == "TXT" for r in rrsets)


def test_add_txt_keeps_values_other_writers_put_there() -> None:
    provider = MemoryProvider()
    name = "_acme-challenge.mx1.dane.test"
    provider.records[(name, "TXT")] = RRset.of(name, "TXT", 300, ['"certbot-value"'])
    ours = RRset.of(name, "TXT", 60, ['"ours"'])
    served, change = add_txt(provider, ours)
    assert served.rdatas == {'"certbot-value"', '"ours"'}
    assert provider.read(name, "TXT") == served and change.serial == 101
    remove_txt(provider, ours)
    left = provider.read(name, "TXT")
    assert left is not None and left.rdatas == {'"certbot-value"'}


def test_remove_txt_deletes_the_rrset_when_only_ours_was_there() -> None:
    provider = MemoryProvider()
    ours = RRset.of("_acme-challenge.mx1.dane.test", "TXT", 60, ['"ours"'])
    add_txt(provider, ours)
    remove_txt(provider, ours)
    assert provider.records == {}
    remove_txt(provider, ours)  # idempotent


def test_add_txt_retries_after_losing_a_race() -> None:
    provider = MemoryProvider()
    name = "_acme-challenge.mx1.dane.test"

    def other_writer() -> None:
        provider.records[(name, "TXT")] = RRset.of(name, "TXT", 60, ['"theirs"'])

    provider.race = other_writer
    served, _ = add_txt(provider, RRset.of(name, "TXT", 60, ['"ours"']))
    assert served.rdatas == {'"ours"', '"theirs"'}
    assert provider.read(name, "TXT") == served


class FakePropagation:
    """Stands in for certman.dns.propagation: records what was waited for; may time out."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.waited: list[tuple[str, RRset | None, int | None]] = []

    def find_zone(self, name: str, resolvers: Any, timeout: float = 3.0) -> str:
        return "dane.test"

    def wait_published(self, name: str, rdtype: str, expected: RRset | None, **kwargs: Any) -> None:
        if self.fail:
            raise PropagationTimeout(f"{name} {rdtype}: not on every nameserver")
        self.waited.append((name, expected, kwargs["min_serial"]))


def _published(provider: MemoryProvider, answers: list[Dns01Answer], messages: list[str]) -> Any:
    return dns01_published(
        answers,
        provider_for=lambda domain: provider,
        resolvers=("127.0.0.53",),
        propagation=PropagationConfig(timeout=5, interval=0.1),
        sleep=lambda s: None,
        clock=lambda: 0.0,
        progress=messages.append,
    )


@pytest.fixture
def fake_propagation(monkeypatch: pytest.MonkeyPatch) -> FakePropagation:
    import certman.dns.propagation

    fake = FakePropagation()
    monkeypatch.setattr(certman.dns.propagation, "find_zone", fake.find_zone)
    monkeypatch.setattr(certman.dns.propagation, "wait_published", fake.wait_published)
    return fake


def test_dns01_waits_for_the_served_rrset_at_the_update_serial(
    fake_propagation: FakePropagation,
) -> None:
    provider, messages = MemoryProvider(), list[str]()
    answers = [Dns01Answer("dane.test", "A1"), Dns01Answer("*.dane.test", "B2")]
    with _published(provider, answers, messages):
        name = "_acme-challenge.dane.test"
        assert fake_propagation.waited == [(name, provider.read(name, "TXT"), 101)]
        assert provider.writes == 1  # one RRset, one write, for both values
    assert provider.records == {}
    assert any("removed" in m for m in messages)


def test_dns01_records_are_removed_when_the_order_fails(
    fake_propagation: FakePropagation,
) -> None:
    provider = MemoryProvider()
    with pytest.raises(RuntimeError), _published(provider, [Dns01Answer("mx1.dane.test", "V")], []):
        assert provider.records
        raise RuntimeError("CA said no")
    assert provider.records == {}


def test_dns01_records_are_removed_when_propagation_times_out(
    fake_propagation: FakePropagation,
) -> None:
    provider = MemoryProvider()
    fake_propagation.fail = True
    answers = [Dns01Answer("mx1.dane.test", "V"), Dns01Answer("mx2.dane.test", "W")]
    with pytest.raises(PropagationTimeout), _published(provider, answers, []):
        pytest.fail("the body must not run before the records are published")
    assert provider.records == {}


def test_dns01_cleanup_failure_does_not_hide_the_orders_error(
    fake_propagation: FakePropagation,
) -> None:
    provider, messages = MemoryProvider(), list[str]()

    def broken_delete(*args: Any, **kwargs: Any) -> ChangeResult:
        raise ConflictError("server refused")

    provider.delete = broken_delete  # type: ignore[method-assign]
    answers = [Dns01Answer("mx1.dane.test", "V")]
    with pytest.raises(RuntimeError, match="CA said no"), _published(provider, answers, messages):
        raise RuntimeError("CA said no")
    assert any(m.startswith("warning: dns-01 cleanup failed") for m in messages)


# -- HTTP-01 --------------------------------------------------------------------------------------


def test_webroot_serves_files_during_validation_and_removes_them(tmp_path: Path) -> None:
    answers = [Http01Answer("mx1.dane.test", "tok_EN-1", "tok_EN-1.thumb")]
    directory = tmp_path / ".well-known" / "acme-challenge"
    with http01_webroot(answers, tmp_path):
        path = directory / "tok_EN-1"
        assert path.read_text() == "tok_EN-1.thumb"
        assert path.stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / ".well-known").exists()


def test_webroot_keeps_directories_it_did_not_create(tmp_path: Path) -> None:
    directory = tmp_path / ".well-known" / "acme-challenge"
    directory.mkdir(parents=True)
    (directory / "other").write_text("x")
    with pytest.raises(RuntimeError), http01_webroot([Http01Answer("a", "t", "t.k")], tmp_path):
        raise RuntimeError("failed order")
    assert sorted(p.name for p in directory.iterdir()) == ["other"]


def test_webroot_refuses_a_token_that_is_not_base64url(tmp_path: Path) -> None:
    answers = [Http01Answer("a", "../../etc/x", "k")]
    with pytest.raises(CertmanError, match="refusing token"), http01_webroot(answers, tmp_path):
        pass
    assert not (tmp_path / ".well-known").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_standalone_listener_answers_challenges_and_stops(tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}{challenges.HTTP01_PREFIX}"
    with http01_standalone([Http01Answer("a", "tok1", "tok1.thumb")], "127.0.0.1", port):
        with urllib.request.urlopen(base + "tok1", timeout=5) as answer:
            assert answer.read() == b"tok1.thumb"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + "other", timeout=5)
        assert caught.value.code == 404
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "tok1", timeout=2)


def test_standalone_listener_reports_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        message = f"cannot listen on 127.0.0.1:{port}"
        with pytest.raises(CertmanError, match=message), http01_standalone([], "127.0.0.1", port):
            pass
