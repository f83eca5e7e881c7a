"""certman.dane.probe: the SMTP/STARTTLS client against a local server, and the pure chain check."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from certgen import Issued, certificate_config, issue, make_pki
from cryptography import x509

from certman.config.schema import DaneConfig, TlsaParams
from certman.dane.probe import check_chain, fetch_chain, names_host, verify_endpoint, verify_live
from certman.dane.tlsa import key_rdata, tlsa_rdata
from certman.dns.provider import RRset
from certman.errors import DnsError, PostfixError
from certman.keys import cert_spki_sha256
from certman.model import KeyType

P311 = TlsaParams(3, 1, 1)
P211 = TlsaParams(2, 1, 1)
NOW = datetime.datetime.now(datetime.UTC)
HOST = "mx1.dane.test"

EHLO_WITH_STARTTLS = b"250-mx1.dane.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"


@dataclass
class SmtpServer:
    """A one-thread SMTP server on 127.0.0.1: greeting, EHLO, STARTTLS, then a TLS handshake."""

    context: ssl.SSLContext
    implicit: bool = False
    ehlo_reply: bytes = EHLO_WITH_STARTTLS
    after_starttls: bytes = b""
    sni: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)  # so that close() ends the accept loop promptly
        self.port = self.listener.getsockname()[1]
        self.context.sni_callback = self._sni
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.stop = False
        self.thread.start()

    def _sni(self, _sock: Any, name: str | None, _ctx: Any) -> None:
        self.sni.append(name)

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError, ssl.SSLError):
                    self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        if not self.implicit:
            conn.sendall(b"220-mx1.dane.test ESMTP\r\n220 ready\r\n")
            assert conn.recv(1024).startswith(b"EHLO ")
            conn.sendall(self.ehlo_reply)
            if b"STARTTLS" not in self.ehlo_reply:
                return
            assert conn.recv(1024) == b"STARTTLS\r\n"
            conn.sendall(b"220 2.0.0 Ready to start TLS\r\n" + self.after_starttls)
        with self.context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)  # until the client closes

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)
        self.listener.close()


def server_context(tmp_path: Path, *pairs: tuple[Issued, bytes]) -> ssl.SSLContext:
    """A server context holding one (key, chain) per key type, as Postfix would."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for index, (leaf, chain_pem) in enumerate(pairs):
        path = tmp_path / f"server-{index}.pem"
        path.write_bytes(leaf.key_pem + chain_pem)
        context.load_cert_chain(path)
    return context


@pytest.fixture
def dual(tmp_path: Path) -> Iterator[tuple[SmtpServer, Issued, Issued, list[x509.Certificate]]]:
    pki = make_pki()
    rsa, ec = pki.leaf(HOST, KeyType.RSA2048), pki.leaf(HOST)
    context = server_context(tmp_path, (rsa, pki.fullchain_pem(rsa)), (ec, pki.fullchain_pem(ec)))
    server = SmtpServer(context)
    yield server, rsa, ec, [pki.intermediate.cert]
    server.close()


def test_starttls_fetch_returns_the_whole_presented_chain(dual: Any) -> None:
    server, _, ec, issuers = dual
    chain = fetch_chain("127.0.0.1", server.port, timeout=5, key_type=KeyType.ECDSA_P256)
    assert chain == [ec.cert, *issuers]


def test_each_key_type_of_a_dual_server_is_fetched_separately(dual: Any) -> None:
    server, rsa, ec, _ = dual
    got_rsa = fetch_chain("127.0.0.1", server.port, timeout=5, key_type=KeyType.RSA2048)
    got_ec = fetch_chain("127.0.0.1", server.port, timeout=5, key_type=KeyType.ECDSA_P384)
    assert (got_rsa[0], got_ec[0]) == (rsa.cert, ec.cert)


def test_the_host_name_is_sent_as_sni(dual: Any) -> None:
    server = dual[0]
    fetch_chain("127.0.0.1", server.port, timeout=5, server_name=HOST)
    assert server.sni == [HOST]


def test_implicit_tls_skips_the_smtp_dialog(tmp_path: Path) -> None:
    leaf = issue(HOST)
    server = SmtpServer(server_context(tmp_path, (leaf, leaf.cert_pem)), implicit=True)
    try:
        assert fetch_chain("127.0.0.1", server.port, timeout=5, implicit_tls=True) == [leaf.cert]
    finally:
        server.close()


def test_a_server_without_starttls_is_named_in_the_error(tmp_path: Path) -> None:
    leaf = issue(HOST)
    context = server_context(tmp_path, (leaf, leaf.cert_pem))
    server = SmtpServer(context, ehlo_reply=b"250-mx1\r\n250 PIPELINING\r\n")
    try:
        with pytest.raises(
            PostfixError, match=rf"127\.0\.0\.1:{server.port}: .*not offer STARTTLS"
        ):
            fetch_chain("127.0.0.1", server.port, timeout=5)
    finally:
        server.close()


