"""certbot from PyPI in its own virtual environment (``benchmarks/.venv-certbot``), with the
dns-rfc2136 plugin, pointed at the testbed's Pebble and BIND."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import ROOT

VENV = ROOT / "benchmarks" / ".venv-certbot"
PACKAGES = ("certbot", "certbot-dns-rfc2136")


def ensure_venv() -> Path:
    """Create the venv once (about 15 s); later runs reuse it."""
    certbot = VENV / "bin" / "certbot"
    if not certbot.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *PACKAGES]
        subprocess.run(pip, check=True, stdout=subprocess.DEVNULL)
    return certbot


def version() -> str:
    out = subprocess.run(
        [str(VENV / "bin" / "certbot"), "--version"], capture_output=True, text=True, check=False
    )
    return (out.stdout or out.stderr).strip().removeprefix("certbot ")


@dataclass(frozen=True)
class Certbot:
    home: Path
    directory: str  # ACME directory URL
    ca_bundle: Path  # Pebble's HTTPS CA

    @classmethod
    def for_testbed(cls, bed: object, home: Path) -> Certbot:
        from testbed import Testbed

        assert isinstance(bed, Testbed)
        home.mkdir(parents=True, exist_ok=True)
        credentials = home / "rfc2136.ini"
        tsig = bed.bind.tsig
        credentials.write_text(
            f"dns_rfc2136_server = {bed.bind.primary}\n"
            "dns_rfc2136_port = 53\n"
            f"dns_rfc2136_name = {tsig.name}\n"
            f"dns_rfc2136_secret = {tsig.secret}\n"
            f"dns_rfc2136_algorithm = {tsig.algorithm.upper()}\n"
        )
        credentials.chmod(0o600)
        return cls(home, bed.pebble.directory, bed.pebble.api_ca)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "REQUESTS_CA_BUNDLE": str(self.ca_bundle)}

    def _dirs(self) -> list[str]:
        return [f"--{d}-dir={self.home / d}" for d in ("config", "work", "logs")]

    def certonly(self, name: str, *domains: str) -> list[str]:
        """``certbot certonly`` with DNS-01 through BIND (RFC 2136), propagation 1 s."""
        argv = [str(VENV / "bin" / "certbot"), "certonly", "--non-interactive", *self._dirs()]
        argv += ["--agree-tos", "--register-unsafely-without-email", f"--server={self.directory}"]
        argv += ["--authenticator", "dns-rfc2136"]
        argv += ["--dns-rfc2136-credentials", str(self.home / "rfc2136.ini")]
        argv += ["--dns-rfc2136-propagation-seconds", "1", f"--cert-name={name}"]
        argv += ["--force-renewal", "--no-random-sleep-on-renew"]
        for domain in domains:
            argv += ["-d", domain]
        return argv

    def renew(self) -> list[str]:
        """``certbot renew`` as cron runs it: every lineage, renewing none that is not due."""
        argv = [str(VENV / "bin" / "certbot"), "renew", "--non-interactive", *self._dirs()]
        return [*argv, "--no-random-sleep-on-renew", "-q"]
