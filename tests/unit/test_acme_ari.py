"""ARI (RFC 9773) helpers and the renewal-time rules."""

from __future__ import annotations

import datetime
import random

import pytest
from certgen import fixed_ec_key, make_pki
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from certman.acme.ari import (
    ARI_DEFAULT_RECHECK,
    RenewalWindow,
    ari_cert_id,
    parse_window,
    pick_renewal_time,
    recheck_after,
    renewal_due,
    renewal_time,
)
from certman.errors import AcmeError

DAY = 86400.0
T0 = 1_700_000_000.0


def _cert(serial: int, aki: bytes | None) -> x509.Certificate:
    key = fixed_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx1.dane.test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if aki is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def test_ari_cert_id_matches_the_rfc_9773_example() -> None:
    # RFC 9773 §4.1: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4,
    # serial 0x87654321 (DER 00 87 65 43 21) -> "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE".
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert ari_cert_id(_cert(0x87654321, aki)) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_ari_cert_id_serial_without_high_bit_has_no_padding_byte() -> None:
    cert = _cert(0x1234, bytes(20))
    assert ari_cert_id(cert).split(".")[1] == "EjQ"  # 12 34


def test_ari_cert_id_agrees_with_the_acme_library() -> None:
    from acme.client import _renewal_info_path_component

    pki = make_pki()
    leaf = pki.leaf("mx1.dane.test").cert
    cert = _cert(leaf.serial_number, bytes.fromhex("00ff" * 10))
    assert ari_cert_id(cert) == _renewal_info_path_component(cert)


def test_ari_cert_id_without_authority_key_identifier_is_an_error() -> None:
    with pytest.raises(AcmeError, match="no Authority Key Identifier"):
        ari_cert_id(_cert(5, None))


def test_pick_renewal_time_is_uniform_inside_the_window() -> None:
    rng = random.Random(42)
    picks = [pick_renewal_time(T0, T0 + 1000, rng) for _ in range(2000)]
    assert all(T0 <= p <= T0 + 1000 for p in picks)
    assert min(picks) < T0 + 100 and max(picks) > T0 + 900  # spread over the whole window


def test_pick_renewal_time_of_an_empty_window_is_its_start() -> None:
    assert pick_renewal_time(T0, T0, random.Random(1)) == T0
    assert pick_renewal_time(T0, T0 - 5, random.Random(1)) == T0


def test_ninety_day_certificate_renews_with_a_third_of_its_life_left() -> None:
    not_before, not_after = T0, T0 + 90 * DAY
    assert renewal_time(not_before, not_after) == pytest.approx(T0 + 60 * DAY)
    assert not renewal_due(not_before, not_after, T0 + 59.9 * DAY, None, None)
    assert renewal_due(not_before, not_after, T0 + 60 * DAY, None, None)


def test_short_lived_certificate_renews_at_half_its_life() -> None:
    not_before, not_after = T0, T0 + 6 * DAY
    assert renewal_time(not_before, not_after) == pytest.approx(T0 + 3 * DAY)
    assert renewal_time(T0, T0 + 10 * DAY) == pytest.approx(T0 + 5 * DAY)
    assert renewal_time(T0, T0 + 11 * DAY) == pytest.approx(T0 + 11 * DAY * 2 / 3)


def test_configured_fraction_overrides_the_default() -> None:
    assert renewal_time(T0, T0 + 100 * DAY, 0.25) == pytest.approx(T0 + 75 * DAY)
    assert renewal_due(T0, T0 + 100 * DAY, T0 + 76 * DAY, 0.25, None)


def test_ari_window_overrides_the_lifetime_rule() -> None:
    window = RenewalWindow(T0 + 10 * DAY, T0 + 12 * DAY, T0)
    # the CA asks for early renewal (say, before a revocation): due long before 60 days
    assert renewal_due(T0, T0 + 90 * DAY, T0 + 10 * DAY, None, window)
    assert not renewal_due(T0, T0 + 90 * DAY, T0 + 9 * DAY, None, window)


def test_ari_pick_inside_the_window_is_used_and_outside_ignored() -> None:
    window = RenewalWindow(T0 + 10 * DAY, T0 + 12 * DAY, T0)
    pick = T0 + 11 * DAY
    assert renewal_time(T0, T0 + 90 * DAY, None, window, ari_pick=pick) == pick
    assert not renewal_due(T0, T0 + 90 * DAY, T0 + 10.5 * DAY, None, window, ari_pick=pick)
    # a pick left over from an older window does not count
    stale = T0 + 30 * DAY
    assert renewal_time(T0, T0 + 90 * DAY, None, window, ari_pick=stale) == window.start


def test_inverted_ari_window_falls_back_to_the_lifetime_rule() -> None:
    window = RenewalWindow(T0 + 12 * DAY, T0 + 10 * DAY, T0)
    assert renewal_time(T0, T0 + 90 * DAY, None, window) == pytest.approx(T0 + 60 * DAY)


def test_ari_window_after_expiry_is_capped_at_expiry() -> None:
    window = RenewalWindow(T0 + 100 * DAY, T0 + 101 * DAY, T0)
    assert renewal_time(T0, T0 + 90 * DAY, None, window) == T0 + 90 * DAY


def test_recheck_interval_clamps_the_servers_retry_after() -> None:
    assert recheck_after(None) == ARI_DEFAULT_RECHECK
    assert recheck_after(1) == 60
    assert recheck_after(3600) == 3600
    assert recheck_after(10 * DAY) == DAY


def test_parse_window_reads_rfc3339_times_and_explanation() -> None:
    body = {
        "suggestedWindow": {
            "start": "2023-11-14T22:13:20Z",
            "end": "2023-11-15T22:13:20.123456789Z",
        },
        "explanationURL": "https://ca.test/why",
    }
    start, end, url = parse_window(body, "https://ca.test/dir", "a.b")
    assert start == T0 and end == pytest.approx(T0 + DAY + 0.123456)
    assert url == "https://ca.test/why"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"suggestedWindow": {"start": "2023-11-14T22:13:20Z"}},
        {"suggestedWindow": {"start": "yesterday", "end": "today"}},
        {"suggestedWindow": {"start": "2023-11-14T22:13:20", "end": "2023-11-15T22:13:20"}},
        {"suggestedWindow": {"start": "2023-11-15T00:00:00Z", "end": "2023-11-14T00:00:00Z"}},
    ],
)
def test_unusable_renewal_info_is_an_error_naming_server_and_certificate(body: object) -> None:
    with pytest.raises(AcmeError) as caught:
        parse_window(body, "https://ca.test/dir", "aYhb.AIdl")
    assert "https://ca.test/dir" in str(caught.value) and "aYhb.AIdl" in str(caught.value)