def test_bytes_pipelined_after_the_starttls_reply_are_refused(tmp_path: Path) -> None:
    leaf = issue(HOST)
    context = server_context(tmp_path, (leaf, leaf.cert_pem))
    server = SmtpServer(context, after_starttls=b"250 injected\r\n")
    try:
        with pytest.raises(PostfixError, match="data after the STARTTLS reply"):
            fetch_chain("127.0.0.1", server.port, timeout=5)
    finally:
        server.close()


def test_a_server_that_never_greets_times_out_naming_the_stage() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts, nobody talks
        port = silent.getsockname()[1]
        with pytest.raises(PostfixError, match=r"timed out waiting for the SMTP greeting"):
            fetch_chain("127.0.0.1", port, timeout=0.2)


def test_a_refused_connection_is_a_postfix_error_naming_the_endpoint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connection refused
        with pytest.raises(PostfixError, match=rf"127\.0\.0\.1:{port}: "):
            fetch_chain("127.0.0.1", port, timeout=2)


# --- check_chain (pure) -----------------------------------------------------------------------


def rrset(*rdatas: str) -> RRset:
    return RRset.of(f"_25._tcp.{HOST}", "TLSA", 300, rdatas)


def check(chain: Sequence[x509.Certificate], tlsa: RRset | None, expected: str | None) -> Any:
    return check_chain(
        "mx1 port 25", HOST, chain, tlsa=tlsa, expected_spki_sha256=expected, now=NOW
    )


def test_matching_leaf_and_record_is_ok_and_says_which_record_matched() -> None:
    leaf = issue(HOST)
    result = check([leaf.cert], rrset(tlsa_rdata(P311, leaf.cert)), cert_spki_sha256(leaf.cert))
    assert result.ok
    assert result.detail.startswith("mx1 port 25: leaf key ") and "TLSA 3 1 1" in result.detail


def test_a_leaf_with_another_key_than_the_installed_one_fails() -> None:
    served, installed = issue(HOST), issue(HOST)
    result = check(
        [served.cert], rrset(tlsa_rdata(P311, served.cert)), cert_spki_sha256(installed.cert)
    )
    assert not result.ok and "is not the installed key" in result.detail


def test_no_validated_rrset_fails() -> None:
    leaf = issue(HOST)
    result = check([leaf.cert], None, None)
    assert not result.ok and "no DNSSEC-validated TLSA RRset" in result.detail


def test_a_chain_matching_no_record_fails_naming_the_rrset() -> None:
    leaf = issue(HOST)
    result = check([leaf.cert], rrset(key_rdata(P311, issue("x").key.public_key())), None)
    assert not result.ok
    assert f"matches none of the 1 usable TLSA records at _25._tcp.{HOST}" in result.detail


def test_an_unmatched_combination_fails_even_when_another_matches() -> None:
    pki = make_pki()
    leaf = pki.leaf(HOST)
    stale = make_pki("Old").intermediate.cert
    tlsa = rrset(tlsa_rdata(P311, leaf.cert), tlsa_rdata(P211, stale))
    result = check([leaf.cert, pki.intermediate.cert], tlsa, None)
    assert not result.ok and "no 2 1 1 record" in result.detail and "RFC 7671" in result.detail


def test_dane_ta_needs_the_leaf_to_name_the_host() -> None:
    pki = make_pki()
    leaf = pki.leaf("other.dane.test")
    tlsa = rrset(tlsa_rdata(P211, pki.intermediate.cert))
    result = check([leaf.cert, pki.intermediate.cert], tlsa, None)
    assert not result.ok and f"leaf does not name {HOST}" in result.detail


def test_wildcard_names_cover_exactly_one_label() -> None:
    leaf = issue("*.dane.test", sans=("*.dane.test",))
    assert names_host(leaf.cert, "mx1.dane.test")
    assert not names_host(leaf.cert, "a.mx1.dane.test")
    assert not names_host(leaf.cert, "dane.test")


def test_verify_endpoint_retries_a_failed_connection_once() -> None:
    leaf = issue(HOST)
    calls: list[int] = []

    def flaky_fetch(*_: Any, **__: Any) -> list[x509.Certificate]:
        calls.append(1)
        if len(calls) == 1:
            raise PostfixError("127.0.0.25:25: timed out waiting for the SMTP greeting")
        return [leaf.cert]

    result = verify_endpoint(
        HOST,
        25,
        address="127.0.0.25",
        expected_spki_sha256=None,
        tlsa=rrset(tlsa_rdata(P311, leaf.cert)),
        timeout=1,
        fetch=flaky_fetch,
    )
    assert result.ok and len(calls) == 2


