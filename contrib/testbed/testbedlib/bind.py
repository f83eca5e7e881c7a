"""BIND 9 primary and secondary: DNSSEC-signed dynamic zones, TSIG updates, rndc."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import PRIMARY, SECONDARY, Context
from .probe import dig, fully_signed
from .proc import TestbedError, run, wait_for

ZONES = ("dane.test", "lag.test", "broken.test", "plain.test")
SIGNED_ZONES = ("dane.test", "lag.test", "broken.test")  # plain.test: unsigned (preflight)
SECONDARY_ZONES = ("dane.test", "lag.test")
TSIG_NAME = "certman-key"
# A key BIND knows (it verifies its signatures) but that may update no zone: preflight's
# "this key may not change the TLSA name" case. Written next to certman-key.key.
LIMITED_TSIG_NAME = "limited-key"
TSIG_ALGORITHM = "hmac-sha256"
RNDC_KEY_NAME = "rndc-key"
RNDC_PORT = 953
DEFAULT_TTL = 300
SOA_TTL = 60
NEGATIVE_TTL = 3

ZONE_BODIES = {
    "dane.test": """\
@ NS ns1.dane.test.
@ NS ns2.dane.test.
@ MX 10 mx1.dane.test.
@ MX 20 mx2.dane.test.
ns1 A 127.0.0.11
ns2 A 127.0.0.12
mx1 A 127.0.0.25
mx2 A 127.0.0.26
""",
    "lag.test": """\
@ NS ns1.dane.test.
@ NS ns2.dane.test.
@ MX 10 mx1.lag.test.
mx1 A 127.0.0.25
""",
    "plain.test": """\
@ NS ns1.dane.test.
mx1 A 127.0.0.25
""",
    "broken.test": """\
@ NS ns1.dane.test.
@ MX 10 mx1.broken.test.
www A 127.0.0.25
mx1 A 127.0.0.25
_25._tcp.mx1 TLSA 3 1 1 {tlsa}
""",
}


@dataclass(frozen=True)
class Keys:
    tsig_file: Path
    tsig_secret: str
    rndc_file: Path


def make_keys(ctx: Context) -> Keys:
    """The TSIG key for RFC 2136 updates and the rndc control key, in BIND's key format."""
    tsig = _write_key(ctx.path("tsig", f"{TSIG_NAME}.key"), TSIG_NAME, TSIG_ALGORITHM)
    _write_key(ctx.path("tsig", f"{LIMITED_TSIG_NAME}.key"), LIMITED_TSIG_NAME, TSIG_ALGORITHM)
    rndc = _write_key(ctx.path("bind", "rndc.key"), RNDC_KEY_NAME, "hmac-sha256")
    secret = re.search(r'secret "([^"]+)"', tsig.read_text())
    if secret is None:
        raise TestbedError(f"{tsig}: no secret in tsig-keygen's output")
    return Keys(tsig, secret.group(1), rndc)


def _write_key(path: Path, name: str, algorithm: str) -> Path:
    path.write_text(run(["tsig-keygen", "-a", algorithm, name]))
    path.chmod(0o600)
    return path


def rndc_command(keys: Keys, server: str) -> list[str]:
    return ["rndc", "-k", str(keys.rndc_file), "-s", server, "-p", str(RNDC_PORT)]


def start_bind(ctx: Context, keys: Keys, broken_tlsa: str) -> dict[str, str]:
    """Start the primary, wait until it has signed every zone, then the secondary; return
    each zone's DS record (the resolvers' trust anchors)."""
    primary_dir = _write_primary(ctx, keys, broken_tlsa)
    primary = ctx.spawn("named-primary", _named(primary_dir))
    deadline = ctx.deadline()
    wait_for(
        primary, "signed zones", lambda: all(map(_signed_by_primary, SIGNED_ZONES)), deadline
    )
    # Started only now, so its first transfer of lag.test (which gets no NOTIFY) is signed.
    secondary = ctx.spawn("named-secondary", _named(_write_secondary(ctx, keys)))
    wait_for(secondary, "zone transfers", lambda: all(map(in_sync, SECONDARY_ZONES)), deadline)
    return {zone: trust_anchor(primary_dir, zone) for zone in SIGNED_ZONES}


def _signed_by_primary(zone: str) -> bool:
    return fully_signed(PRIMARY, zone)


def in_sync(zone: str) -> bool:
    """The secondary serves the primary's SOA serial."""
    serial = dig(PRIMARY, zone, "SOA").serial()
    return serial is not None and dig(SECONDARY, zone, "SOA").serial() == serial


