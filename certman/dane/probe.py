"""Live verification: what does the server present, and does it match the validated TLSA RRset?

``fetch_chain`` speaks SMTP up to STARTTLS (RFC 3207: greeting, EHLO, STARTTLS, then the TLS
handshake) or implicit TLS on port 465 (RFC 8314), and returns the chain as presented. It checks
nothing: DANE clients do not use the Web PKI (RFC 7672 §3.1), so verification is off and the
comparison is ours. ``check_chain`` is that comparison, pure: the leaf carries the key just
installed, and the chain satisfies the RRset as every DANE client would need it to (RFC 7671 §8:
each (usage, selector, matching type) combination present must match on its own).

A dual RSA + ECDSA server presents one chain per handshake, chosen by the client's offer. Python
3.11's ssl module cannot restrict signature algorithms, so a probe for one key type offers only
TLS 1.2 ciphers with that authentication (``aRSA`` / ``aECDSA``); without a key type the probe
negotiates like any client (TLS 1.3 where possible).
"""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from certman.config.schema import CertificateConfig
from certman.dane.tlsa import DANE_TA, record_matches, unmatched_combinations, usable_records
from certman.errors import CertmanError, DnsError, PostfixError
from certman.model import KeyType

if TYPE_CHECKING:
    from cryptography import x509

    from certman.dns.provider import RRset

IMPLICIT_TLS_PORTS = frozenset({465})  # RFC 8314 submissions
EHLO_NAME = "certman.invalid"  # RFC 6761: never a real host; Postfix accepts it in EHLO

Fetch = Callable[..., "list[x509.Certificate]"]
Lookup = Callable[[str, str, Sequence[str]], "RRset | None"]


@dataclass(frozen=True)
class VerifyResult:
    """One endpoint's verdict; ``detail`` is one line naming the endpoint and what (mis)matched."""

    ok: bool
    detail: str


