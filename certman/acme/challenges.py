"""Responders for ACME challenges: DNS-01 (RFC 8555 §8.4) and HTTP-01 (RFC 8555 §8.3).

Each responder is a context manager: on entry it puts the answers where the CA will look (and, for
DNS-01, waits until every authoritative nameserver serves them); on exit it removes them, also when
the order failed. What a responder serves comes from ``acme.challenges`` (key authorization and
its digest); this module only places it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from certman.dns.provider import RRset, canonical_name
from certman.errors import CertmanError, ConflictError, DnsError
from certman.fsutil import atomic_write, write_point

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from certman.config.schema import PropagationConfig
    from certman.dns.provider import ChangeResult, DnsProvider

log = logging.getLogger(__name__)

# RFC 8555 §8.4: the TXT record lives at "_acme-challenge." + the domain (wildcard label removed).
CHALLENGE_LABEL = "_acme-challenge"
# Short, so a CA resolver never holds an old value long after a failed attempt is retried.
CHALLENGE_TTL = 60
# RFC 8555 §8.3: http://<domain>/.well-known/acme-challenge/<token>.
HTTP01_PREFIX = "/.well-known/acme-challenge/"
CAS_ATTEMPTS = 3
# RFC 8555 §8.3: a token is base64url; anything else must never become a file name.
TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class Dns01Answer:
    """One DNS-01 answer: ``domain`` as ordered (``*.x`` for a wildcard), ``value`` the TXT data
    (base64url SHA-256 of the key authorization)."""

    domain: str
    value: str


@dataclass(frozen=True)
class Http01Answer:
    domain: str
    token: str
    key_authorization: str


def challenge_record_name(domain: str) -> str:
    """``_acme-challenge.<domain>``; a wildcard ``*.x`` is validated at ``_acme-challenge.x``
    (RFC 8555 §8.4, §7.1.3)."""
    return f"{CHALLENGE_LABEL}.{canonical_name(domain).removeprefix('*.')}"


def txt_rrsets(answers: Sequence[Dns01Answer], ttl: int = CHALLENGE_TTL) -> list[RRset]:
    """One TXT RRset per name: ``x`` and ``*.x`` in one order share ``_acme-challenge.x``, and
    both values must be served at once (RFC 8555 §8.4 allows several TXT records)."""
    values: dict[str, set[str]] = {}
    for answer in answers:
        values.setdefault(challenge_record_name(answer.domain), set()).add(f'"{answer.value}"')
    return [RRset.of(name, "TXT", ttl, rdatas) for name, rdatas in sorted(values.items())]


@dataclass(frozen=True)
class _Written:
    provider: DnsProvider
    ours: RRset
    served: RRset
    change: ChangeResult


@contextmanager
def dns01_published(
    answers: Sequence[Dns01Answer],
    *,
    provider_for: Callable[[str], DnsProvider],
    resolvers: Sequence[str],
    propagation: PropagationConfig,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    progress: Callable[[str], None],
    ttl: int = CHALLENGE_TTL,
) -> Iterator[None]:
    """Write every challenge TXT RRset, wait until every authoritative nameserver serves it,
    yield, then remove our values again (other writers' values at the same name stay)."""
    written: list[_Written] = []
    try:
        for ours in txt_rrsets(answers, ttl):
            provider = provider_for(_domain_of(ours.name, answers))
            served, change = add_txt(provider, ours)
            written.append(_Written(provider, ours, served, change))
            progress(f"dns-01: {ours.name} TXT written via {provider.name}")
        for item in written:
            _wait_published(item, resolvers, propagation, sleep=sleep, clock=clock, say=progress)
        yield
    finally:
        _cleanup(written, progress)


def _domain_of(name: str, answers: Sequence[Dns01Answer]) -> str:
    for answer in answers:
        if challenge_record_name(answer.domain) == name:
            return canonical_name(answer.domain).removeprefix("*.")
    raise AssertionError(name)


def add_txt(provider: DnsProvider, ours: RRset) -> tuple[RRset, ChangeResult]:
    """Add our TXT values to whatever is at the name (compare-and-swap, retried on a race)."""
    for _ in range(CAS_ATTEMPTS):
        before = provider.read(ours.name, "TXT")
        served = ours.with_rdatas(ours.rdatas | (before.rdatas if before else frozenset()))
        try:
            write_point(f"before DNS change {ours.name} TXT")
            change = provider.replace(served, expected=before)
            write_point(f"after DNS change {ours.name} TXT")
            return served, change
        except ConflictError:
            continue
    raise DnsError(f"{ours.name} TXT: changed by another writer {CAS_ATTEMPTS} times in a row")


def remove_txt(provider: DnsProvider, ours: RRset) -> None:
    """Remove our TXT values; delete the RRset when nothing else is left in it."""
    for _ in range(CAS_ATTEMPTS):
        before = provider.read(ours.name, "TXT")
        if before is None or not before.rdatas & ours.rdatas:
            return
        rest = before.rdatas - ours.rdatas
        try:
            write_point(f"before DNS change {ours.name} TXT")
            if rest:
                provider.replace(before.with_rdatas(rest), expected=before)
            else:
                provider.delete(ours.name, "TXT", expected=before)
            write_point(f"after DNS change {ours.name} TXT")
            return
        except ConflictError:
            continue
    raise DnsError(f"{ours.name} TXT: changed by another writer {CAS_ATTEMPTS} times in a row")


def _wait_published(
    item: _Written,
    resolvers: Sequence[str],
    propagation: PropagationConfig,
    *,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    say: Callable[[str], None],
) -> None:
    from certman.dns.propagation import find_zone, wait_published

    item.provider.wait_in_sync(item.change, propagation.timeout)
    zone = find_zone(item.ours.name, resolvers, timeout=propagation.query_timeout)
    say(f"dns-01: waiting until every authoritative nameserver serves {item.ours.name}")
    wait_published(
        item.ours.name,
        "TXT",
        item.ours,
        zone=zone,
        min_serial=item.change.serial,
        superset=True,
        timeout=propagation.timeout,
        interval=propagation.interval,
        first_interval=propagation.first_interval,
        min_wait=propagation.min_wait,
        sleep=sleep,
        clock=clock,
        query_timeout=propagation.query_timeout,
    )


def _cleanup(written: Sequence[_Written], progress: Callable[[str], None]) -> None:
    """Remove every record we wrote; one failure does not stop the others. A failure is reported
    (a leftover challenge value is harmless: it authorizes nothing without the account key)."""
    failed = []
    for item in written:
        try:
            remove_txt(item.provider, item.ours)
            progress(f"dns-01: {item.ours.name} TXT removed")
        except CertmanError as exc:
            failed.append(str(exc))
    if failed:
        message = f"dns-01 cleanup failed: {'; '.join(failed)}"
        log.warning("%s", message)
        progress(f"warning: {message}")


# -- HTTP-01 --------------------------------------------------------------------------------------


@contextmanager
def http01_webroot(answers: Sequence[Http01Answer], webroot: Path) -> Iterator[None]:
    """Serve the key authorizations as files under ``webroot/.well-known/acme-challenge/``
    through the host's own web server; remove them (and the directories we made) afterwards."""
    if not webroot.is_dir():
        raise CertmanError(f"http-01 webroot {webroot}: not a directory")
    directory = webroot / HTTP01_PREFIX.strip("/")
    made = [p for p in (directory.parent, directory) if not p.exists()]
    files: list[Path] = []
    try:
        _place_files(answers, directory, made, files)
        yield
    finally:
        for path in files:
            path.unlink(missing_ok=True)
        for path in reversed(made):
            with suppress(OSError):  # not empty (someone else's files) or never made
                path.rmdir()


def _place_files(
    answers: Sequence[Http01Answer], directory: Path, made: list[Path], files: list[Path]
) -> None:
    try:
        for path in made:
            path.mkdir(mode=0o755)
            os.chmod(path, 0o755)  # readable by the web server whatever our umask
        for answer in answers:
            if not answer.token or answer.token.strip(TOKEN_CHARS):
                raise CertmanError(f"http-01: refusing token {answer.token!r} (not base64url)")
            path = directory / answer.token
            files.append(path)
            atomic_write(path, answer.key_authorization.encode("ascii"), mode=0o644)
    except OSError as exc:
        raise CertmanError(f"http-01 webroot: {exc.filename}: {exc.strerror}") from None


@contextmanager
def http01_standalone(answers: Sequence[Http01Answer], listen: str, port: int) -> Iterator[None]:
    """A built-in HTTP server on ``listen``:``port`` answering only the challenge paths, in a
    thread for the duration of the validation."""
    server = _http_server(
        {a.token: a.key_authorization for a in answers}, (listen, port), f"{listen}:{port}"
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _http_server(
    tokens: dict[str, str], address: tuple[str, int], where: str
) -> ThreadingHTTPServer:
    import socket
    from http.server import ThreadingHTTPServer

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        daemon_threads = True

    try:
        return Server(address, _handler_class(tokens))
    except OSError as exc:
        raise CertmanError(f"http-01: cannot listen on {where}: {exc.strerror}") from None


def _handler_class(tokens: dict[str, str]) -> type[BaseHTTPRequestHandler]:
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        server_version = "certman-http01"

        def do_GET(self) -> None:
            token = self.path.split("?", 1)[0].removeprefix(HTTP01_PREFIX)
            body = tokens.get(token) if self.path.startswith(HTTP01_PREFIX) else None
            data = (body or "not found\n").encode("ascii")
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("http-01 %s: " + format, self.client_address[0], *args)

    return Handler
