"""Shared pieces of the ACME integration tests: config for the testbed, providers, extra Pebbles."""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ariproxy import make_tls_files
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from testbed import Testbed

from certman.config.load import load_config
from certman.config.schema import Config
from certman.dns.provider import DnsProvider, ProviderContext, create_provider


def unique_name(prefix: str = "t") -> str:
    """A fresh name in dane.test: Pebble's resolver caches challenge TXT RRsets (TTL 60), so
    each test validates a name nobody asked for before."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}.dane.test"


def toml_value(value: object) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def write_config(
    directory: Path,
    testbed: Testbed,
    *,
    domains: tuple[str, ...],
    acme: Mapping[str, object] | None = None,
    eab: tuple[str, Path] | None = None,
    certificate: Mapping[str, object] | None = None,
    http: Mapping[str, object] | None = None,
    state_dir: Path | None = None,
) -> Config:
    """A certman.toml for the testbed (Pebble, BIND over RFC 2136), parsed like the CLI does."""
    state = state_dir or directory / "state"
    acme_keys: dict[str, object] = {
        "directory": testbed.pebble.directory,
        "ca_bundle": str(testbed.pebble.api_ca),
        "email": "hostmaster@dane.test",
        "account_key": str(state / "acme" / "account.key"),
        "timeout": 10.0,
        "retries": 4,
        **(acme or {}),
    }
    lines = [
        "[certman]",
        f"state_dir = {toml_value(str(state))}",
        f"resolvers = [{toml_value(testbed.resolver)}]",
        "[acme]",
        *(f"{k} = {toml_value(v)}" for k, v in acme_keys.items()),
    ]
    if eab is not None:
        lines += [
            "[acme.eab]",
            f"kid = {toml_value(eab[0])}",
            f"hmac_key_file = {toml_value(str(eab[1]))}",
        ]
    lines += [
        "[dns.bind]",
        'type = "rfc2136"',
        f"server = {toml_value(testbed.bind.primary)}",
        f"tsig_key_file = {toml_value(str(testbed.bind.tsig.file))}",
        "[propagation]",
        "timeout = 30.0",
        "interval = 0.05",
        "[certificates.mx]",
        f"domains = {toml_value(list(domains))}",
        *(f"{k} = {toml_value(v)}" for k, v in (certificate or {}).items()),
        "[certificates.mx.postfix]",
        f"directory = {toml_value(str(directory / 'postfix'))}",
    ]
    if http is not None:
        lines += ["[certificates.mx.http]", *(f"{k} = {toml_value(v)}" for k, v in http.items())]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "certman.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


def providers_of(config: Config) -> dict[str, DnsProvider]:
    context = ProviderContext(config.resolvers, config.propagation.query_timeout)
    return {
        name: create_provider(p.type, name, p.options, context)
        for name, p in config.providers.items()
    }


def verify_chain(fullchain: bytes, roots: list[bytes], domain: str) -> None:
    """Path-validate the chain to one of ``roots`` as a TLS client would (RFC 5280)."""
    chain = x509.load_pem_x509_certificates(fullchain)
    store = Store([x509.load_pem_x509_certificate(r) for r in roots])
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(domain))
    verifier.verify(chain[0], chain[1:])


@dataclass
class Timer:
    """Wall time, plus the sleeps issuance asked for (the sleeps really happen)."""

    slept: float = 0.0

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        time.sleep(seconds)

    def clock(self) -> float:
        return time.time()


@dataclass(frozen=True)
class ExtraPebble:
    """A Pebble the tests start themselves, on its own 127.0.0.x address in the namespace."""

    directory: str
    management: str
    api_ca: Path
    eab: tuple[str, str] | None
    process: subprocess.Popen[bytes]

    def roots(self) -> list[bytes]:
        context = ssl.create_default_context(cafile=str(self.api_ca))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        found: list[bytes] = []
        while True:
            try:
                with opener.open(f"{self.management}/roots/{len(found)}") as answer:
                    found.append(answer.read())
            except urllib.error.HTTPError:
                return found


@contextmanager
def extra_pebble(
    workdir: Path,
    testbed: Testbed,
    address: str,
    *,
    eab: bool = False,
    nonce_reject: int = 0,
    alternate_roots: int = 0,
    authz_reuse: int = 0,
) -> Iterator[ExtraPebble]:
    """Start ``pebble`` on ``address`` (called from inside the namespace, so the child is there
    too), validating through the testbed's CA resolver; stop it afterwards."""
    tls = make_tls_files(workdir / "tls", address)
    keys = ("certman-kid", secrets.token_urlsafe(48)) if eab else None
    settings: dict[str, Any] = {
        "listenAddress": f"{address}:14000",
        "managementListenAddress": f"{address}:15000",
        "certificate": str(tls.cert),
        "privateKey": str(tls.key),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": eab,
    }
    if keys is not None:
        settings["externalAccountMACKeys"] = {keys[0]: keys[1]}
    (workdir / "pebble.json").write_text(json.dumps({"pebble": settings}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    env |= {
        "PEBBLE_AUTHZREUSE": str(authz_reuse),
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
        "PEBBLE_ALTERNATE_ROOTS": str(alternate_roots),
    }
    log = (workdir / "pebble.log").open("wb")
    process = subprocess.Popen(
        [
            "pebble",
            "-config",
            str(workdir / "pebble.json"),
            "-dnsserver",
            f"{testbed.ca_resolver}:53",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    pebble = ExtraPebble(
        f"https://{address}:14000/dir", f"https://{address}:15000", tls.ca, keys, process
    )
    try:
        _wait_ready(pebble, workdir / "pebble.log")
        yield pebble
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(pebble: ExtraPebble, log: Path) -> None:
    context = ssl.create_default_context(cafile=str(pebble.api_ca))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pebble.process.poll() is not None:
            raise RuntimeError(f"pebble exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(pebble.directory, context=context, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pebble at {pebble.directory} not ready: {log.read_text()[-2000:]}")
