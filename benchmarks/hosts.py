"""certman hosts on the testbed for the benchmarks: a config per Postfix instance (TLSA TTL 2 s,
certman's default propagation settings), bootstrapped once by two ``certman run``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from common import CERTMAN, check_ok, environment, run_child

TTL = 2
MARGIN = 0.5


def write_host(
    bed: object, directory: Path, instance: str, domains: list[str] | None = None
) -> Path:
    """A config like the integration tests' (tests/integration/helpers.py) but with certman's
    default propagation poll, so the figures are what an operator gets."""
    from helpers import write_config

    config = write_config(
        bed,  # type: ignore[arg-type]
        directory,
        instance=instance,
        ttl=TTL,
        margin=MARGIN,
        domains=domains,
        dane_hosts=[f"{instance}.dane.test"],
    )
    config.write_text(config.read_text().replace("interval = 0.2\n", ""))
    return config


def fresh_instance(bed: object, instance: str) -> None:
    """The instance serves the testbed's initial self-signed key again; no TLSA RRset."""
    from testbed import Testbed

    assert isinstance(bed, Testbed)
    pf = bed.postfix[instance]
    postconf = ["postconf", "-c", str(pf.config_dir), "-e"]
    subprocess.run([*postconf, f"smtpd_tls_chain_files={pf.initial_chain_file}"], check=True)
    subprocess.run(["postfix", "-c", str(pf.config_dir), "reload"], check=True, capture_output=True)
    nsupdate(bed, f"update delete _25._tcp.{instance}.dane.test TLSA")


def bootstrap(config: Path) -> None:
    """Adopt, publish current + next, wait out 2 x TTL, then renew through ACME."""
    for _ in range(2):
        argv = [CERTMAN, "--config", str(config), "run", "--max-wait", "120", "--quiet"]
        check_ok(run_child(argv, env=environment()), f"certman run ({config})")


def nsupdate(bed: object, *commands: str, zone: str = "dane.test") -> None:
    """One RFC 2136 update of ``zone`` on the primary, signed with the testbed's TSIG key."""
    from testbed import Testbed

    assert isinstance(bed, Testbed)
    script = f"server {bed.bind.primary}\nzone {zone}\n" + "\n".join(commands) + "\nsend\n"
    subprocess.run(
        ["nsupdate", "-k", str(bed.bind.tsig.file)],
        input=script,
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )
