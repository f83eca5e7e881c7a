"""``certman preflight``: is this host ready for its first run? Read-only.

Checks, each a one-line finding naming what and where, with the fix when it fails:
- the resolver validates (AD on a signed zone's SOA, RFC 4035 §3.2.3) and each TLSA name's
  zone is signed with a DS chain that validates (RFC 7672 §2.2: DANE needs DNSSEC);
- the DNS provider may change each TLSA name (RFC 2136: proved by an UPDATE that changes
  nothing; other providers: said plainly that it could not be proved);
- the ACME directory answers and, with an existing account key, the account exists;
- every target's port answers TLS (STARTTLS or implicit TLS, with its SNI name);
- Postfix is new enough for the layout (chain files and SNI need 3.4, postconf(5)).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from certman.config.schema import CertificateConfig, Config, Layout, TargetKind
from certman.errors import CertmanError
from certman.lifecycle.context import Context


class Verdict(StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    UNKNOWN = "unproved"


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    text: str

    def line(self) -> str:
        return f"{self.verdict.value:>8}  {self.text}"


def preflight(ctx: Context) -> list[Finding]:
    cfg = ctx.config
    findings: list[Finding] = []
    findings += _dnssec(cfg)
    findings += _providers(ctx)
    findings += _ca(cfg)
    for cert in cfg.certificates.values():
        findings += _postfix(ctx, cert)
    return findings


# --- DNSSEC -----------------------------------------------------------------------------------


def _zones(cfg: Config) -> dict[str, str]:
    """zone -> one TLSA name in it, for every certificate with DANE."""
    from certman.dns.zone import find_zone_name

    zones: dict[str, str] = {}
    for cert in cfg.certificates.values():
        for name in cert.dane.tlsa_names() if cert.dane else []:
            zones.setdefault(find_zone_name(name, cfg.resolvers, 3.0), name)
    return zones


def _dnssec(cfg: Config) -> list[Finding]:
    try:
        zones = _zones(cfg)
    except CertmanError as exc:
        return [Finding(Verdict.FAIL, f"zone lookup: {exc}")]
    return [_zone_finding(cfg, zone, name) for zone, name in sorted(zones.items())]


def _zone_finding(cfg: Config, zone: str, tlsa_name: str) -> Finding:
    import dns.flags
    import dns.rcode

    from certman.dns.zone import (
        exchange,
        make_query,
        resolve_addresses,
        resolver_servers,
        show_server,
        soa_mname,
    )

    server = resolver_servers(cfg.resolvers)[0]
    resolver = f"resolver {show_server(server)}"
    try:
        reply = exchange(make_query(zone, "SOA", recurse=True, dnssec=True), server, 3.0)
        mname = soa_mname(zone, cfg.resolvers, 3.0)
        primary = (resolve_addresses(mname, cfg.resolvers, 3.0) or [mname])[0]
        auth = exchange(make_query(zone, "SOA", recurse=False, dnssec=True), (primary, 53), 3.0)
    except CertmanError as exc:
        return Finding(Verdict.FAIL, f"zone {zone}: {exc}")
    signed_at_primary = any(r.rdtype == 46 for r in auth.answer)  # RRSIG
    signatures = any(r.rdtype == 46 for r in reply.answer)
    if reply.flags & dns.flags.AD:
        return Finding(Verdict.OK, f"{resolver} validates zone {zone} (AD bit), {tlsa_name}")
    if reply.rcode() == dns.rcode.SERVFAIL:
        return Finding(
            Verdict.FAIL,
            f"zone {zone}: DNSSEC validation fails at {resolver} (SERVFAIL): the DS record at "
            "the parent does not match the zone's keys, or its signatures expired; fix the chain",
        )
    if not signed_at_primary:
        return Finding(
            Verdict.FAIL,
            f"zone {zone} is not DNSSEC-signed (primary {mname} [{primary}] serves its SOA "
            f"without RRSIG): sign it and publish its DS at the parent; {tlsa_name} is useless "
            "to DANE senders otherwise (RFC 7672 §2.2)",
        )
    if signatures:
        return Finding(
            Verdict.FAIL,
            f"{resolver} does not validate: zone {zone} comes back with signatures but without "
            "the AD bit; point [certman] resolvers at a validating resolver (e.g. Unbound)",
        )
    return Finding(
        Verdict.FAIL,
        f"zone {zone} is signed but {resolver} sees it as insecure (no AD, no signatures): "
        "publish its DS record at the parent (or the resolver strips DNSSEC)",
    )


# --- DNS provider -----------------------------------------------------------------------------


def _providers(ctx: Context) -> list[Finding]:
    findings = []
    for cert in ctx.config.certificates.values():
        if cert.dane is None:
            continue
        provider = ctx.provider(cert.dane.provider)
        prove = getattr(provider, "prove_update_allowed", None)
        for name in cert.dane.tlsa_names():
            if prove is None:
                findings.append(
                    Finding(
                        Verdict.UNKNOWN,
                        f"certificates.{cert.name}: provider {cert.dane.provider!r} cannot prove "
                        f"without a change that it may write {name} TLSA; the first publish will",
                    )
                )
                continue
            try:
                findings.append(
                    Finding(Verdict.OK, f"certificates.{cert.name}: {prove(name, 'TLSA')}")
                )
            except CertmanError as exc:
                findings.append(
                    Finding(
                        Verdict.FAIL,
                        f"certificates.{cert.name}: {exc}; allow the key to update {name} TLSA "
                        "(BIND: allow-update or an update-policy grant)",
                    )
                )
    return findings


# --- ACME -------------------------------------------------------------------------------------


def _ca(cfg: Config) -> list[Finding]:
    """No retries (``sleep=None``): a preflight answers in seconds, a CA that is down fails."""
    import random
    import time

    from certman.acme.account import jwk_and_alg, lookup_account
    from certman.acme.client import open_client
    from certman.keys import generate_key, read_private_key

    acme = cfg.acme
    exists = acme.account_key.exists()
    key = read_private_key(acme.account_key) if exists else generate_key(acme.account_key_type)
    jwk, alg = jwk_and_alg(key)
    try:
        client = open_client(acme, jwk, alg=alg, sleep=None, clock=time.time, rng=random.Random())
    except CertmanError as exc:
        return [
            Finding(
                Verdict.FAIL,
                f"ACME directory {acme.directory}: {exc}; check [acme] directory, ca_bundle "
                "and that the CA is reachable from this host",
            )
        ]
    findings = [Finding(Verdict.OK, f"ACME directory {acme.directory} answers")]
    if not exists:
        findings.append(
            Finding(Verdict.OK, f"no account key yet ({acme.account_key}): the first run registers")
        )
        return findings
    try:
        url = lookup_account(client, acme.directory)
    except CertmanError as exc:
        return [*findings, Finding(Verdict.FAIL, f"ACME account lookup: {exc}")]
    if url is None:
        findings.append(
            Finding(
                Verdict.FAIL,
                f"ACME {acme.directory} has no account for {acme.account_key}: move the key "
                "away to register a new account, or restore the right key",
            )
        )
    else:
        findings.append(Finding(Verdict.OK, f"ACME account {url} exists"))
    return findings


# --- Postfix ----------------------------------------------------------------------------------


def _too_old(cert: CertificateConfig, config_dir: str, version: str) -> list[Finding]:
    """One line per setting the instance's Postfix cannot run: smtpd_tls_chain_files and
    tls_server_sni_maps exist since Postfix 3.4 (postconf(5))."""
    from certman.postfix.commands import version_tuple

    if version_tuple(version) >= (3, 4):
        return []
    where = f"certificates.{cert.name}.postfix"
    runs = f"{config_dir} runs Postfix {version}"
    findings = [
        Finding(
            Verdict.FAIL,
            f"{where}.targets: {t} needs Postfix 3.4 or later (tls_server_sni_maps); {runs}; "
            "fix: serve the name from a main.cf or master.cf target, or upgrade Postfix",
        )
        for t in cert.install.targets
        if t.kind is TargetKind.SNI
    ]
    if cert.install.layout is Layout.CHAIN_FILES:
        targets = ", ".join(str(t) for t in cert.install.targets)
        findings.append(
            Finding(
                Verdict.FAIL,
                f"{where}.layout: chain-files for {targets} needs Postfix 3.4 or later "
                f'(smtpd_tls_chain_files); {runs}; fix: layout = "key-cert", or upgrade Postfix',
            )
        )
    return findings


def _postfix(ctx: Context, cert: CertificateConfig) -> list[Finding]:
    from certman.dane.probe import fetch_chain
    from certman.lifecycle.steps.deploy import probe_address
    from certman.postfix.targets import endpoints

    where = f"certificates.{cert.name}"
    postfix = ctx.postfix_for(cert)
    try:
        version = postfix.version()
        points = endpoints(cert, postfix)
    except CertmanError as exc:
        return [Finding(Verdict.FAIL, f"{where}: {exc}")]
    findings = _too_old(cert, postfix.config_dir, version)
    address = probe_address(cert)
    for point in points:
        label = f"{where} {point.target}: {address}:{point.port}"
        try:
            fetch_chain(
                address,
                point.port,
                timeout=5.0,
                server_name=point.server_name,
                implicit_tls=point.implicit_tls,
            )
        except CertmanError as exc:
            findings.append(
                Finding(
                    Verdict.FAIL,
                    f"{label}: no TLS ({exc}); is the service in master.cf, Postfix running, "
                    "and probe_address the address it listens on?",
                )
            )
            continue
        protocol = "implicit TLS" if point.implicit_tls else "STARTTLS"
        findings.append(
            Finding(Verdict.OK, f"{label} answers {protocol} (SNI {point.server_name})")
        )
    return findings
