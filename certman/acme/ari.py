"""ACME Renewal Information (ARI, RFC 9773) and the renewal-time rules around it.

Pure helpers (``ari_cert_id``, ``pick_renewal_time``, ``renewal_time``, ``renewal_due``) plus
``renewal_info``, which asks the CA for its suggested window.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from certman.errors import AcmeError

if TYPE_CHECKING:
    from cryptography import x509

    from certman.config.schema import Config

DAY = 86400.0
# Without ARI: renew when this fraction of the lifetime is left; short-lived certificates
# (10 days or less, e.g. Let's Encrypt's 6-day profile) get half their lifetime.
DEFAULT_FRACTION = 1 / 3
SHORT_FRACTION = 0.5
SHORT_LIFETIME = 10 * DAY
# RFC 9773 §4.3.3: without a usable Retry-After, ask again in six hours; clamp what the server
# says to between one minute and one day.
ARI_DEFAULT_RECHECK = 6 * 3600.0
ARI_MIN_RECHECK = 60.0
ARI_MAX_RECHECK = DAY


@dataclass(frozen=True)
class RenewalWindow:
    """The CA's suggested renewal window (epoch seconds) and when to ask again."""

    start: float
    end: float
    recheck_at: float
    explanation_url: str | None = None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(serial number DER content
    octets: big-endian two's complement, minimal, so a leading 0x00 when the top bit is set)."""
    from cryptography import x509

    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        aki = None
    if aki is None or aki.key_identifier is None:
        raise AcmeError(
            f"certificate {cert.serial_number:x}: no Authority Key Identifier, so no ARI id"
        )
    serial = cert.serial_number
    serial_der = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_der)}"


def pick_renewal_time(window_start: float, window_end: float, rng: random.Random) -> float:
    """RFC 9773 §4.2: a uniformly random moment in the window, so clients spread their load.
    Pick once per window and keep it: re-picking at every check skews renewals early."""
    if window_end <= window_start:
        return window_start
    return rng.uniform(window_start, window_end)


def renewal_time(
    cert_not_before: float,
    cert_not_after: float,
    fraction: float | None = None,
    ari_window: RenewalWindow | None = None,
    *,
    ari_pick: float | None = None,
) -> float:
    """When renewal is due (epoch).

    With a sane ARI window: ``ari_pick`` if it lies in the window, else the window's start. A
    window that is empty or inverted is ignored (RFC 9773 §4.3.3: then decide yourself). Without
    ARI: when ``fraction`` of the lifetime is left (one third by default, one half for
    certificates of 10 days or less). Never later than the expiry.
    """
    if ari_window is not None and ari_window.start < ari_window.end:
        inside = ari_pick is not None and ari_window.start <= ari_pick <= ari_window.end
        chosen = ari_pick if inside and ari_pick is not None else ari_window.start
        return min(chosen, cert_not_after)
    lifetime = cert_not_after - cert_not_before
    if fraction is None:
        fraction = SHORT_FRACTION if lifetime <= SHORT_LIFETIME else DEFAULT_FRACTION
    return cert_not_after - lifetime * fraction


def renewal_due(
    cert_not_before: float,
    cert_not_after: float,
    now: float,
    fraction: float | None = None,
    ari_window: RenewalWindow | None = None,
    *,
    ari_pick: float | None = None,
) -> bool:
    """Whether the certificate should be renewed at ``now`` (see ``renewal_time``)."""
    due = renewal_time(cert_not_before, cert_not_after, fraction, ari_window, ari_pick=ari_pick)
    return now >= due


def recheck_after(retry_after: float | None) -> float:
    """Seconds until the next renewalInfo request, from the server's Retry-After (§4.3.3)."""
    if retry_after is None:
        return ARI_DEFAULT_RECHECK
    return min(ARI_MAX_RECHECK, max(ARI_MIN_RECHECK, retry_after))


def renewal_info(
    config: Config,
    cert_pem: bytes,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None] | None = None,
    rng: random.Random | None = None,
) -> RenewalWindow | None:
    """The CA's suggested window for the certificate (leaf first in ``cert_pem``), or ``None``
    when the directory has no ``renewalInfo``.

    Raises ``RetryLater`` when the CA is unreachable or asks to wait, ``AcmeError`` for a refusal
    or an unusable answer; either way the caller decides by itself (RFC 9773 §4.3.3). Without
    ``sleep`` nothing is retried within the call.
    """
    from cryptography import x509

    from certman.acme.client import acme_step, open_client, retry_after_seconds

    leaf = x509.load_pem_x509_certificate(cert_pem)
    cert_id = ari_cert_id(leaf)
    client = open_client(config.acme, None, sleep=sleep, clock=clock, rng=rng or random.Random())
    base = client.directory.to_partial_json().get("renewalInfo")
    if not isinstance(base, str):
        return None
    url = f"{base.rstrip('/')}/{cert_id}"
    with acme_step(config.acme.directory, f"renewalInfo for {cert_id}"):
        response = client.net.get(url, content_type="application/json")
        body = response.json()
    window = parse_window(body, config.acme.directory, cert_id)
    recheck = clock() + recheck_after(retry_after_seconds(response, clock))
    return RenewalWindow(window[0], window[1], recheck, window[2])


def parse_window(body: object, server: str, cert_id: str) -> tuple[float, float, str | None]:
    """(start, end, explanationURL) from a renewalInfo body (RFC 9773 §4.2)."""
    import datetime

    where = f"ACME server {server}: renewalInfo for {cert_id}"
    window = body.get("suggestedWindow") if isinstance(body, dict) else None
    if not isinstance(window, dict):
        raise AcmeError(f"{where}: no suggestedWindow in the answer")
    try:
        start, end = (datetime.datetime.fromisoformat(str(window[k])) for k in ("start", "end"))
    except (KeyError, ValueError):
        raise AcmeError(f"{where}: suggestedWindow start/end are not RFC 3339 times") from None
    if start.tzinfo is None or end.tzinfo is None:
        raise AcmeError(f"{where}: suggestedWindow start/end lack a UTC offset (RFC 3339)")
    if end <= start:
        raise AcmeError(f"{where}: suggestedWindow ends before it starts")
    explanation = body.get("explanationURL") if isinstance(body, dict) else None
    url = explanation if isinstance(explanation, str) else None
    return start.timestamp(), end.timestamp(), url
