"""PowerDNS Authoritative with the sqlite3 backend: a signed zone edited through its API."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from .context import PDNS, Context
from .probe import http_ok, signed
from .proc import TestbedError, run, wait_for

ZONE = "pdns.test"
API_PORT = 8081
SERVER_ID = "localhost"
SCHEMAS = (
    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
)


def api_url() -> str:
    return f"http://{PDNS}:{API_PORT}"


def start_pdns(ctx: Context) -> tuple[str, dict[str, Any]]:
    """Create and sign the zone, start the server; return the zone's DS and its json."""
    workdir = ctx.path("pdns", "pdns.conf").parent
    api_key = secrets.token_urlsafe(24)
    key_file = workdir / "api.key"
    key_file.write_text(api_key + "\n")
    key_file.chmod(0o600)
    (workdir / "pdns.conf").write_text(_conf(workdir, api_key))
    run(["sqlite3", str(workdir / "pdns.sqlite3")], stdin=_schema().read_text())
    ds = _create_zone(workdir)
    started = ctx.spawn(
        "pdns",
        [
            "pdns_server",
            f"--config-dir={workdir}",
            "--daemon=no",
            "--guardian=no",
            "--disable-syslog",
            f"--socket-dir={workdir}",
        ],
    )
    headers = {"X-API-Key": api_key}
    server_url = f"{api_url()}/api/v1/servers/{SERVER_ID}"
    wait_for(
        started,
        "signed answers and the API",
        lambda: signed(PDNS, ZONE) and http_ok(server_url, headers=headers),
        ctx.deadline(),
    )
    info = {
        "address": PDNS,
        "api_url": api_url(),
        "api_key_file": str(key_file),
        "api_key": api_key,
        "server_id": SERVER_ID,
        "zone": ZONE,
    }
    return ds, info


def _schema() -> Path:
    for schema in SCHEMAS:
        if schema.exists():
            return schema
    raise TestbedError(f"no sqlite3 schema for PowerDNS in {', '.join(map(str, SCHEMAS))}")


def _conf(workdir: Path, api_key: str) -> str:
    # security-poll-suffix= : no lookup of a public name at start.
    # SOA MINIMUM 3: negative answers are cached 3 s (RFC 2308), as in the BIND zones.
    return f"""\
launch=gsqlite3
gsqlite3-database={workdir}/pdns.sqlite3
gsqlite3-dnssec=yes
local-address={PDNS}
local-port=53
security-poll-suffix=
default-ttl=300
default-soa-content=ns1.@ hostmaster.@ 1 3600 600 86400 3
api=yes
api-key={api_key}
webserver=yes
webserver-address={PDNS}
webserver-port={API_PORT}
webserver-allow-from=127.0.0.0/8
loglevel=4
"""


def _create_zone(workdir: Path) -> str:
    """pdns.test, signed; return its SHA-256 DS record."""
    pdnsutil = ["pdnsutil", f"--config-dir={workdir}"]
    run([*pdnsutil, "create-zone", ZONE, f"ns1.{ZONE}"])
    run([*pdnsutil, "add-record", ZONE, "ns1", "A", PDNS])
    run([*pdnsutil, "add-record", ZONE, "mx1", "A", "127.0.0.25"])
    run([*pdnsutil, "secure-zone", ZONE])
    run([*pdnsutil, "rectify-zone", ZONE])
    # Without it, changes made through the API leave the SOA serial as it is.
    run([*pdnsutil, "set-meta", ZONE, "SOA-EDIT-API", "DEFAULT"])
    for line in run([*pdnsutil, "export-zone-ds", ZONE]).splitlines():
        fields = line.split(";")[0].split()
        if fields[2:3] == ["DS"] and fields[5] == "2":
            return " ".join(fields)
    raise TestbedError(f"pdnsutil export-zone-ds {ZONE}: no SHA-256 DS record")