def test_verify_endpoint_turns_a_fetch_failure_into_a_failed_result() -> None:
    calls: list[int] = []

    def failing_fetch(*_: Any, **__: Any) -> list[x509.Certificate]:
        calls.append(1)
        raise PostfixError("127.0.0.25:25: TLS handshake failed: NO_SHARED_CIPHER")

    result = verify_endpoint(
        HOST,
        25,
        address="127.0.0.25",
        expected_spki_sha256=None,
        tlsa=None,
        timeout=1,
        key_type=KeyType.RSA2048,
        fetch=failing_fetch,
    )
    assert not result.ok and len(calls) == 2
    assert result.detail == (
        f"{HOST} port 25 via 127.0.0.25:25 (rsa2048): 127.0.0.25:25: TLS handshake failed: "
        "NO_SHARED_CIPHER"
    )


# --- verify_live with injected lookup and fetch -----------------------------------------------


def dane(hosts: tuple[str, ...], ports: tuple[int, ...]) -> DaneConfig:
    return DaneConfig(hosts, ports, (P311,), 300, 60.0, "dns", "127.0.0.25", 0)


def test_verify_live_checks_every_host_port_and_key_type(tmp_path: Path) -> None:
    pki = make_pki()
    leaves = {KeyType.RSA2048: pki.leaf(HOST, KeyType.RSA2048), KeyType.ECDSA_P256: pki.leaf(HOST)}
    cert = certificate_config(
        tmp_path, key_types=tuple(leaves), dane=dane((HOST, "mx2.dane.test"), (25, 587))
    )
    asked: list[tuple[str, int, KeyType | None, str | None]] = []

    def fetch(address: str, port: int, **kw: Any) -> list[x509.Certificate]:
        asked.append((address, port, kw["key_type"], kw["server_name"]))
        return [leaves[kw["key_type"]].cert]

    def lookup(name: str, rdtype: str, resolvers: Sequence[str]) -> RRset | None:
        assert (rdtype, list(resolvers)) == ("TLSA", ["127.0.0.53"])
        if name.startswith("_587._tcp.mx2"):
            raise DnsError(f"resolver 127.0.0.53: {name} TLSA: SERVFAIL")
        return RRset.of(
            name, "TLSA", 300, [tlsa_rdata(P311, leaf.cert) for leaf in leaves.values()]
        )

    expected = {kind: cert_spki_sha256(leaf.cert) for kind, leaf in leaves.items()}
    results = verify_live(
        cert, resolvers=["127.0.0.53"], expected=expected, lookup=lookup, fetch=fetch
    )
    assert [r.ok for r in results] == [True] * 6 + [False]
    assert "mx2.dane.test port 587: TLSA lookup: resolver 127.0.0.53" in results[-1].detail
    assert len(asked) == 6 and {a[2] for a in asked} == set(leaves)
    assert {a[3] for a in asked} == {HOST, "mx2.dane.test"} and {a[0] for a in asked} == {
        "127.0.0.25"
    }


def test_verify_live_with_one_key_type_negotiates_freely(tmp_path: Path) -> None:
    leaf = issue(HOST)
    cert = certificate_config(tmp_path, dane=dane((HOST,), (25,)))
    kinds: list[KeyType | None] = []

    def fetch(address: str, port: int, **kw: Any) -> list[x509.Certificate]:
        kinds.append(kw["key_type"])
        return [leaf.cert]

    results = verify_live(
        cert,
        resolvers=[],
        expected={KeyType.ECDSA_P256: cert_spki_sha256(issue("new").cert)},
        lookup=lambda n, t, r: RRset.of(n, t, 300, [tlsa_rdata(P311, leaf.cert)]),
        fetch=fetch,
    )
    assert kinds == [None]
    assert [r.ok for r in results] == [False] and "not the installed key" in results[0].detail


def test_verify_live_with_one_key_demands_the_expected_key_whatever_its_type(
    tmp_path: Path,
) -> None:
    adopted = issue(HOST, key_type=KeyType.RSA2048)  # configured: ecdsa-p256
    cert = certificate_config(tmp_path, dane=dane((HOST,), (25,)))
    results = verify_live(
        cert,
        resolvers=[],
        expected={KeyType.RSA2048: cert_spki_sha256(issue("other", key_type=KeyType.RSA2048).cert)},
        lookup=lambda n, t, r: RRset.of(n, t, 300, [tlsa_rdata(P311, adopted.cert)]),
        fetch=lambda *a, **kw: [adopted.cert],
    )
    assert [r.ok for r in results] == [False] and "not the installed key" in results[0].detail
