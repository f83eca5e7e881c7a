"""Issuance against the testbed's Pebble: DNS-01 through BIND, HTTP-01, EAB, retries, cleanup."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from acme import challenges as acme_challenges
from acme_support import (
    ExtraPebble,
    Timer,
    extra_pebble,
    providers_of,
    unique_name,
    verify_chain,
    write_config,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from testbed import Testbed

from certman.acme.account import read_cached_account, save_cached_account
from certman.acme.challenges import challenge_record_name
from certman.acme.issue import IssuedCertificate, issue_certificate
from certman.config.schema import Config
from certman.errors import AcmeError, PropagationTimeout
from certman.keys import generate_key, spki_der
from certman.model import KeyType

pytestmark = pytest.mark.integration

MX1 = "mx1.dane.test"
MX1_ADDRESS = "127.0.0.25"


def _issue(
    config: Config, messages: list[str] | None = None, replaces: str | None = None
) -> tuple[IssuedCertificate, float]:
    cert = config.certificate("mx")
    key = generate_key(KeyType.ECDSA_P256)
    timer = Timer()
    started = time.monotonic()
    issued = issue_certificate(
        config,
        cert,
        key,
        providers=providers_of(config),
        sleep=timer.sleep,
        clock=timer.clock,
        replaces=replaces,
        progress=(messages.append if messages is not None else None),
    )
    elapsed = time.monotonic() - started
    assert spki_der(issued.leaf.public_key()) == spki_der(key.public_key())
    return issued, elapsed


def _txt(config: Config, domain: str) -> object:
    provider = providers_of(config)["bind"]
    return provider.read(challenge_record_name(domain), "TXT")


def _sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(ext.get_values_for_type(x509.DNSName))


def test_dns01_issues_mx1_certificate_that_chains_to_pebbles_root(
    testbed: Testbed, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    config = write_config(tmp_path, testbed, domains=(MX1,))
    messages: list[str] = []
    issued, seconds = _issue(config, messages)
    record_property("seconds_per_issuance", round(seconds, 2))
    print(f"\nDNS-01 issuance for {MX1} (new account): {seconds:.2f} s")
    assert _sans(issued.leaf) == [MX1]
    chain = x509.load_pem_x509_certificates(issued.fullchain_pem)
    assert chain[0] == issued.leaf and len(chain) >= 2
    verify_chain(issued.fullchain_pem, testbed.pebble_roots(), MX1)
    assert issued.not_after - issued.not_before > 3600
    assert issued.leaf.not_valid_after_utc.timestamp() == issued.not_after
    assert issued.order_url.startswith("https://127.0.0.14:14000/")
    assert issued.ari_id.count(".") == 1
    assert _txt(config, MX1) is None  # challenge record removed after success
    assert any("registered account" in m for m in messages)
    assert any("_acme-challenge.mx1.dane.test" in m for m in messages)


def test_account_key_and_url_are_reused_on_later_runs(testbed: Testbed, tmp_path: Path) -> None:
    config = write_config(tmp_path, testbed, domains=(unique_name(),))
    first: list[str] = []
    _issue(config, first)
    key_bytes = config.acme.account_key.read_bytes()
    assert config.acme.account_key.stat().st_mode & 0o777 == 0o600
    url = read_cached_account(config.state_dir, config.acme.directory)
    assert url is not None and "registered account" in " ".join(first)

    second: list[str] = []
    config2 = write_config(tmp_path, testbed, domains=(unique_name(),))
    _, seconds = _issue(config2, second)
    print(f"\nDNS-01 issuance with a cached account: {seconds:.2f} s")
    assert config.acme.account_key.read_bytes() == key_bytes
    assert read_cached_account(config.state_dir, config.acme.directory) == url
    assert not any("account" in m for m in second)  # no lookup, no registration


def test_fresh_state_dir_with_existing_key_finds_the_account(
    testbed: Testbed, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "a", testbed, domains=(unique_name(),))
    _issue(config)
    url = read_cached_account(config.state_dir, config.acme.directory)
    # a new state directory, the same key file (as after restoring only /etc/certman)
    moved = write_config(
        tmp_path / "b",
        testbed,
        domains=(unique_name(),),
        acme={"account_key": str(config.acme.account_key)},
    )
    messages: list[str] = []
    _issue(moved, messages)
    assert f"acme: found existing account {url}" in messages
    assert read_cached_account(moved.state_dir, moved.acme.directory) == url


def test_stale_cached_account_url_is_replaced_by_a_lookup(testbed: Testbed, tmp_path: Path) -> None:
    config = write_config(tmp_path, testbed, domains=(unique_name(),))
    _issue(config)
    url = read_cached_account(config.state_dir, config.acme.directory)
    assert url is not None
    save_cached_account(config.state_dir, config.acme.directory, url.rsplit("/", 1)[0] + "/99999")
    messages: list[str] = []
    # a new name: Pebble's resolver still caches the first challenge's TXT value
    _issue(write_config(tmp_path, testbed, domains=(unique_name(),)), messages)
    assert any("cached account unusable" in m for m in messages)
    assert read_cached_account(config.state_dir, config.acme.directory) == url


def test_wildcard_and_base_name_validate_through_one_txt_rrset(
    testbed: Testbed, tmp_path: Path
) -> None:
    base = unique_name("wc")
    config = write_config(tmp_path, testbed, domains=(base, f"*.{base}"))
    messages: list[str] = []
    issued, _ = _issue(config, messages)
    assert _sans(issued.leaf) == sorted([base, f"*.{base}"])
    written = [m for m in messages if m.startswith("dns-01:") and "written" in m]
    assert written == [f"dns-01: _acme-challenge.{base} TXT written via bind"]
    assert _txt(config, base) is None


def test_failed_validation_reports_the_cas_detail_and_removes_the_records(
    testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The TXT value reaches every nameserver, but it is not the digest the CA expects (as when
    # a record of another account or an old order is answered): the authorization fails.
    monkeypatch.setattr(acme_challenges.DNS01, "validation", lambda self, key: "not-the-digest")
    name = unique_name("bad")
    config = write_config(tmp_path, testbed, domains=(name,))
    messages: list[str] = []
    with pytest.raises(AcmeError) as caught:
        _issue(config, messages)
    message = str(caught.value)
    print(f"\n{message}")
    assert "\n" not in message
    assert message.startswith(f"ACME server {testbed.pebble.directory}: authorization for {name}")
    assert "failed: dns-01: unauthorized: Correct value not found for DNS challenge" in message
    assert f"dns-01: _acme-challenge.{name} TXT written via bind" in messages
    assert _txt(config, name) is None


def test_records_are_removed_when_a_nameserver_never_catches_up(
    testbed: Testbed, tmp_path: Path
) -> None:
    # lag.test: the secondary does not follow the primary until told to.
    name = f"x-{uuid.uuid4().hex[:8]}.lag.test"
    config = write_config(tmp_path, testbed, domains=(name,))
    config = dataclasses.replace(
        config, propagation=dataclasses.replace(config.propagation, timeout=1.0)
    )
    with pytest.raises(PropagationTimeout) as caught:
        _issue(config)
    assert testbed.bind.secondary in str(caught.value)
    assert _txt(config, name) is None


def test_rejected_identifier_names_the_server_and_domain(testbed: Testbed, tmp_path: Path) -> None:
    config = write_config(tmp_path, testbed, domains=(unique_name(),))
    bad = "under_score.dane.test"
    cert = dataclasses.replace(config.certificate("mx"), domains=(bad,))
    with pytest.raises(AcmeError) as caught:
        issue_certificate(
            config,
            cert,
            generate_key(KeyType.ECDSA_P256),
            providers=providers_of(config),
            sleep=time.sleep,
            clock=time.time,
        )
    message = str(caught.value)
    assert message.startswith(f"ACME server {testbed.pebble.directory}: new order for {bad}: ")
    assert "rejectedIdentifier" in message or "malformed" in message
    assert _txt(config, bad) is None


def test_http01_standalone_listener_on_mx1(testbed: Testbed, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        testbed,
        domains=(MX1,),
        certificate={"challenge": "http-01"},
        http={"listen": MX1_ADDRESS, "port": 80},
    )
    issued, seconds = _issue(config)
    print(f"\nHTTP-01 standalone issuance: {seconds:.2f} s")
    assert _sans(issued.leaf) == [MX1]
    with pytest.raises(OSError):  # the listener is gone
        socket.create_connection((MX1_ADDRESS, 80), timeout=1).close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webroot_server(tmp_path: Path) -> Iterator[Path]:
    """The host's "real" web server: serves a webroot directory on mx1's address, port 80."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer((MX1_ADDRESS, 80), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http01_webroot_files_are_served_and_removed(
    testbed: Testbed, tmp_path: Path, webroot_server: Path
) -> None:
    config = write_config(
        tmp_path,
        testbed,
        domains=(MX1,),
        certificate={"challenge": "http-01"},
        http={"webroot": str(webroot_server)},
    )
    issued, seconds = _issue(config)
    print(f"\nHTTP-01 webroot issuance: {seconds:.2f} s")
    assert _sans(issued.leaf) == [MX1]
    assert list(webroot_server.iterdir()) == []


