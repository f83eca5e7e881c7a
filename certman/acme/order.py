"""After validation: finalize an order with a CSR, poll it, download the chain (RFC 8555 §7.4).

Also the session object every step of an issuance receives, and the poll schedule. Heavy
imports (acme, cryptography) stay inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from certman.errors import AcmeError

if TYPE_CHECKING:
    from acme import client as acme_client
    from acme import messages
    from cryptography import x509
    from josepy.jwk import JWK

    from certman.keys import PrivateKey

# Polling an authorization or order (RFC 8555 §7.5.1): first look soon (a CA validates in well
# under a second when it can), then back off to POLL_CAP; a Retry-After from the CA wins.
POLL_FIRST = 0.02
POLL_CAP = 5.0
POLL_TIMEOUT = 180.0


@dataclass(frozen=True)
class AcmeSession:
    """One issuance's ACME session: the client (with its network, handed in as in acme.client),
    the account key, the CA's name for messages, and the injected sleep/clock/progress."""

    client: acme_client.ClientV2
    jwk: JWK
    server: str
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    say: Callable[[str], None]
    poll_timeout: float


def poll_delay(attempt: int, retry_after: float | None = None) -> float:
    """Wait before poll ``attempt`` (0-based): POLL_FIRST doubling to POLL_CAP, or the CA's
    Retry-After when that is longer (RFC 8555 §7.5.1)."""
    delay = min(POLL_CAP, POLL_FIRST * 2.0 ** min(attempt, 16))
    return max(delay, retry_after) if retry_after is not None else delay


def pause(session: AcmeSession, attempt: int, retry_after: float | None, deadline: float) -> None:
    """Sleep before the next poll, never past ``deadline``."""
    session.sleep(min(poll_delay(attempt, retry_after), max(0.0, deadline - session.clock())))


def make_csr(key: PrivateKey, domains: Sequence[str]) -> x509.CertificateSigningRequest:
    """A CSR naming every domain in subjectAltName (RFC 8555 §7.4: the CSR must match the order).
    The CN (first domain, when it fits the 64-character limit) is for old tools only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = []
    if domains and len(domains[0]) <= 64:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, domains[0]))
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def finalize_order(
    session: AcmeSession,
    url: str,
    body: messages.Order,
    csr: x509.CertificateSigningRequest,
    domains: Sequence[str],
) -> str:
    """POST the CSR to ``finalize`` and poll the order until it is valid (RFC 8555 §7.4).

    ``body`` is newOrder's answer, from before validation: its status is looked up again at
    once, not after a pause. The poll schedule starts again after the finalize request (the
    CA's processing is a new wait, RFC 8555 §7.1.6)."""
    from acme import messages

    from certman.acme.client import acme_step, post, post_as_get, problem_text, retry_after_seconds

    what = f"finalizing order {url} for {', '.join(domains)}"
    session.say("acme: finalizing")
    deadline = session.clock() + session.poll_timeout
    finalized = False
    stale = True  # newOrder's status: "pending" then, "ready" by now if validation went well
    attempt = 0
    retry_after: float | None = None
    while True:
        if body.status.name == "valid" and body.certificate:
            return str(body.certificate)
        if body.status.name == "invalid":
            error = f": {problem_text(body.error)}" if body.error else ""
            raise AcmeError(f"ACME server {session.server}: order {url} is invalid{error}")
        if body.status.name == "ready" and not finalized:
            with acme_step(session.server, what):
                response = post(session.client, body.finalize, messages.CertificateRequest(csr=csr))
                body = messages.Order.from_json(response.json())
            finalized, stale, attempt = True, False, 0
            retry_after = retry_after_seconds(response, session.clock)
            continue
        if session.clock() >= deadline:
            raise AcmeError(f"ACME server {session.server}: {what}: still {body.status.name}")
        if not stale:
            pause(session, attempt, retry_after, deadline)
            attempt += 1
        stale = False
        with acme_step(session.server, what):
            response = post_as_get(session.client, url)
            body = messages.Order.from_json(response.json())
        retry_after = retry_after_seconds(response, session.clock)


def download_chain(session: AcmeSession, url: str, preferred: str | None) -> bytes:
    """The PEM chain at ``url``; with ``preferred`` also the alternates (``Link: rel=alternate``,
    RFC 8555 §7.4.2), choosing the one whose top certificate was issued by that name."""
    from certman.acme.client import PEM_CHAIN_TYPE, acme_step, links, post_as_get

    accept = {"Accept": PEM_CHAIN_TYPE}
    with acme_step(session.server, f"downloading certificate {url}"):
        response = post_as_get(session.client, url, accept)
        chains = [response.content]
        if preferred:
            chains += [
                post_as_get(session.client, u, accept).content for u in links(response, "alternate")
            ]
    if not preferred:
        return chains[0]
    index = pick_chain([parse_chain(c, url, session.server) for c in chains], preferred)
    if index is None:
        session.say(f"acme: preferred chain {preferred!r} not offered; using the default chain")
        return chains[0]
    return chains[index]


def parse_chain(pem: bytes, url: str, server: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise AcmeError(f"ACME server {server}: certificate {url} is not a PEM chain") from None


def issuer_cn(cert: x509.Certificate) -> str | None:
    from cryptography.x509.oid import NameOID

    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def pick_chain(chains: Sequence[Sequence[x509.Certificate]], preferred: str) -> int | None:
    """Index of the first chain whose topmost certificate's issuer CN is ``preferred`` (the rule
    certbot's --preferred-chain uses), else of the first chain with any certificate issued by
    it; ``None`` when no chain matches."""
    wanted = preferred.strip().casefold()
    for index, chain in enumerate(chains):
        if chain and (issuer_cn(chain[-1]) or "").casefold() == wanted:
            return index
    for index, chain in enumerate(chains):
        if any((issuer_cn(c) or "").casefold() == wanted for c in chain):
            return index
    return None
