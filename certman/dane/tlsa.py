"""Pure TLSA helpers: key or certificate -> record data, and record data vs. a presented chain.

RFC 6698 §2.1 defines the fields: usage (0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE), selector
(0 full certificate, 1 SubjectPublicKeyInfo) and matching type (0 exact, 1 SHA-256, 2 SHA-512).
RFC 7672 §3.1.3: SMTP clients treat usages 0 and 1 as unusable, so only 2 and 3 count here.
RFC 7671 §8: every (usage, selector, matching type) combination in an RRset must match the live
chain on its own, because a client may support only some of the combinations.

The rollover engine builds the RRset of each phase from ``key_rdata`` / ``tlsa_rdata``; this module
only knows single records and chains.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from certman.config.schema import TlsaParams
from certman.errors import CertmanError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

    from certman.dns.provider import RRset

DANE_TA = 2
DANE_EE = 3
USABLE_USAGES = frozenset({DANE_TA, DANE_EE})  # RFC 7672 §3.1.3


@dataclass(frozen=True)
class TlsaRecord:
    """One parsed TLSA rdata: its combination and the association data (raw bytes)."""

    params: TlsaParams
    data: bytes

    def __str__(self) -> str:
        return f"{self.params} {self.data.hex()}"


def parse_rdata(text: str) -> TlsaRecord:
    """``"3 1 1 ab12..."`` (presentation form; the hex may be split by blanks) -> TlsaRecord."""
    fields = text.split()
    try:
        usage, selector, mtype = (int(f) for f in fields[:3])
        data = bytes.fromhex("".join(fields[3:]))
    except ValueError:
        raise CertmanError(f"TLSA record {text!r}: expected 'USAGE SELECTOR MTYPE HEX'") from None
    if len(fields) < 4 or not all(0 <= v <= 255 for v in (usage, selector, mtype)):
        raise CertmanError(f"TLSA record {text!r}: expected 'USAGE SELECTOR MTYPE HEX'")
    return TlsaRecord(TlsaParams(usage, selector, mtype), data)


def _digest(mtype: int, data: bytes) -> bytes:
    if mtype == 0:
        return data
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    raise CertmanError(f"TLSA matching type {mtype} is not one of 0, 1, 2 (RFC 6698 §2.1.3)")


def _spki(public_key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _selected(selector: int, cert: x509.Certificate) -> bytes:
    """RFC 6698 §2.1.2: selector 0 is the whole DER certificate, 1 its SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    if selector == 1:
        return _spki(cert.public_key())
    raise CertmanError(f"TLSA selector {selector} is not 0 or 1 (RFC 6698 §2.1.2)")


def tlsa_rdata(params: TlsaParams, cert: x509.Certificate) -> str:
    """The record ``params`` makes of ``cert``, e.g. ``"3 1 1 <sha256 of its SPKI>"``.

    For usage 2 pass the issuer (trust anchor) certificate, for usage 3 the leaf.
    """
    data = _digest(params.mtype, _selected(params.selector, cert))
    return f"{params} {data.hex()}"


def key_rdata(params: TlsaParams, public_key: PublicKeyTypes) -> str:
    """The record for a bare public key (a *next* key has no certificate yet): selector 1 only."""
    if params.selector != 1:
        raise CertmanError(f"TLSA {params}: a record from a key alone needs selector 1 (SPKI)")
    return f"{params} {_digest(params.mtype, _spki(public_key)).hex()}"


def _record_matches_cert(record: TlsaRecord, cert: x509.Certificate) -> bool:
    try:
        return _digest(record.params.mtype, _selected(record.params.selector, cert)) == record.data
    except CertmanError:
        return False  # unknown selector / matching type: unusable, matches nothing (RFC 6698 §4.1)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def record_matches(record: TlsaRecord, chain: Sequence[x509.Certificate]) -> bool:
    """Does ``chain`` (leaf first, as presented) satisfy this one record?

    DANE-EE (3): the leaf matches (RFC 7671 §5.1). DANE-TA (2): some certificate after the leaf
    matches and the presented certificates from the leaf up to it are each issued by the next
    (RFC 7671 §5.2; a trust anchor absent from the chain, possible only with 2 0 0, is not
    supported). Usages 0 and 1 never match: SMTP clients ignore them (RFC 7672 §3.1.3).
    """
    if not chain:
        return False
    usage = record.params.usage
    if usage == DANE_EE:
        return _record_matches_cert(record, chain[0])
    if usage != DANE_TA:
        return False
    for index in range(1, len(chain)):
        if not _issued_by(chain[index - 1], chain[index]):
            return False
        if _record_matches_cert(record, chain[index]):
            return True
    return False


def matches(rdata: str, chain: Sequence[x509.Certificate]) -> bool:
    """``record_matches`` for a record in presentation form."""
    return record_matches(parse_rdata(rdata), chain)


def unmatched_combinations(
    rdatas: Iterable[str], chain: Sequence[x509.Certificate]
) -> list[TlsaParams]:
    """The usable combinations of the RRset with no record matching ``chain`` (RFC 7671 §8).

    Empty means every client, whichever combinations it supports, finds a matching record.
    """
    by_params: dict[TlsaParams, bool] = {}
    for text in rdatas:
        record = parse_rdata(text)
        if record.params.usage not in USABLE_USAGES:
            continue
        hit = record_matches(record, chain)
        by_params[record.params] = by_params.get(record.params, False) or hit
    return sorted(
        (p for p, hit in by_params.items() if not hit), key=lambda p: (p.usage, p.selector, p.mtype)
    )


def usable_records(rdatas: Iterable[str]) -> list[TlsaRecord]:
    """The records an SMTP client would use (usages 2 and 3, RFC 7672 §3.1.3)."""
    return [r for r in map(parse_rdata, rdatas) if r.params.usage in USABLE_USAGES]


def format_zone(rrsets: Iterable[RRset]) -> str:
    """Zone-file lines for ``certman tlsa NAME``: one line per record, sorted, ``\\n``-ended."""
    lines: list[str] = []
    for rrset in sorted(rrsets, key=lambda r: (r.name, r.rdtype)):
        lines.extend(rrset.to_zone_lines())
    return "".join(line + "\n" for line in lines)
