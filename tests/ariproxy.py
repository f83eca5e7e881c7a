"""A tiny HTTPS reverse proxy in front of Pebble that adds what Debian's Pebble 2.4 lacks.

Pebble 2.4 has neither ARI (RFC 9773 ``renewalInfo``) nor ACME profiles
(draft-ietf-acme-profiles). The proxy forwards everything to Pebble unchanged (with the client's
``Host`` header, so Pebble builds its URLs - and checks the JWS ``url`` - for the proxy's
address) and:

- adds ``renewalInfo`` (and, when asked, ``meta.profiles``) to the directory;
- answers ``GET renewalInfo/<certID>`` with the window the test sets, and a ``Retry-After``;
- records the payload of every newOrder request (``replaces``, ``profile``);
- answers the next newOrder requests with errors the test queues (409 alreadyReplaced,
  429 rateLimited with Retry-After, 503, ...);
- answers every request (``fail_all``), or the next ``fail_count`` requests, with one error
  (500 serverInternal, 429 rateLimited with Retry-After), recording what it refused.

Also here: ``make_tls_files``, a throwaway CA and server certificate for an IP address, used for
the proxy's own HTTPS and for extra Pebble instances the tests start.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

RENEWAL_PATH = "/renewal-info"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, address: str) -> TlsFiles:
    """A throwaway CA (``ca``) and a certificate for ``address`` signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"throwaway CA {address}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip_address(address))]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass(frozen=True)
class Injected:
    """An error answer for a newOrder request instead of forwarding it."""

    status: int
    problem: str  # ACME error code, e.g. "alreadyReplaced"
    detail: str
    retry_after: str | None = None
    only_with_replaces: bool = False