# -- Pebbles of the tests' own: EAB, nonce rejection, alternate chains ---------------------------


@pytest.fixture(scope="module")
def eab_pebble(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtraPebble]:
    with extra_pebble(tmp_path_factory.mktemp("pebble-eab"), testbed, "127.0.0.16", eab=True) as p:
        yield p


@pytest.fixture(scope="module")
def flaky_pebble(
    testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExtraPebble]:
    """Rejects half of all nonces, offers two alternate chains, reuses valid authorizations."""
    workdir = tmp_path_factory.mktemp("pebble-nonce")
    with extra_pebble(
        workdir, testbed, "127.0.0.17", nonce_reject=50, alternate_roots=2, authz_reuse=100
    ) as pebble:
        yield pebble


def _pebble_config(tmp_path: Path, testbed: Testbed, pebble: ExtraPebble, **acme: object) -> Config:
    return write_config(
        tmp_path,
        testbed,
        domains=(unique_name(),),
        acme={"directory": pebble.directory, "ca_bundle": str(pebble.api_ca), **acme},
        eab=(pebble.eab[0], _eab_file(tmp_path, pebble.eab[1])) if pebble.eab else None,
    )


def _eab_file(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "eab.key"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def test_external_account_binding_registers_and_issues(
    testbed: Testbed, tmp_path: Path, eab_pebble: ExtraPebble
) -> None:
    config = _pebble_config(tmp_path, testbed, eab_pebble)
    issued, _ = _issue(config)
    verify_chain(issued.fullchain_pem, eab_pebble.roots(), config.certificate("mx").domains[0])


def test_missing_external_account_binding_is_a_clear_error(
    testbed: Testbed, tmp_path: Path, eab_pebble: ExtraPebble
) -> None:
    config = write_config(
        tmp_path,
        testbed,
        domains=(unique_name(),),
        acme={"directory": eab_pebble.directory, "ca_bundle": str(eab_pebble.api_ca)},
    )
    with pytest.raises(AcmeError) as caught:
        _issue(config)
    assert "[acme.eab]" in str(caught.value) and eab_pebble.directory in str(caught.value)


def test_wrong_eab_key_is_refused_without_revealing_it(
    testbed: Testbed, tmp_path: Path, eab_pebble: ExtraPebble
) -> None:
    assert eab_pebble.eab is not None
    wrong = "A" * 64
    config = write_config(
        tmp_path,
        testbed,
        domains=(unique_name(),),
        acme={"directory": eab_pebble.directory, "ca_bundle": str(eab_pebble.api_ca)},
        eab=(eab_pebble.eab[0], _eab_file(tmp_path, wrong)),
    )
    with pytest.raises(AcmeError) as caught:
        _issue(config)
    assert "account registration with EAB kid 'certman-kid'" in str(caught.value)
    assert wrong not in str(caught.value) and eab_pebble.eab[1] not in str(caught.value)


def test_issuance_succeeds_while_half_of_all_nonces_are_rejected(
    testbed: Testbed, tmp_path: Path, flaky_pebble: ExtraPebble, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certman.acme import client

    rejected: list[str] = []
    classify = client.classify

    def counting(exc: BaseException) -> client.Transient | None:
        kind = classify(exc)
        if kind is client.Transient.NONCE:
            rejected.append(str(exc))
        return kind

    monkeypatch.setattr(client, "classify", counting)
    timings = []
    for round_ in range(3):
        config = _pebble_config(tmp_path / str(round_), testbed, flaky_pebble)
        issued, seconds = _issue(config)
        name = config.certificate("mx").domains[0]
        verify_chain(issued.fullchain_pem, flaky_pebble.roots(), name)
        timings.append(seconds)
    print(f"\nissuance with 50% nonce rejection: {', '.join(f'{t:.2f}' for t in timings)} s")
    print(f"badNonce answers retried: {len(rejected)}")
    # Three issuances make dozens of signed requests: with half the nonces rejected, the retries
    # must have happened (and succeeded), or the test would not be testing what it says.
    assert len(rejected) >= 5, rejected


def test_preferred_chain_is_picked_among_alternates(
    testbed: Testbed, tmp_path: Path, flaky_pebble: ExtraPebble
) -> None:
    roots = [x509.load_pem_x509_certificate(r) for r in flaky_pebble.roots()]
    assert len(roots) == 3
    wanted = roots[2].subject.rfc4514_string().removeprefix("CN=")
    config = _pebble_config(tmp_path, testbed, flaky_pebble, preferred_chain=wanted)
    issued, _ = _issue(config)
    chain = x509.load_pem_x509_certificates(issued.fullchain_pem)
    assert chain[-1].issuer == roots[2].subject
    verify_chain(
        issued.fullchain_pem,
        [roots[2].public_bytes(serialization.Encoding.PEM)],
        config.certificate("mx").domains[0],
    )


def test_valid_authorizations_are_not_challenged_again(
    testbed: Testbed, tmp_path: Path, flaky_pebble: ExtraPebble
) -> None:
    config = _pebble_config(tmp_path, testbed, flaky_pebble)
    first: list[str] = []
    _issue(config, first)
    assert any(m.startswith("dns-01:") for m in first)
    again: list[str] = []
    issued, _ = _issue(config, again)  # same account, same name: Pebble reuses the authorization
    assert not any(m.startswith("dns-01:") for m in again)
    assert _sans(issued.leaf) == list(config.certificate("mx").domains)
