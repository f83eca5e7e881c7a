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
"""

TSIG = 'key "certman" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0c2VjcmV0c2VjcmV0";\n};\n'


def idle_host(directory: Path) -> Path:
    """Write config, TSIG key file and a steady state with nothing due; return the config."""
    tsig = directory / "tsig.key"
    tsig.write_text(TSIG)
    tsig.chmod(0o600)
    config = directory / "certman.toml"
    state_dir = directory / "state"
    config.write_text(CONFIG.format(state=state_dir, tsig=tsig, files=directory / "files"))
    now = time.time()
    key = KeyInfo("ecdsa-p256-00", KeyType.ECDSA_P256, "00" * 32, now)
    nxt = KeyInfo("ecdsa-p256-11", KeyType.ECDSA_P256, "11" * 32, now)
    year = 365 * 86400.0
    state = State(
        name="mx1",
        phase=Phase.STEADY,
        current={"ecdsa-p256": key},
        next={"ecdsa-p256": nxt},
        certs={"ecdsa-p256": CertInfo(key.id, "01", now, now + year, None, "/nonexistent")},
        next_ready_at=now,
        renew_after=now + year / 2,
        ari_recheck_at=now + year,
    )
    CertDir.of(state_dir, "mx1").save(state)
    return config
