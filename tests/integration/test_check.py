"""`certman check` on the testbed: a healthy host is OK (exit 0), and each problem made on
purpose gives its exit code and its line; an unreachable resolver is UNKNOWN within the
query timeout, not one timeout per name; --timeout bounds the whole check."""

from __future__ import annotations

import datetime
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from helpers import write_config
from schemas import validate
from test_postfix_audit import HARDENED
from test_rollover_e2e import bootstrap, fresh_host, rfc2136
from testbed import Testbed

from certman.cli.main import main
from certman.config.load import load_config
from certman.config.schema import PostfixConfig
from certman.dns.propagation import validated_rrset
from certman.dns.provider import RRset
from certman.keys import load_private_key
from certman.lifecycle.statefile import CertDir
from certman.postfix.commands import Postfix

pytestmark = pytest.mark.integration

TLSA = "_25._tcp.mx1.dane.test"


def check(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--config", str(config), "check", *extra])
    return code, capsys.readouterr().out


def check_json(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code, out = check(config, capsys, "--json")
    document = json.loads(out)
    validate("check", document)
    assert document["exit_code"] == code
    return code, document


def mx1_postfix(bed: Testbed) -> Postfix:
    pf = bed.postfix["mx1"]
    return Postfix(PostfixConfig(pf.config_dir, "postconf", "postfix", None))


def publish(bed: Testbed, *rdatas: str) -> None:
    provider = rfc2136(bed)
    provider.replace(RRset(TLSA, "TLSA", 3, frozenset(rdatas)), provider.read(TLSA, "TLSA"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # until the validating resolver serves the new RRset
        bed.unbound_control("flush", TLSA)
        served = validated_rrset(TLSA, "TLSA", [bed.resolver])
        if served is not None and served.rdatas == frozenset(rdatas):
            return
        time.sleep(0.2)
    raise AssertionError(f"{TLSA}: the resolver never served {rdatas}")


@pytest.fixture
def healthy(testbed: Testbed, tmp_path: Path) -> Path:
    config = fresh_host(testbed, tmp_path)
    bootstrap(testbed, config)
    mx1_postfix(testbed).set(HARDENED)
    return config


def test_a_healthy_host_is_ok_with_perfdata_and_valid_json(
    healthy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = check(healthy, capsys)
    assert code == 0, out
    status, *details = out.splitlines()
    assert status.startswith("CERTMAN OK - ") and " | 'mx1.dane.test:25 days'=" in status
    assert any(
        line.startswith("OK: tlsa: mx1.dane.test:25: chain matches TLSA 3 1 1") for line in details
    )
    code, document = check_json(healthy, capsys)
    assert code == 0 and document["status"] == "OK"


def test_certman_failing_warns_then_turns_critical(
    healthy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(healthy)
    cdir = CertDir.of(cfg.state_dir, "mx1")
    state = cdir.load("mx1")
    now = time.time()
    cdir.save(state.evolve(last_error="CA refused", retry_after=now + 3600).note(now, "error: x"))
    code, out = check(healthy, capsys)
    assert code == 1 and "WARNING: state: mx1: backing off after: CA refused" in out
    long_ago = now - 2 * 86400
    cdir.save(
        state.evolve(
            last_error="CA refused", retry_after=now + 3600, last_success=long_ago - 60
        ).note(long_ago, "error: x")
    )
    code, out = check(healthy, capsys)
    assert code == 2 and "CRITICAL: state: mx1: backing off after: CA refused" in out
    code, document = check_json(healthy, capsys)
    assert document["status"] == "CRITICAL"


def test_tlsa_records_that_do_not_match_are_critical_and_partial_ones_warn(
    testbed: Testbed, healthy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = CertDir.of(load_config(healthy).state_dir, "mx1").load("mx1")
    current = next(iter(state.current.values())).spki_sha256
    nxt = next(iter(state.next.values())).spki_sha256
    publish(testbed, f"3 1 1 {nxt}")
    code, out = check(healthy, capsys)
    assert code == 2 and "CRITICAL: tlsa: mx1.dane.test:25: the served chain matches none" in out
    publish(testbed, f"3 1 1 {current}", f"3 1 1 {nxt}", "3 1 2 " + "ab" * 64)
    code, out = check(healthy, capsys)
    assert code == 1 and "WARNING: tlsa: mx1.dane.test:25: no 3 1 2 record matches" in out
    publish(testbed, f"3 1 1 {current}")
    code, out = check(healthy, capsys)
    assert code == 1 and f"WARNING: next-key: {TLSA}: no record for the next key" in out


def test_an_expired_certificate_or_no_starttls_is_critical(
    testbed: Testbed, healthy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(healthy)
    cdir = CertDir.of(cfg.state_dir, "mx1")
    key_info = next(iter(cdir.load("mx1").current.values()))
    key = load_private_key(cdir.key_file(key_info.id).read_bytes(), "key")
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "mx1.dane.test")])
    expired = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=90))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    chain = healthy.parent / "expired.pem"
    chain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + expired.public_bytes(serialization.Encoding.PEM)
    )
    chain.chmod(0o600)
    postfix = mx1_postfix(testbed)
    postfix.set({"smtpd_tls_chain_files": str(chain)})
    postfix.reload()
    code, out = check(healthy, capsys)
    assert code == 2 and "CRITICAL: expiry: mx1.dane.test:25: certificate expired" in out
    postfix.set({"smtpd_tls_security_level": "none"})
    postfix.reload()
    code, out = check(healthy, capsys)
    assert code == 2 and "the server does not offer STARTTLS" in out
    # TLS 1.2 and 1.3 excluded: no current client gets through, and the audit says why.
    postfix.set(
        {
            "smtpd_tls_security_level": "may",
            "smtpd_tls_protocols": "<=TLSv1.1",
            "smtpd_tls_mandatory_protocols": "<=TLSv1.1",
        }
    )
    postfix.reload()
    code, out = check(healthy, capsys)
    assert code == 2 and "CRITICAL: tls: mx1.dane.test:25: " in out
    assert "WARNING: postfix: main.cf: [no-modern-tls] smtpd_tls_protocols = <=TLSv1.1" in out


@pytest.fixture
def silent_resolver() -> Iterator[str]:
    """A UDP socket that takes every query and never answers (a dead resolver)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.99", 53))
    yield "127.0.0.99"
    sock.close()


def test_an_unreachable_resolver_is_unknown_after_one_query_timeout(
    testbed: Testbed, tmp_path: Path, silent_resolver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hosts = [f"mx{i}.dane.test" for i in range(1, 7)]
    config = write_config(testbed, tmp_path, dane_hosts=hosts)
    text = config.read_text().replace(f'["{testbed.resolver}"]', f'["{silent_resolver}"]')
    config.write_text(text.replace("[propagation]", "[propagation]\nquery_timeout = 2"))
    started = time.monotonic()
    code, out = check(config, capsys, "--no-postfix")
    elapsed = time.monotonic() - started
    assert code == 3, out
    assert out.count("UNKNOWN: tlsa: _25._tcp.mx") == 6
    assert elapsed < 4.5  # six names, concurrently: one 2 s query timeout, not 6 x 2 s
    started = time.monotonic()
    code, out = check(config, capsys, "--no-postfix", "--timeout", "1")
    assert code == 3 and "no answer within 1 s" in out
    assert time.monotonic() - started < 2.0


def test_dh_parameter_files_missing_or_weak_warn(
    testbed: Testbed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "dh2048.pem"
    config = write_config(testbed, tmp_path)
    config.write_text(
        config.read_text() + f'\n[dhparams]\nmode = "rfc7919"\n'
        f'[[dhparams.file]]\npath = "{missing}"\n'
    )
    code, out = check(config, capsys, "--no-postfix")
    # (The other items depend on what earlier tests left in DNS; this one is the DH file.)
    assert code >= 1 and f"WARNING: dhparams: dhparams: {missing}: missing" in out
    missing.write_text("not DH parameters\n")
    code, out = check(config, capsys, "--no-postfix")
    assert f"WARNING: dhparams: dhparams: {missing}" in out
