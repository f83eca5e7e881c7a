"""Issue a certificate over ACME (RFC 8555): account, order, DNS-01/HTTP-01, finalize, chain.

``issue_certificate`` builds the client from the config and hands it to ``issue_with_client``,
which does the order; the network object is handed in (as in ``acme.client``), so tests can swap
it. The account lives in ``certman.acme.account``, ARI in ``certman.acme.ari``, the responders in
``certman.acme.challenges``, finalize and chain download in ``certman.acme.order``, the library
extensions and retry policy in ``certman.acme.client``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from certman.acme.ari import RenewalWindow, ari_cert_id, renewal_due, renewal_info
from certman.acme.order import (
    POLL_TIMEOUT,
    AcmeSession,
    download_chain,
    finalize_order,
    make_csr,
    parse_chain,
    pause,
    pick_chain,
)
from certman.config.schema import Challenge
from certman.errors import AcmeError, ConfigError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from acme import messages
    from cryptography import x509

    from certman.config.schema import CertificateConfig, Config
    from certman.dns.provider import DnsProvider
    from certman.keys import PrivateKey

__all__ = [
    "AcmeSession",
    "IssuedCertificate",
    "RenewalWindow",
    "ari_cert_id",
    "issue_certificate",
    "issue_with_client",
    "make_csr",
    "pick_chain",
    "renewal_due",
    "renewal_info",
]


@dataclass(frozen=True)
class IssuedCertificate:
    fullchain_pem: bytes  # leaf first, then the chain
    leaf: x509.Certificate
    not_before: float
    not_after: float
    ari_id: str
    order_url: str


def _quiet(message: str) -> None:
    pass


def issue_certificate(
    config: Config,
    cert: CertificateConfig,
    key: PrivateKey,
    *,
    providers: Mapping[str, DnsProvider],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    replaces: str | None = None,
    progress: Callable[[str], None] | None = None,
    rng: random.Random | None = None,
    poll_timeout: float = POLL_TIMEOUT,
) -> IssuedCertificate:
    """Issue a certificate for all of ``cert.domains`` with ``key``; ``replaces`` is the ARI id
    of the certificate this one renews (RFC 9773 §5). Raises ``AcmeError`` naming the CA and the
    domain at fault, ``RetryLater`` when the CA asks to come back later."""
    from certman.acme.account import (
        StaleAccountError,
        account_lock,
        ensure_account,
        forget_cached_account,
        jwk_and_alg,
        load_or_create_account_key,
    )
    from certman.acme.client import open_client

    say = progress or _quiet
    with account_lock(config.state_dir):
        account_key, created = load_or_create_account_key(config.acme)
        jwk, alg = jwk_and_alg(account_key)
        client = open_client(
            config.acme, jwk, alg=alg, sleep=sleep, clock=clock, rng=rng or random.Random()
        )
        ensure_account(client, config.acme, config.state_dir, key_is_new=created, progress=say)
    session = AcmeSession(client, jwk, config.acme.directory, sleep, clock, say, poll_timeout)
    try:
        return issue_with_client(session, config, cert, key, providers=providers, replaces=replaces)
    except StaleAccountError as exc:
        # The CA forgot the cached account (or the key file was replaced): look it up afresh.
        say(f"acme: cached account unusable ({exc}); looking it up again")
        with account_lock(config.state_dir):
            forget_cached_account(config.state_dir)
            ensure_account(client, config.acme, config.state_dir, key_is_new=False, progress=say)
    return issue_with_client(session, config, cert, key, providers=providers, replaces=replaces)


def issue_with_client(
    session: AcmeSession,
    config: Config,
    cert: CertificateConfig,
    key: PrivateKey,
    *,
    providers: Mapping[str, DnsProvider],
    replaces: str | None,
) -> IssuedCertificate:
    from certman.acme.client import acme_step

    profile = _profile(session, cert.profile or config.acme.profile)
    # RFC 9773 §5: ``replaces`` belongs to ARI; a CA without renewalInfo gets no such field.
    if replaces is not None and "renewalInfo" not in session.client.directory.to_partial_json():
        replaces = None
    url, body = _new_order(session, cert.domains, profile, replaces)
    session.say(f"acme: order {url} for {', '.join(cert.domains)}")
    authzs = [_authorization(session, u) for u in body.authorizations]
    for authz in authzs:
        if authz.body.status.name not in ("pending", "valid"):
            raise _authorization_failed(session, authz)
    pending = [a for a in authzs if a.body.status.name == "pending"]
    if pending:
        with _responder(session, config, cert, providers, pending):
            for authz in pending:
                challb = _challenge_of(session, authz, cert.challenge)
                with acme_step(session.server, f"answering {_what(authz)}"):
                    session.client.answer_challenge(challb, challb.response(session.jwk))
            session.say("acme: waiting for the CA to validate")
            _wait_authorizations(session, pending)
    csr = make_csr(key, cert.domains)
    certificate_url = finalize_order(session, url, body, csr, cert.domains)
    fullchain = download_chain(session, certificate_url, config.acme.preferred_chain)
    return _issued(fullchain, key, cert.domains, url, session.server)


def _what(authz: messages.AuthorizationResource) -> str:
    name = authz.body.identifier.value
    return f"authorization for {'*.' if authz.body.wildcard else ''}{name} ({authz.uri})"


def _profile(session: AcmeSession, wanted: str | None) -> str | None:
    """The profile to request: the configured one, when the CA offers it (meta.profiles,
    draft-ietf-acme-profiles §3); otherwise none, and say so."""
    if wanted is None:
        return None
    offered = session.client.directory.meta.profiles or {}
    if wanted in offered:
        return wanted
    names = ", ".join(sorted(offered)) or "none"
    session.say(f"acme: profile {wanted!r} not offered by {session.server} (offered: {names})")
    return None


def _new_order(
    session: AcmeSession, domains: Sequence[str], profile: str | None, replaces: str | None
) -> tuple[str, messages.Order]:
    """POST newOrder (RFC 8555 §7.4). A ``replaces`` the CA refuses (RFC 9773 §5: 409
    alreadyReplaced, or it does not know the certificate) is dropped and the order retried."""
    from acme import errors as acme_errors
    from acme import messages

    from certman.acme.account import StaleAccountError
    from certman.acme.client import OrderRequest, acme_step, failure_text, post

    what = f"new order for {', '.join(domains)}"
    identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=d) for d in domains]
    request = OrderRequest(identifiers=identifiers, profile=profile, replaces=replaces)
    refused = None
    with acme_step(session.server, what):
        try:
            response = post(session.client, session.client.directory["newOrder"], request)
        except (acme_errors.ConflictError, messages.Error) as exc:
            if isinstance(exc, messages.Error) and exc.code == "accountDoesNotExist":
                raise StaleAccountError(
                    f"ACME server {session.server}: {failure_text(exc)}"
                ) from None
            if replaces is None or not _replaces_refused(exc):
                raise
            refused = failure_text(exc)
        if refused is None:
            body = messages.Order.from_json(response.json())
    if refused is not None:
        session.say(f"acme: CA refused replaces={replaces} ({refused}); ordering without it")
        return _new_order(session, domains, profile, None)
    location = response.headers.get("Location")
    if not location:
        raise AcmeError(f"ACME server {session.server}: {what}: answer without a Location")
    return str(location), body


def _replaces_refused(exc: BaseException | None) -> bool:
    from acme import errors as acme_errors
    from acme import messages

    if isinstance(exc, acme_errors.ConflictError):
        return True
    if isinstance(exc, messages.Error):
        detail = f"{exc.typ} {exc.detail}".lower()
        return "alreadyreplaced" in detail or (exc.code == "malformed" and "replace" in detail)
    return False


def _authorization(session: AcmeSession, url: str) -> messages.AuthorizationResource:
    from acme import messages

    from certman.acme.client import acme_step, post_as_get

    with acme_step(session.server, f"fetching authorization {url}"):
        response = post_as_get(session.client, url)
        body = messages.Authorization.from_json(response.json())
    return messages.AuthorizationResource(body=body, uri=url)


def _challenge_of(
    session: AcmeSession, authz: messages.AuthorizationResource, kind: Challenge
) -> messages.ChallengeBody:
    for challb in authz.body.challenges:
        if challb.chall.typ == kind.value:
            return challb
    offered = ", ".join(c.chall.typ for c in authz.body.challenges) or "none"
    raise AcmeError(
        f"ACME server {session.server}: {_what(authz)} offers no {kind.value} challenge "
        f"(offered: {offered})"
    )


def _responder(
    session: AcmeSession,
    config: Config,
    cert: CertificateConfig,
    providers: Mapping[str, DnsProvider],
    pending: Sequence[messages.AuthorizationResource],
) -> AbstractContextManager[None]:
    from certman.acme import challenges

    pairs = [(a, _challenge_of(session, a, cert.challenge)) for a in pending]
    if cert.challenge is Challenge.DNS01:
        answers = [
            challenges.Dns01Answer(_ordered_name(a), c.chall.validation(session.jwk))
            for a, c in pairs
        ]
        return challenges.dns01_published(
            answers,
            provider_for=lambda domain: _provider(config, cert, providers, domain),
            resolvers=config.resolvers,
            propagation=config.propagation,
            sleep=session.sleep,
            clock=session.clock,
            progress=session.say,
        )
    http = cert.http
    if http is None:
        raise ConfigError(f"{config.path}: certificates.{cert.name}: http-01 needs [http]")
    web = [
        challenges.Http01Answer(
            a.body.identifier.value, c.chall.encode("token"), c.chall.validation(session.jwk)
        )
        for a, c in pairs
    ]
    if http.webroot is not None:
        return challenges.http01_webroot(web, http.webroot)
    return challenges.http01_standalone(web, http.listen or "0.0.0.0", http.port)


def _ordered_name(authz: messages.AuthorizationResource) -> str:
    """The authorization's identifier as the certificate names it (``*.x`` for a wildcard
    authorization, whose identifier is ``x`` with ``wildcard: true``, RFC 8555 §7.1.4)."""
    name = str(authz.body.identifier.value)
    return f"*.{name}" if authz.body.wildcard else name


def _provider(
    config: Config, cert: CertificateConfig, providers: Mapping[str, DnsProvider], domain: str
) -> DnsProvider:
    name = cert.provider_for(domain)
    if name is None or name not in providers:
        raise ConfigError(
            f"{config.path}: certificates.{cert.name}: no DNS provider for {domain} "
            f"(configured: {name or 'none'}; available: {', '.join(providers) or 'none'})"
        )
    return providers[name]


def _wait_authorizations(
    session: AcmeSession, pending: Sequence[messages.AuthorizationResource]
) -> None:
    from acme import messages

    from certman.acme.client import acme_step, post_as_get, retry_after_seconds

    deadline = session.clock() + session.poll_timeout
    waiting = {a.uri: a for a in pending}
    attempt = 0
    retry_after: float | None = None
    while waiting:
        if session.clock() >= deadline:
            names = ", ".join(_what(a) for a in waiting.values())
            raise AcmeError(
                f"ACME server {session.server}: still pending after {session.poll_timeout:.0f} s: "
                f"{names}"
            )
        pause(session, attempt, retry_after, deadline)
        attempt += 1
        for url, authz in list(waiting.items()):
            with acme_step(session.server, f"polling {_what(authz)}"):
                response = post_as_get(session.client, url)
                body = messages.Authorization.from_json(response.json())
            retry_after = retry_after_seconds(response, session.clock)
            if body.status.name == "pending":
                continue
            del waiting[url]
            if body.status.name != "valid":
                raise _authorization_failed(
                    session, messages.AuthorizationResource(body=body, uri=url)
                )


def _authorization_failed(session: AcmeSession, authz: messages.AuthorizationResource) -> AcmeError:
    """The CA's own words on why validation failed (RFC 8555 §7.1.4: the challenge's error)."""
    from certman.acme.client import problem_text

    details = [f"{c.chall.typ}: {problem_text(c.error)}" for c in authz.body.challenges if c.error]
    why = "; ".join(details) or f"status {authz.body.status.name}, no error given"
    return AcmeError(f"ACME server {session.server}: {_what(authz)} failed: {why}")


def _issued(
    fullchain: bytes, key: PrivateKey, domains: Sequence[str], order_url: str, server: str
) -> IssuedCertificate:
    """Check that the chain is for our key and names every domain, then describe it."""
    from cryptography import x509

    from certman.keys import spki_der

    chain = parse_chain(fullchain, order_url, server)
    leaf = chain[0]
    if spki_der(leaf.public_key()) != spki_der(key.public_key()):
        raise AcmeError(f"ACME server {server}: order {order_url}: certificate is for another key")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        names = set()
    missing = [d for d in domains if d.lower() not in names]
    if missing:
        raise AcmeError(
            f"ACME server {server}: order {order_url}: certificate lacks {', '.join(missing)}"
        )
    try:
        ari_id = ari_cert_id(leaf)
    except AcmeError:
        ari_id = ""
    return IssuedCertificate(
        fullchain_pem=fullchain,
        leaf=leaf,
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        ari_id=ari_id,
        order_url=order_url,
    )