def _label(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class _Smtp:
    """Just enough SMTP client for STARTTLS: multi-line replies, no buffering past a reply."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock = sock
        self.where = where
        self.buffer = b""

    def reply(self, stage: str) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            while b"\n" not in self.buffer:
                try:
                    data = self.sock.recv(4096)
                except TimeoutError:
                    raise PostfixError(f"{self.where}: timed out waiting for the {stage}") from None
                if not data:
                    raise PostfixError(f"{self.where}: connection closed during the SMTP dialog")
                self.buffer += data
            raw, self.buffer = self.buffer.split(b"\n", 1)
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            lines.append(line[4:])
            if len(line) < 4 or line[3] != "-":
                try:
                    return int(line[:3]), lines
                except ValueError:
                    raise PostfixError(f"{self.where}: not an SMTP reply: {line[:60]!r}") from None

    def command(self, text: str, expect: int) -> list[str]:
        self.sock.sendall(text.encode() + b"\r\n")
        code, lines = self.reply(f"reply to {text.split(maxsplit=1)[0]}")
        if code != expect:
            raise PostfixError(f"{self.where}: {text} answered {code} {' '.join(lines)[:80]}")
        return lines


def _starttls(sock: socket.socket, where: str) -> None:
    smtp = _Smtp(sock, where)
    code, greeting = smtp.reply("SMTP greeting")
    if code != 220:
        raise PostfixError(f"{where}: greeting {code} {' '.join(greeting)[:80]}")
    extensions = smtp.command(f"EHLO {EHLO_NAME}", 250)
    if not any(line.upper().split()[:1] == ["STARTTLS"] for line in extensions[1:]):
        raise PostfixError(f"{where}: the server does not offer STARTTLS")
    smtp.command("STARTTLS", 220)
    if smtp.buffer:  # RFC 3207 §4.2: nothing may follow the 220 before the handshake
        raise PostfixError(f"{where}: data after the STARTTLS reply (command injection?)")


def _context(key_type: KeyType | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # DANE replaces PKIX here (RFC 7672 §3.1)
    if key_type is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("aRSA" if key_type.is_rsa else "aECDSA")
    return context


def _presented_der(tls: ssl.SSLSocket) -> list[bytes]:
    """The peer's chain as sent, leaf first: public in Python 3.13, ``_sslobj``'s before."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return [bytes(c) for c in public()]
    private = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    if private is not None:  # CPython 3.10-3.12: _ssl.Certificate, PEM by default
        return [ssl.PEM_cert_to_DER_cert(c.public_bytes()) for c in private() or []]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def fetch_chain(
    address: str,
    port: int,
    *,
    timeout: float,
    key_type: KeyType | None = None,
    server_name: str | None = None,
    implicit_tls: bool | None = None,
) -> list[x509.Certificate]:
    """Connect, STARTTLS (implicit TLS on 465), and return the presented chain, leaf first.

    ``implicit_tls`` overrides the choice by port (None: implicit on 465 only).

    ``server_name`` is sent as SNI (RFC 7672 §8.1: DANE clients send the TLSA base domain), so a
    Postfix with ``tls_server_sni_maps`` shows the certificate a real sender would get.
    """
    from cryptography import x509

    where = _label(address, port) + (f" ({key_type})" if key_type else "")
    stage = "connect"
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            if not (port in IMPLICIT_TLS_PORTS if implicit_tls is None else implicit_tls):
                stage = "SMTP dialog"
                _starttls(sock, where)
            stage = "TLS handshake"
            with _context(key_type).wrap_socket(sock, server_hostname=server_name) as tls:
                ders = _presented_der(tls)
    except ssl.SSLError as exc:
        raise PostfixError(f"{where}: TLS handshake failed: {exc.reason or exc}") from None
    except OSError as exc:
        raise PostfixError(f"{where}: {stage}: {exc.strerror or exc}") from None
    if not ders:
        raise PostfixError(f"{where}: the server presented no certificate")
    return [x509.load_der_x509_certificate(der) for der in ders]


# --- the comparison ---------------------------------------------------------------------------


def _names(cert: x509.Certificate) -> list[str]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:  # RFC 7672 §3.2.3: the CN only when there is no DNS SAN
        return [
            str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]


def names_host(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 §6.4: exact name, or ``*.`` standing for exactly the leftmost label."""
    host = host.lower().rstrip(".")
    for name in _names(cert):
        if name == host or (name.startswith("*.") and host.split(".", 1)[-1] == name[2:]):
            return True
    return False


def check_chain(
    where: str,
    host: str,
    chain: Sequence[x509.Certificate],
    *,
    tlsa: RRset | None,
    expected_spki_sha256: str | None,
    now: datetime.datetime,
) -> VerifyResult:
    """Pure: does the presented ``chain`` carry the expected key and satisfy ``tlsa``?"""
    from certman.keys import cert_spki_sha256

    if not chain:
        return VerifyResult(False, f"{where}: no certificate presented")
    leaf_key = cert_spki_sha256(chain[0])
    if expected_spki_sha256 is not None and leaf_key != expected_spki_sha256.lower():
        return VerifyResult(
            False,
            f"{where}: leaf key {leaf_key[:16]}... is not the installed key "
            f"{expected_spki_sha256[:16]}...",
        )
    if tlsa is None:
        return VerifyResult(False, f"{where}: no DNSSEC-validated TLSA RRset published")
    records = usable_records(tlsa.rdatas)
    hits = [r for r in records if record_matches(r, chain)]
    if not hits:
        return VerifyResult(
            False,
            f"{where}: chain (leaf key {leaf_key[:16]}...) matches none of the "
            f"{len(records)} usable TLSA records at {tlsa.name}",
        )
    missing = unmatched_combinations(tlsa.rdatas, chain)
    if missing:
        combos = ", ".join(str(p) for p in missing)
        return VerifyResult(
            False,
            f"{where}: no {combos} record at {tlsa.name} matches the chain; clients "
            "that use only that combination fail (RFC 7671 §8)",
        )
    if any(r.params.usage == DANE_TA for r in records):
        problem = _dane_ta_problem(chain[0], host, now)
        if problem:
            return VerifyResult(False, f"{where}: {problem} (needed for DANE-TA records)")
    matched = ", ".join(sorted({str(r.params) for r in hits}))
    return VerifyResult(True, f"{where}: leaf key {leaf_key[:16]}... matches TLSA {matched}")


def _dane_ta_problem(leaf: x509.Certificate, host: str, now: datetime.datetime) -> str | None:
    """RFC 7672 §3.2.2-3.2.3: with DANE-TA the leaf's name and validity are checked too."""
    if not names_host(leaf, host):
        return f"leaf does not name {host}"
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return f"leaf is not valid now (until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z)"
    return None


def verify_endpoint(
    host: str,
    port: int,
    *,
    address: str,
    expected_spki_sha256: str | None,
    tlsa: RRset | None,
    timeout: float,
    key_type: KeyType | None = None,
    fetch: Fetch = fetch_chain,
    now: datetime.datetime | None = None,
    attempts: int = 2,
) -> VerifyResult:
    """Fetch ``host``'s chain from ``address``:``port`` and ``check_chain`` it; never raises
    for a server problem (the result says what went wrong).

    A failed connection or handshake is tried again (``attempts`` in all, at once: each try is
    a new connection, usually served by another smtpd process); a chain that does not match
    is never retried. On the testbed, rarely and only while other test sessions loaded the
    machine, a fresh smtpd did not greet within 5 s after a reload.
    """
    where = f"{host} port {port} via {_label(address, port)}" + (
        f" ({key_type})" if key_type else ""
    )
    for attempt in range(1, attempts + 1):
        try:
            chain = fetch(address, port, timeout=timeout, key_type=key_type, server_name=host)
            break
        except CertmanError as exc:
            if attempt == attempts:
                return VerifyResult(False, f"{where}: {exc}")
    when = now or datetime.datetime.now(datetime.UTC)
    return check_chain(
        where, host, chain, tlsa=tlsa, expected_spki_sha256=expected_spki_sha256, now=when
    )


def _expected_for(
    kind: KeyType | None, cert: CertificateConfig, expected: Mapping[KeyType, str]
) -> str | None:
    """The SPKI digest to demand of a probe; with one key, the one expected whatever its type
    (an adopted key need not be of the configured type)."""
    if kind is not None:
        return expected.get(kind)
    if len(expected) == 1:
        return next(iter(expected.values()))
    return expected.get(cert.key_types[0])


def verify_live(
    cert: CertificateConfig,
    *,
    resolvers: Sequence[str],
    expected: Mapping[KeyType, str],
    timeout: float = 10.0,
    lookup: Lookup | None = None,
    fetch: Fetch = fetch_chain,
) -> list[VerifyResult]:
    """Every DANE host x port x key type of ``cert``, against the validated TLSA RRsets.

    ``expected`` maps each key type to the SPKI SHA-256 that must be live (the key just
    installed). ``lookup`` defaults to ``certman.propagation.validated_rrset`` (AD bit required;
    a DnsError there becomes a failed result for that name, since senders cannot validate it).
    """
    if cert.dane is None:
        return []
    if lookup is None:
        from certman.dns.propagation import validated_rrset

        lookup = validated_rrset
    kinds: list[KeyType | None] = list(cert.key_types) if len(cert.key_types) > 1 else [None]
    results: list[VerifyResult] = []
    for host in cert.dane.hosts:
        for port in cert.dane.ports:
            name = f"_{port}._tcp.{host}"
            try:
                rrset = lookup(name, "TLSA", resolvers)
            except DnsError as exc:
                results.append(VerifyResult(False, f"{host} port {port}: TLSA lookup: {exc}"))
                continue
            for kind in kinds:
                want = _expected_for(kind, cert, expected)
                results.append(
                    verify_endpoint(
                        host,
                        port,
                        address=cert.dane.probe_address,
                        expected_spki_sha256=want,
                        tlsa=rrset,
                        timeout=timeout,
                        key_type=kind,
                        fetch=fetch,
                    )
                )
    return results
