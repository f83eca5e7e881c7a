"""When a served certificate is due: the ARI window (stable pick) or the lifetime fraction."""

from __future__ import annotations

from certman.acme.ari import RenewalWindow
from certman.config.schema import CertificateConfig
from certman.lifecycle import renewal
from certman.lifecycle.state import State
from certman.model import CertInfo

DAY = 86400.0


class _Cert:
    renew_fraction: float | None = None


def _state(not_before: float, not_after: float, serial: str = "0a") -> State:
    return State(
        name="mx1", certs={"ecdsa-p256": CertInfo("k", serial, not_before, not_after, None, "/p")}
    )


def _cert(fraction: float | None = None) -> CertificateConfig:
    cert = _Cert()
    cert.renew_fraction = fraction
    return cert  # type: ignore[return-value]


def test_without_ari_renewal_is_due_with_a_third_of_the_lifetime_left() -> None:
    assert renewal.renew_after(_cert(), _state(0, 90 * DAY)) == 60 * DAY


def test_short_lived_certificates_renew_at_half_their_lifetime() -> None:
    assert renewal.renew_after(_cert(), _state(0, 6 * DAY)) == 3 * DAY


def test_configured_fraction_wins() -> None:
    assert renewal.renew_after(_cert(0.5), _state(0, 90 * DAY)) == 45 * DAY


def test_ari_pick_lies_in_the_window_and_is_stable() -> None:
    window = RenewalWindow(start=50 * DAY, end=52 * DAY, recheck_at=1.0)
    state = _state(0, 90 * DAY)
    first = renewal.renew_after(_cert(), state, {"ecdsa-p256": window})
    again = renewal.renew_after(_cert(), state, {"ecdsa-p256": window})
    assert first is not None and 50 * DAY <= first <= 52 * DAY
    assert first == again


def test_ari_picks_differ_between_certificates() -> None:
    window = RenewalWindow(start=50 * DAY, end=60 * DAY, recheck_at=1.0)
    picks = {
        renewal.renew_after(_cert(), _state(0, 90 * DAY, serial=f"{n:x}"), {"ecdsa-p256": window})
        for n in range(20)
    }
    assert len(picks) > 10