def trust_anchor(key_dir: Path, zone: str) -> str:
    """The SHA-256 DS (`dnssec-dsfromkey -2`) of the key-signing key that dnssec-policy made."""
    for key_file in sorted(key_dir.glob(f"K{zone}.+*.key")):
        if re.search(r"\sDNSKEY\s+257\s", key_file.read_text()):
            return run(["dnssec-dsfromkey", "-2", str(key_file)]).strip()
    raise TestbedError(f"{key_dir}: no key-signing key for {zone}")


def bind_json(keys: Keys) -> dict[str, Any]:
    return {
        "primary": PRIMARY,
        "secondary": SECONDARY,
        "rndc_key": str(keys.rndc_file),
        "rndc": {
            "primary": rndc_command(keys, PRIMARY),
            "secondary": rndc_command(keys, SECONDARY),
        },
        "zones": list(ZONES),
        "default_ttl": DEFAULT_TTL,
        "negative_ttl": NEGATIVE_TTL,
        "tsig": {
            "name": TSIG_NAME,
            "algorithm": TSIG_ALGORITHM,
            "secret": keys.tsig_secret,
            "file": str(keys.tsig_file),
        },
    }


def _named(workdir: Path) -> list[str]:
    return ["named", "-4", "-g", "-c", str(workdir / "named.conf")]


def _write_primary(ctx: Context, keys: Keys, broken_tlsa: str) -> Path:
    workdir = ctx.path("bind-primary", "named.conf").parent
    for zone in ZONES:
        body = ZONE_BODIES[zone].format(tlsa=broken_tlsa)
        (workdir / f"{zone}.db").write_text(_zone_file(zone, body))
    zones = "".join(_primary_zone(zone) for zone in ZONES)
    (workdir / "named.conf").write_text(_named_conf(workdir, PRIMARY, keys, zones))
    return workdir


def _write_secondary(ctx: Context, keys: Keys) -> Path:
    workdir = ctx.path("bind-secondary", "named.conf").parent
    zones = "".join(_secondary_zone(zone) for zone in SECONDARY_ZONES)
    (workdir / "named.conf").write_text(_named_conf(workdir, SECONDARY, keys, zones))
    return workdir


def _zone_file(zone: str, body: str) -> str:
    # The SOA record's own TTL is 60 and its MINIMUM 3: negative answers are cached for
    # min(60, 3) = 3 s (RFC 2308 section 5). Refresh 3600: a secondary that gets no NOTIFY
    # (lag.test) serves old data for an hour unless told to transfer.
    soa = f"@ {SOA_TTL} IN SOA ns1.dane.test. hostmaster.{zone}. 1 3600 600 86400 {NEGATIVE_TTL}"
    return f"$TTL {DEFAULT_TTL}\n{soa}\n{body}"


def _named_conf(workdir: Path, address: str, keys: Keys, zones: str) -> str:
    # notify-delay defaults to 5 s: a second update within 5 s would reach the secondary late.
    return f"""\
options {{
    directory "{workdir}";
    pid-file "{workdir}/named.pid";
    session-keyfile "{workdir}/session.key";
    managed-keys-directory "{workdir}";
    listen-on port 53 {{ {address}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify-source {address};
    transfer-source {address};
    allow-transfer {{ 127.0.0.0/8; }};
    notify-delay 0;
}};
include "{keys.rndc_file}";
include "{keys.tsig_file}";
include "{keys.tsig_file.with_name(LIMITED_TSIG_NAME + ".key")}";
controls {{
    inet {address} port {RNDC_PORT} allow {{ 127.0.0.0/8; }} keys {{ "{RNDC_KEY_NAME}"; }};
}};
{zones}"""


def _primary_zone(zone: str) -> str:
    # lag.test and broken.test send no NOTIFY: lag.test's secondary lags until a retransfer.
    notify = "notify no;"
    if zone == "dane.test":
        notify = f"notify explicit; also-notify {{ {SECONDARY}; }};"
    # BIND 9.18: dnssec-policy with inline-signing no signs the dynamic zone in place.
    signing = "dnssec-policy default;\n    inline-signing no;" if zone in SIGNED_ZONES else ""
    return f"""\
zone "{zone}" {{
    type primary;
    file "{zone}.db";
    {signing}
    allow-update {{ key "{TSIG_NAME}"; }};
    {notify}
}};
"""


def _secondary_zone(zone: str) -> str:
    return f"""\
zone "{zone}" {{
    type secondary;
    primaries {{ {PRIMARY}; }};
    file "{zone}.db";
    notify no;
}};
"""
