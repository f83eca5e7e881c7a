"""Shared pieces of the end-to-end tests: a certman config for the testbed, a DANE prober."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]

# posttls-finger options that make the server pick one certificate of a dual RSA + ECDSA setup:
# TLS 1.2 with only that authentication in the cipher list (TLS 1.3 would pick by signature
# algorithm, which posttls-finger cannot restrict).
OFFER_RSA_ONLY = ("-p", "<=TLSv1.2", "-g", "high", "-o", "tls_high_cipherlist=aRSA")
OFFER_ECDSA_ONLY = ("-p", "<=TLSv1.2", "-g", "high", "-o", "tls_high_cipherlist=aECDSA")


def config_header(bed: Testbed, directory: Path, config_dir: Path) -> str:
    """The global tables of a testbed config: state in ``directory``, Pebble, BIND, one instance."""
    return f"""
[certman]
state_dir = "{directory / "state"}"
resolvers = ["{bed.resolver}"]

[acme]
directory = "{bed.pebble.directory}"
email = "postmaster@dane.test"
ca_bundle = "{bed.pebble.api_ca}"

[dns.bind]
type = "rfc2136"
server = "{bed.bind.primary}"
tsig_key_file = "{bed.bind.tsig.file}"

[propagation]
interval = 0.2
timeout = 60

[postfix]
config_dir = "{config_dir}"
"""


def write_config(
    bed: Testbed,
    directory: Path,
    *,
    instance: str = "mx1",
    ttl: int = 3,
    margin: float = 1.0,
    extra_cert: str = "",
    zone: str = "dane.test",
    domains: Sequence[str] | None = None,
    key_types: Sequence[str] = ("ecdsa-p256",),
    dane_hosts: Sequence[str] | None = None,
    extra_dane: str = "",
) -> Path:
    """A certman.toml for one Postfix instance of the testbed, DANE on port 25 with small TTLs.

    ``domains`` defaults to the instance's host name, ``dane_hosts`` (the TLSA owner names'
    hosts) to certman's default (the domains); several ``key_types`` make a dual setup.
    """
    pf = bed.postfix[instance]
    host = pf.host if zone == "dane.test" else f"{instance}.{zone}"
    names = json.dumps(list(domains or [host]))
    kinds = json.dumps(key_types[0] if len(key_types) == 1 else list(key_types))
    hosts = f"hosts = {json.dumps(list(dane_hosts))}" if dane_hosts else ""
    text = (
        config_header(bed, directory, pf.config_dir)
        + f"""
[certificates.{instance}]
domains = {names}
key_type = {kinds}
{extra_cert}

[certificates.{instance}.dane]
ports = [25]
ttl = {ttl}
margin = {margin}
probe_address = "{pf.address}"
{hosts}
{extra_dane}

[certificates.{instance}.postfix]
layout = "chain-files"
directory = "{directory / "postfix-files"}"
"""
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "certman.toml"
    path.write_text(text)
    return path


@contextmanager
def in_background(run: Callable[[], None], stop: threading.Event) -> Iterator[None]:
    """Run ``run`` in a thread for the ``with`` block; ``stop`` tells it to finish."""
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@dataclass
class Prober:
    """Checks the live Postfix against the validating resolver every ``interval`` seconds.

    Uses posttls-finger in DANE mode (its own TLSA lookup through Unbound with AD), the same
    verdict a DANE-validating sender reaches (RFC 7672).
    """

    bed: Testbed
    host: str
    address: str
    interval: float = 0.2
    options: tuple[str, ...] = ()  # extra posttls-finger options, e.g. OFFER_RSA_ONLY
    port: int = 25  # 465: add "-w" to options (implicit TLS)
    results: list[tuple[float, bool, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def failures(self) -> list[tuple[float, bool, str]]:
        return [r for r in self.results if not r[1]]

    def run(self) -> None:
        while not self._stop.is_set():
            ok, output = posttls_finger(
                self.bed, self.host, self.address, self.options, port=self.port
            )
            last = output.strip().splitlines()[-1] if output else ""
            self.results.append((time.time(), ok, last))
            self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[Prober]:
        with in_background(self.run, self._stop):
            yield self


def posttls_finger(
    bed: Testbed, host: str, address: str, options: Sequence[str] = (), *, port: int = 25
) -> tuple[bool, str]:
    """``Testbed.posttls_finger`` with extra posttls-finger options (see OFFER_RSA_ONLY) and
    another port (posttls-finger looks up ``_PORT._tcp.HOST``; ``-w`` for implicit TLS)."""
    if not options and port == 25:
        return bed.posttls_finger(host, address)
    proc = bed.run_in_netns(
        ["posttls-finger", "-c", "-l", "dane", *options, f"[{host}]:{port}"],
        env={"MAIL_CONFIG": str(bed.postfix_client_config)},
    )
    output = proc.stdout + proc.stderr
    verified = f"Verified TLS connection established to {host}[{address}]:{port}" in output
    return verified, output


def run_certman(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m certman --config CONFIG ARGS`` in its own process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "certman", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