@dataclass
class AriProxy:
    """The proxy's controls and records. Set ``window`` (None: 404 for every certificate)."""

    upstream: str  # e.g. https://127.0.0.14:14000
    upstream_ca: Path
    tls: TlsFiles
    host: str
    window: tuple[datetime.datetime, datetime.datetime] | None = None
    retry_after: str | None = "3600"
    explanation_url: str | None = None
    profiles: dict[str, str] | None = None
    inject: list[Injected] = field(default_factory=list)
    new_orders: list[dict[str, Any]] = field(default_factory=list)
    renewal_queries: list[str] = field(default_factory=list)
    fail_all: Injected | None = None  # every request answered with this error
    fail_next: Injected | None = None  # the next ``fail_count`` requests answered with it
    fail_count: int = 0
    refused: list[str] = field(default_factory=list)  # "METHOD path" of each request refused
    forwarded: list[str] = field(default_factory=list)  # "METHOD path" of each request passed on
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        return f"https://{self.host}:{self.port}"

    def upstream_connection(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context(cafile=str(self.upstream_ca))
        parts = urlsplit(self.upstream)
        return http.client.HTTPSConnection(
            parts.hostname or "", parts.port or 443, context=context, timeout=30
        )

    def fresh_nonce(self) -> str:
        connection = self.upstream_connection()
        try:
            connection.request("HEAD", "/nonce-plz")
            return connection.getresponse().getheader("Replay-Nonce") or ""
        finally:
            connection.close()


def _handler(proxy: AriProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self, body: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
            connection = proxy.upstream_connection()
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Host"] = self.headers.get("Host", f"{proxy.host}:{proxy.port}")
                connection.request(self.command, self.path, body or None, headers)
                response = connection.getresponse()
                data = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                return response.status, data, kept
            finally:
                connection.close()

        def _relay(self, body: bytes = b"") -> None:
            status, data, headers = self._forward(body)
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _refused(self) -> bool:
            """Answer with the error the test set for every request (or the next few)."""
            with proxy.lock:
                injected = proxy.fail_all
                if injected is None and proxy.fail_count > 0:
                    injected = proxy.fail_next
                    proxy.fail_count -= 1
                what = f"{self.command} {self.path}"
                (proxy.refused if injected else proxy.forwarded).append(what)
            if injected is None:
                return False
            if self.command == "POST":
                self._body()  # read it, so the connection stays usable
            self._problem(injected)
            return True

        def do_HEAD(self) -> None:
            if not self._refused():
                self._relay()

        def do_GET(self) -> None:
            if self._refused():
                return
            if self.path.startswith(RENEWAL_PATH + "/"):
                self._renewal_info(self.path[len(RENEWAL_PATH) + 1 :])
            elif self.path == "/dir":
                self._directory()
            else:
                self._relay()

        def do_POST(self) -> None:
            if self._refused():
                return
            body = self._body()
            if self.path == "/order-plz":
                payload = _jws_payload(body)
                with proxy.lock:
                    proxy.new_orders.append(payload)
                    injected = _take(proxy, payload)
                if injected is not None:
                    self._problem(injected)
                    return
            self._relay(body)

        def _problem(self, injected: Injected) -> None:
            problem = {
                "type": f"urn:ietf:params:acme:error:{injected.problem}",
                "detail": injected.detail,
                "status": injected.status,
            }
            headers = {
                "Content-Type": "application/problem+json",
                "Replay-Nonce": proxy.fresh_nonce(),
            }
            if injected.retry_after is not None:
                headers["Retry-After"] = injected.retry_after
            self._answer(injected.status, json.dumps(problem).encode(), headers)

        def _directory(self) -> None:
            status, data, headers = self._forward(b"")
            directory = json.loads(data)
            directory["renewalInfo"] = f"{proxy.base}{RENEWAL_PATH}"
            if proxy.profiles is not None:
                directory.setdefault("meta", {})["profiles"] = proxy.profiles
            kept = {k: v for k, v in headers if k.lower() != "content-type"}
            kept["Content-Type"] = "application/json"
            self._answer(status, json.dumps(directory).encode(), kept)

        def _renewal_info(self, cert_id: str) -> None:
            with proxy.lock:
                proxy.renewal_queries.append(cert_id)
                window = proxy.window
            if window is None:
                problem = {"type": "urn:ietf:params:acme:error:malformed", "detail": "unknown"}
                headers = {"Content-Type": "application/problem+json"}
                self._answer(404, json.dumps(problem).encode(), headers)
                return
            body: dict[str, Any] = {
                "suggestedWindow": {
                    "start": window[0].isoformat().replace("+00:00", "Z"),
                    "end": window[1].isoformat().replace("+00:00", "Z"),
                }
            }
            if proxy.explanation_url:
                body["explanationURL"] = proxy.explanation_url
            headers = {"Content-Type": "application/json"}
            if proxy.retry_after is not None:
                headers["Retry-After"] = proxy.retry_after
            self._answer(200, json.dumps(body).encode(), headers)

    return Handler


def _take(proxy: AriProxy, payload: dict[str, Any]) -> Injected | None:
    for index, item in enumerate(proxy.inject):
        if not item.only_with_replaces or "replaces" in payload:
            return proxy.inject.pop(index)
    return None


def _jws_payload(body: bytes) -> dict[str, Any]:
    """The decoded payload of a flattened JWS (RFC 7515 §7.2.2)."""
    try:
        encoded = json.loads(body)["payload"]
        padded = encoded + "=" * (-len(encoded) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded)) if encoded else {}
    except (ValueError, KeyError):
        return {}
    return payload if isinstance(payload, dict) else {}


@contextmanager
def running_proxy(
    upstream: str, upstream_ca: Path, directory: Path, host: str = "127.0.0.14"
) -> Iterator[AriProxy]:
    """Start the proxy on ``host`` (an ephemeral port) in a thread; stop it afterwards."""
    proxy = AriProxy(upstream, upstream_ca, make_tls_files(directory, host), host)
    server = ThreadingHTTPServer((host, 0), _handler(proxy))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(proxy.tls.cert), str(proxy.tls.key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    proxy.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
