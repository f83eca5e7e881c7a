"""Shared pieces of the end-to-end tests: a certman config for the testbed, a DANE prober."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testbed import Testbed


def write_config(
    bed: Testbed,
    directory: Path,
    *,
    instance: str = "mx1",
    ttl: int = 3,
    margin: float = 1.0,
    extra_cert: str = "",
    zone: str = "dane.test",
) -> Path:
    """A certman.toml for one Postfix instance of the testbed, DANE on port 25 with small TTLs."""
    pf = bed.postfix[instance]
    host = pf.host if zone == "dane.test" else f"{instance}.{zone}"
    state = directory / "state"
    text = f"""
[certman]
state_dir = "{state}"
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
config_dir = "{pf.config_dir}"

[certificates.{instance}]
domains = ["{host}"]
key_type = "ecdsa-p256"
{extra_cert}

[certificates.{instance}.dane]
ports = [25]
ttl = {ttl}
margin = {margin}
probe_address = "{pf.address}"

[certificates.{instance}.postfix]
layout = "chain-files"
directory = "{directory / "postfix-files"}"
"""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "certman.toml"
    path.write_text(text)
    return path


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
    results: list[tuple[float, bool, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def failures(self) -> list[tuple[float, bool, str]]:
        return [r for r in self.results if not r[1]]

    def run(self) -> None:
        while not self._stop.is_set():
            ok, output = self.bed.posttls_finger(self.host, self.address)
            last = output.strip().splitlines()[-1] if output else ""
            self.results.append((time.time(), ok, last))
            self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[Prober]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(30)
