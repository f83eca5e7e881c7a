"""The ``acme`` library, extended where certman needs more than it offers.

- ``RetryingNetwork``: ``acme.client.ClientNetwork`` with bounded retries. The library retries a
  ``badNonce`` once (RFC 8555 §6.5); a CA that rejects many nonces (Pebble rejects 5 % by default,
  a CA behind a load balancer may reject more) needs more. 5xx answers, ``rateLimited`` and
  network errors are retried with exponential backoff and jitter, honouring ``Retry-After``
  (RFC 8555 §6.6); when the budget runs out, or the server asks for a longer wait than a run may
  block, ``RetryLater`` carries the time after which a retry makes sense.
- ``OrderRequest``: newOrder with ``replaces`` (RFC 9773 §5) and ``profile``
  (draft-ietf-acme-profiles §4); the library's ``NewOrder`` has no ``replaces``.

This module imports ``acme`` and ``requests`` at the top, so it is itself only ever imported from
inside functions: a ``certman run`` with nothing to do never loads it.
"""

from __future__ import annotations

import datetime
import email.utils
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from josepy.errors import DeserializationError
from josepy.interfaces import JSONDeSerializable
from josepy.json_util import field
from josepy.jwa import RS256, JWASignature
from josepy.jwk import JWK

from certman.errors import AcmeError, RetryLater

if TYPE_CHECKING:
    from certman.config.schema import AcmeConfig

USER_AGENT = "certman (acme-python)"
JOSE_CONTENT_TYPE = "application/jose+json"
PEM_CHAIN_TYPE = "application/pem-certificate-chain"

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving up on one request.

    ``attempts`` retries (after the first try) for 5xx, ``rateLimited`` and network errors, waiting
    ``base * 2**n`` (capped at ``cap``) with jitter, or the server's ``Retry-After`` if longer. A
    wait longer than ``max_wait`` is not slept through: ``RetryLater`` hands it to the caller (a
    cron run must never block for hours). ``badNonce`` has its own, larger budget with short
    waits: a rejected nonce costs one round trip, not server capacity.
    """

    attempts: int = 4
    base: float = 1.0
    cap: float = 30.0
    max_wait: float = 60.0
    nonce_attempts: int = 16
    nonce_base: float = 0.02
    nonce_cap: float = 1.0


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half of ``min(cap, base * 2**attempt)`` fixed,
    the other half random, so retries from many clients spread out but never come at once."""
    step = min(cap, base * 2.0 ** min(attempt, 62))
    return step / 2 + rng.uniform(0.0, step / 2)


def backoff_schedule(policy: RetryPolicy, rng: random.Random) -> list[float]:
    """The waits between the ``policy.attempts + 1`` tries of a transient failure."""
    return [backoff_delay(n, policy.base, policy.cap, rng) for n in range(policy.attempts)]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110
    §10.2.3). ``None`` when absent or unparseable; never negative."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


class Transient(StrEnum):
    """Failures worth retrying; everything else is reported at once."""

    NONCE = "badNonce"
    RATE_LIMITED = "rateLimited"
    SERVER = "server error"
    NETWORK = "network error"


@dataclass(frozen=True)
class Reply:
    """The HTTP facts of an error answer that the library's exceptions do not keep."""

    status: int
    retry_after: str | None


def reply_of(exc: BaseException) -> Reply | None:
    reply = getattr(exc, "certman_reply", None)
    return reply if isinstance(reply, Reply) else None


def classify(exc: BaseException) -> Transient | None:
    """Which kind of transient failure ``exc`` is, or ``None`` for a final answer."""
    if isinstance(exc, messages.Error):
        reply = reply_of(exc)
        if exc.code == "badNonce":
            return Transient.NONCE
        if exc.code == "rateLimited" or (reply is not None and reply.status == 429):
            return Transient.RATE_LIMITED
        if exc.code == "serverInternal" or (reply is not None and reply.status >= 500):
            return Transient.SERVER
        return None
    if isinstance(exc, acme_errors.ConflictError):
        return None
    if isinstance(exc, acme_errors.ClientError):
        reply = reply_of(exc)
        if reply is not None and (reply.status >= 500 or reply.status == 429):
            return Transient.SERVER
        return Transient.SERVER if isinstance(exc, acme_errors.MissingNonce) else None
    if isinstance(exc, requests.exceptions.SSLError):
        return None  # a wrong CA bundle does not heal by waiting
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return Transient.NETWORK
    return None


def problem_text(error: messages.Error) -> str:
    """One line: ``code: detail`` plus the subproblems with their identifiers (RFC 8555 §6.7.1)."""
    code = error.code or str(error.typ).rsplit(":", 1)[-1]
    text = f"{code}: {error.detail or error.title or error.description or 'no detail'}"
    for sub in error.subproblems or ():
        where = f"{sub.identifier.value}: " if sub.identifier is not None else ""
        text += f"; {where}{sub.code or sub.typ}: {sub.detail or ''}"
    return " ".join(text.split())


def failure_text(exc: BaseException) -> str:
    """One line for any error the acme library, requests or the server produced."""
    if isinstance(exc, messages.Error):
        return problem_text(exc)
    reply = reply_of(exc)
    if reply is not None:
        return f"HTTP {reply.status} without a problem document"
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class RetryingNetwork(acme_client.ClientNetwork):
    """``ClientNetwork`` with certman's retry policy and injected ``sleep``/``clock``/``rng``.

    ``server`` (the directory URL) names the CA in every error message.
    """

    def __init__(
        self,
        key: JWK | None,
        *,
        alg: JWASignature,
        verify_ssl: bool | str,
        timeout: float,
        server: str,
        policy: RetryPolicy,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        # verify_ssl is passed on to requests, which takes a CA file path as well as a bool.
        super().__init__(
            key,
            alg=alg,
            verify_ssl=verify_ssl,  # type: ignore[arg-type]
            user_agent=USER_AGENT,
            timeout=timeout,  # type: ignore[arg-type]
        )
        self.server = server
        self.policy = policy
        self.sleep = sleep
        self.clock = clock
        self.rng = rng

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        url = args[0] if args else kwargs.get("url", "?")
        return self.with_retries(lambda: self._post_once(*args, **kwargs), f"POST {url}")

    def get(
        self, url: str, content_type: str = "application/json", **kwargs: Any
    ) -> requests.Response:
        parent = super().get
        return self.with_retries(lambda: parent(url, content_type, **kwargs), f"GET {url}")

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        # An error answer carries a fresh nonce too (RFC 8555 §6.5): keep it, so the retry after
        # a badNonce needs no extra newNonce round trip.
        if not response.ok and self.REPLAY_NONCE_HEADER in response.headers:
            with suppress(acme_errors.BadNonce):
                self._add_nonce(response)
        return response

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        try:
            return super()._check_response(response, content_type=content_type)
        except (messages.Error, acme_errors.ClientError) as exc:
            # messages.Error is deliberately mutable (acme GH #9539); keep the HTTP facts.
            object.__setattr__(
                exc,
                "certman_reply",
                Reply(response.status_code, response.headers.get("Retry-After")),
            )
            raise

    def with_retries(self, send: Callable[[], T], what: str) -> T:
        nonce_failures = failures = 0
        while True:
            try:
                return send()
            except Exception as exc:
                kind = classify(exc)
                if kind is None:
                    raise
                if kind is Transient.NONCE and nonce_failures + 1 < self.policy.nonce_attempts:
                    nonce_failures += 1
                    self.sleep(self._nonce_delay(nonce_failures))
                    continue
                delay = self._transient_delay(exc, failures)
                failures += 1
                if failures > self.policy.attempts or delay > self.policy.max_wait:
                    raise self._give_up(exc, kind, what, delay) from None
                self.sleep(delay)

    def _nonce_delay(self, failures: int) -> float:
        # The first retry goes out at once (the server usually handed us a fresh nonce).
        if failures == 1:
            return 0.0
        return backoff_delay(failures - 2, self.policy.nonce_base, self.policy.nonce_cap, self.rng)

    def _transient_delay(self, exc: BaseException, failures: int) -> float:
        delay = backoff_delay(failures, self.policy.base, self.policy.cap, self.rng)
        reply = reply_of(exc)
        asked = parse_retry_after(reply.retry_after if reply else None, self.clock())
        return max(delay, asked) if asked is not None else delay

    def _give_up(self, exc: BaseException, kind: Transient, what: str, delay: float) -> RetryLater:
        not_before = self.clock() + delay
        reply = reply_of(exc)
        asked = parse_retry_after(reply.retry_after if reply else None, self.clock())
        return RetryLater(
            f"ACME server {self.server}: {kind.value} on {what} ({failure_text(exc)}); "
            f"retry after {iso_utc(not_before)}",
            not_before,
            server_asked=asked is not None,
        )


def iso_utc(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(round(epoch), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class OrderRequest(messages.NewOrder):
    """newOrder with ``replaces`` (RFC 9773 §5: the ARI certID of the certificate this order
    renews) and ``profile`` (draft-ietf-acme-profiles §4), both left out when ``None``."""

    profile: str | None = field("profile", omitempty=True)
    replaces: str | None = field("replaces", omitempty=True)


def post(
    client: acme_client.ClientV2, url: str, obj: JSONDeSerializable | None
) -> requests.Response:
    """A signed POST (``None``: POST-as-GET, RFC 8555 §6.3); nonces from the newNonce URL."""
    response: requests.Response = client.net.post(
        url, obj, new_nonce_url=client.directory["newNonce"]
    )
    return response


def post_as_get(
    client: acme_client.ClientV2, url: str, headers: Mapping[str, str] | None = None
) -> requests.Response:
    extra: dict[str, Any] = {}
    if headers:
        extra["headers"] = {"Content-Type": JOSE_CONTENT_TYPE, **headers}
    response: requests.Response = client.net.post(
        url, None, new_nonce_url=client.directory["newNonce"], **extra
    )
    return response


def links(response: requests.Response, relation: str) -> list[str]:
    """All ``Link`` URLs of one relation; ``response.links`` keeps only one per relation, and a
    certificate answer may name several alternate chains (RFC 8555 §7.4.2)."""
    from requests.utils import parse_header_links

    header = response.headers.get("Link")
    if not header:
        return []
    return [
        link["url"]
        for link in parse_header_links(header)
        if link.get("rel") == relation and "url" in link
    ]


def retry_after_seconds(response: requests.Response, clock: Callable[[], float]) -> float | None:
    return parse_retry_after(response.headers.get("Retry-After"), clock())


def acme_error(server: str, what: str, exc: BaseException) -> AcmeError:
    return AcmeError(f"ACME server {server}: {what}: {failure_text(exc)}")


@contextmanager
def acme_step(server: str, what: str) -> Iterator[None]:
    """Turn whatever the acme library, requests or josepy raise into one-line certman errors
    naming the CA and the step (``what``: the domain or authorization at fault)."""
    try:
        yield
    except RetryLater as exc:
        raise RetryLater(f"{exc} ({what})", exc.not_before, server_asked=exc.server_asked) from None
    except (acme_errors.Error, requests.RequestException, DeserializationError) as exc:
        raise acme_error(server, what, exc) from None


def open_client(
    acme: AcmeConfig,
    key: JWK | None,
    *,
    alg: JWASignature = RS256,
    sleep: Callable[[float], None] | None,
    clock: Callable[[], float],
    rng: random.Random,
) -> acme_client.ClientV2:
    """A ``ClientV2`` on a ``RetryingNetwork``, with the directory fetched (RFC 8555 §7.1.1).

    Pebble's or a private CA's certificate is checked against ``acme.ca_bundle`` when set, never
    against ``REQUESTS_CA_BUNDLE``. Without ``sleep`` no request is retried within the call.
    """
    policy = RetryPolicy(attempts=acme.retries)
    if sleep is None:
        policy = RetryPolicy(attempts=0, nonce_attempts=1)
    net = RetryingNetwork(
        key,
        alg=alg,
        verify_ssl=str(acme.ca_bundle) if acme.ca_bundle else _default_ca_file(),
        timeout=acme.timeout,
        server=acme.directory,
        policy=policy,
        sleep=sleep or _no_sleep,
        clock=clock,
        rng=rng,
    )
    with acme_step(acme.directory, "fetching the directory"):
        directory = acme_client.ClientV2.get_directory(acme.directory, net)
    return acme_client.ClientV2(directory, net)


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"no retries configured, yet asked to sleep {seconds} s")


def _default_ca_file() -> bool | str:
    """The CA bundle requests ships (certifi), not whatever REQUESTS_CA_BUNDLE says."""
    try:
        import certifi
    except ImportError:
        return True
    return str(certifi.where())
