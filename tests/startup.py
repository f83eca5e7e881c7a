"""A host where ``certman run`` has nothing to do: a config and a steady state, no servers needed.

Shared by the lazy-import test and ``benchmarks/bench_startup.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

from certman.lifecycle.state import Phase, State
from certman.lifecycle.statefile import CertDir
from certman.model import CertInfo, KeyInfo, KeyType

CONFIG = """
[certman]
state_dir = "{state}"
resolvers = ["127.0.0.1"]

[acme]
directory = "https://127.0.0.1:14000/dir"

[dns.bind]
type = "rfc2136"
server = "127.0.0.1"
tsig_key_file = "{tsig}"

[certificates.mx1]
domains = ["mx1.example.org"]

[certificates.mx1.dane]
ports = [25]
ttl = 300

[certificates.mx1.postfix]
directory = "{files}"
targets = ["sni:mx1.example.org"]
"""

TSIG = 'key "certman" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0c2VjcmV0c2VjcmV0";\n};\n'


def idle_host(directory: Path, count: int = 1, *, own_postfix: bool = False) -> Path:
    """Write config, TSIG key file and a steady state with nothing due for ``count``
    certificates (mx1, mx2, ...); return the config. ``own_postfix``: a Postfix configuration
    directory of its own with a main.cf, as on a mail host (without one, /etc/postfix here has
    no main.cf, and every failing postconf takes a second: Postfix's msg_fatal sleeps)."""
    tsig = directory / "tsig.key"
    tsig.write_text(TSIG)
    tsig.chmod(0o600)
    config = directory / "certman.toml"
    state_dir = directory / "state"
    text = CONFIG.format(state=state_dir, tsig=tsig, files=directory / "files")
    if own_postfix:
        postfix = directory / "postfix"
        postfix.mkdir()
        (postfix / "main.cf").write_text("compatibility_level = 3.6\n")
        (postfix / "master.cf").write_text("smtp inet n - y - - smtpd\n")
        text = text.replace("[acme]", f'[postfix]\nconfig_dir = "{postfix}"\n\n[acme]', 1)
    head, cert = text.split("[certificates.mx1]")
    cert = "[certificates.mx1]" + cert
    config.write_text(head + "".join(cert.replace("mx1", f"mx{i}") for i in range(1, count + 1)))
    for i in range(1, count + 1):
        _idle_state(state_dir, f"mx{i}")
    return config


def _idle_state(state_dir: Path, name: str) -> None:
    now = time.time()
    key = KeyInfo("ecdsa-p256-00", KeyType.ECDSA_P256, "00" * 32, now)
    nxt = KeyInfo("ecdsa-p256-11", KeyType.ECDSA_P256, "11" * 32, now)
    year = 365 * 86400.0
    state = State(
        name=name,
        phase=Phase.STEADY,
        current={"ecdsa-p256": key},
        next={"ecdsa-p256": nxt},
        certs={"ecdsa-p256": CertInfo(key.id, "01", now, now + year, None, "/nonexistent")},
        next_ready_at=now,
        renew_after=now + year / 2,
        ari_recheck_at=now + year,
    )
    CertDir.of(state_dir, name).save(state)
