"""certman.dane.tlsa: record data from keys and certificates, matched against chains."""

from __future__ import annotations

import pytest
from certgen import fixed_ec_key, issue, make_pki
from cryptography import x509

from certman.config.schema import TlsaParams
from certman.dane.tlsa import (
    format_zone,
    key_rdata,
    matches,
    parse_rdata,
    tlsa_rdata,
    unmatched_combinations,
)
from certman.dns.provider import RRset
from certman.errors import CertmanError
from certman.model import KeyType

# Computed independently with: openssl pkey -pubout -outform DER | openssl dgst -sha256 / -sha512
FIXED_SPKI_SHA256 = "2a22a91fd74ac9b9f4b2c1fb92f110969b008d8a304e13442cacfa1599d21069"
FIXED_SPKI_SHA512 = (
    "ed317568df1a47914064030cb050fde0e0db68b5c5475df26188a08af3028a9e"
    "3c2be8419a8176760362f6505e6b9ff8259ce45ef6a6a94137a45e5b2fbc60fb"
)
FIXED_SPKI_DER = (
    "3059301306072a8648ce3d020106082a8648ce3d030107034200049fad84aeae08bbef7f010014d82cef6a"
    "09de2b0cf871b5ce0c4f1d13a59a593407cb45769f1070e2c2470fe5b1bfe63133c0b0cdc64ea4bf3791a8"
    "ec2a07fd4f"
)
# Self-signed with the fixed key by ``openssl req -x509``; its DER SHA-256 from openssl dgst.
FIXED_CERT_PEM = b"""-----BEGIN CERTIFICATE-----
MIIBhjCCAS2gAwIBAgIUXbu2gwII+jg0xdWgf5MYE/vDkOkwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNbXgxLmRhbmUudGVzdDAgFw0yNjExMjQxOTAwMzRaGA8yMTI2
MTAzMTE5MDAzNFowGDEWMBQGA1UEAwwNbXgxLmRhbmUudGVzdDBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABJ+thK6uCLvvfwEAFNgs72oJ3isM+HG1zgxPHROlmlk0
B8tFdp8QcOLCRw/lsb/mMTPAsM3GTqS/N5Go7CoH/U+jUzBRMB0GA1UdDgQWBBS9
sve7Qypy3KUKJlA6C/bgtE1NBDAfBgNVHSMEGDAWgBS9sve7Qypy3KUKJlA6C/bg
tE1NBDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCICO5qoftH8nz
0Oi3QjqBUgqPfU8UrZ6T54qx2u6RD9bhAiA5A+tw6EoFie8h+MvbwoXmLMw4in0f
Za7d7GbZlVVOXA==
-----END CERTIFICATE-----
"""
FIXED_CERT_SHA256 = "77b298de421214a866bf15de9241ab3a74359d7848b4cf246b9904c3a0756993"

P311 = TlsaParams(3, 1, 1)
P312 = TlsaParams(3, 1, 2)
P211 = TlsaParams(2, 1, 1)


def fixed_cert() -> x509.Certificate:
    return x509.load_pem_x509_certificate(FIXED_CERT_PEM)


def test_key_rdata_3_1_1_is_sha256_of_the_spki() -> None:
    assert key_rdata(P311, fixed_ec_key().public_key()) == f"3 1 1 {FIXED_SPKI_SHA256}"


def test_key_rdata_3_1_2_is_sha512_of_the_spki() -> None:
    assert key_rdata(P312, fixed_ec_key().public_key()) == f"3 1 2 {FIXED_SPKI_SHA512}"


def test_key_rdata_matching_type_0_is_the_spki_itself() -> None:
    rdata = key_rdata(TlsaParams(3, 1, 0), fixed_ec_key().public_key())
    assert rdata == f"3 1 0 {FIXED_SPKI_DER}"


def test_key_rdata_refuses_selector_0_without_a_certificate() -> None:
    with pytest.raises(CertmanError, match="selector 1"):
        key_rdata(TlsaParams(3, 0, 1), fixed_ec_key().public_key())


def test_tlsa_rdata_of_a_certificate_with_selector_1_equals_the_key_record() -> None:
    assert tlsa_rdata(P311, fixed_cert()) == f"3 1 1 {FIXED_SPKI_SHA256}"


def test_tlsa_rdata_selector_0_hashes_the_whole_der_certificate() -> None:
    assert tlsa_rdata(TlsaParams(3, 0, 1), fixed_cert()) == f"3 0 1 {FIXED_CERT_SHA256}"


def test_parse_rdata_accepts_hex_split_by_blanks_as_dnspython_prints_it() -> None:
    record = parse_rdata(f"3 1 1 {FIXED_SPKI_SHA256[:20]} {FIXED_SPKI_SHA256[20:]}")
    assert record.params == P311
    assert record.data.hex() == FIXED_SPKI_SHA256


@pytest.mark.parametrize("text", ["3 1 1", "3 1 x ab", "3 1 1 zz", "300 1 1 ab"])
def test_parse_rdata_rejects_malformed_records_naming_them(text: str) -> None:
    with pytest.raises(CertmanError, match="TLSA record"):
        parse_rdata(text)


def test_dane_ee_record_matches_the_leaf_only() -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.dane.test")
    chain = [leaf.cert, pki.intermediate.cert]
    assert matches(tlsa_rdata(P311, leaf.cert), chain)
    assert not matches(tlsa_rdata(P311, pki.intermediate.cert), chain)


def test_dane_ta_record_matches_an_issuer_but_not_the_leaf() -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.dane.test")
    chain = [leaf.cert, pki.intermediate.cert]
    assert matches(tlsa_rdata(P211, pki.intermediate.cert), chain)
    assert not matches(tlsa_rdata(P211, leaf.cert), chain)


def test_dane_ta_record_needs_the_trust_anchor_in_the_presented_chain() -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.dane.test")
    assert not matches(tlsa_rdata(P211, pki.intermediate.cert), [leaf.cert])


def test_dane_ta_record_needs_the_chain_to_link_up_to_the_anchor() -> None:
    pki, other = make_pki(), make_pki("Other")
    leaf = other.leaf("mx1.dane.test")  # not issued by pki.intermediate
    assert not matches(tlsa_rdata(P211, pki.intermediate.cert), [leaf.cert, pki.intermediate.cert])


def test_dane_ta_record_for_the_root_matches_a_chain_that_includes_it() -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.dane.test")
    chain = [leaf.cert, pki.intermediate.cert, pki.root.cert]
    assert matches(tlsa_rdata(P211, pki.root.cert), chain)


def test_pkix_usages_never_match_because_smtp_clients_ignore_them() -> None:
    leaf = issue("mx1.dane.test")
    rdata = tlsa_rdata(TlsaParams(1, 1, 1), leaf.cert)
    assert not matches(rdata, [leaf.cert])


def test_every_combination_matching_on_its_own_leaves_nothing_unmatched() -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.dane.test")
    chain = [leaf.cert, pki.intermediate.cert]
    rdatas = [
        tlsa_rdata(P311, leaf.cert),
        key_rdata(P311, issue("next").key.public_key()),  # the next key: matches nothing yet
        tlsa_rdata(P211, pki.intermediate.cert),
    ]
    assert unmatched_combinations(rdatas, chain) == []


def test_a_combination_whose_records_all_miss_is_reported() -> None:
    pki = make_pki()
    leaf = pki.leaf("mx1.dane.test")
    chain = [leaf.cert, pki.intermediate.cert]
    stale_issuer = make_pki("Old").intermediate.cert
    rdatas = [tlsa_rdata(P311, leaf.cert), tlsa_rdata(P211, stale_issuer)]
    assert unmatched_combinations(rdatas, chain) == [P211]


def test_unusable_pkix_records_are_not_counted_as_unmatched() -> None:
    leaf = issue("mx1.dane.test")
    rdatas = [tlsa_rdata(P311, leaf.cert), f"1 1 1 {'00' * 32}"]
    assert unmatched_combinations(rdatas, [leaf.cert]) == []


def test_format_zone_prints_sorted_zone_file_lines() -> None:
    key = fixed_ec_key().public_key()
    rrsets = [
        RRset.of("_25._tcp.mx2.dane.test", "TLSA", 300, [key_rdata(P311, key)]),
        RRset.of(
            "_25._tcp.mx1.dane.test.", "TLSA", 300, [key_rdata(P312, key), key_rdata(P311, key)]
        ),
    ]
    assert format_zone(rrsets) == (
        f"_25._tcp.mx1.dane.test. 300 IN TLSA 3 1 1 {FIXED_SPKI_SHA256}\n"
        f"_25._tcp.mx1.dane.test. 300 IN TLSA 3 1 2 {FIXED_SPKI_SHA512}\n"
        f"_25._tcp.mx2.dane.test. 300 IN TLSA 3 1 1 {FIXED_SPKI_SHA256}\n"
    )


def test_rsa_leaf_records_differ_from_ecdsa_ones() -> None:
    pki = make_pki()
    rsa_leaf = pki.leaf("mx1.dane.test", KeyType.RSA2048)
    ec_leaf = pki.leaf("mx1.dane.test")
    assert not matches(tlsa_rdata(P311, rsa_leaf.cert), [ec_leaf.cert])
    assert matches(tlsa_rdata(P311, rsa_leaf.cert), [rsa_leaf.cert])
