"""``certman init``: read what a Postfix host serves and write a starting configuration.

Read-only: ``postconf -x``/``-P``/``-M`` for main.cf, the master.cf services and the SNI table,
the served certificates for their names, and the validating resolver for the current TLSA
RRsets (their TTL becomes the configured one) and the zone's primary nameserver. Nothing is
written to Postfix or DNS; the caller writes the text to stdout or a new file.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from certman.config.schema import Target, TargetKind
from certman.errors import CertmanError
from certman.postfix.commands import (
    CHAIN_FILES,
    TLS_FILE_PARAMETERS,
    Postfix,
    ServedKey,
    split_list,
)
from certman.postfix.targets import (
    foreign_owner,
    served_keys_for,
    service_port,
    sni_table,
)


@dataclass(frozen=True)
class InitOptions:
    resolvers: tuple[str, ...]
    acme_directory: str
    email: str | None
    ca_bundle: str | None
    tsig_key_file: str | None
    dns_server: str | None
    state_dir: str
    directory: str
    timeout: float = 3.0


@dataclass
class Found:
    """One certificate the host serves, and where."""

    name: str
    domains: list[str]
    targets: list[str]
    ports: list[int]
    served_from: list[str]
    key_types: list[str]
    notes: list[str] = field(default_factory=list)
    ttl: int | None = None


@dataclass
class Scan:
    config_dir: str
    version: str
    hostname: str
    probe_address: str
    layout: str
    certificates: list[Found]
    zone_notes: list[str]
    primary: str | None


def _leaf_names(served: Sequence[ServedKey]) -> list[str]:
    from cryptography import x509

    from certman.keys import load_pem_chain

    names: list[str] = []
    for item in served:
        leaf = load_pem_chain(item.chain_pem, item.source_path)[0]
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            found = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            found = []
        names += [n for n in found if n not in names]
    return names


def _table_name(text: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip("-.") or "cert"
    base, index = name, 2
    while name in taken:
        name, index = f"{base}-{index}", index + 1
    taken.add(name)
    return name


def _smtpd_services(postfix: Postfix) -> list[tuple[str, list[str]]]:
    """(name/type, fields) of every inet service running smtpd (``postconf -M``)."""
    services = []
    for fields in postfix.master_entries():
        if len(fields) >= 8 and fields[1] == "inet" and fields[7] == "smtpd":
            services.append((f"{fields[0]}/inet", fields))
    return services


def scan(postfix: Postfix, options: InitOptions) -> Scan:
    values = postfix.get("myhostname", "inet_interfaces", "mail_version", *TLS_FILE_PARAMETERS)
    hostname = values.get("myhostname", "localhost")
    taken: set[str] = set()
    certificates: list[Found] = []
    main = _found(postfix, Target(TargetKind.MAIN), _table_name(hostname.split(".")[0], taken))
    main.ports = [25]
    if not main.domains:
        main.domains = [hostname]
    certificates.append(main)
    by_files: dict[tuple[str, ...], Found] = {}
    for service, _fields in _smtpd_services(postfix):
        overrides = postfix.get_service(service, *TLS_FILE_PARAMETERS)
        if not any(overrides.values()):
            if service != "smtp/inet":
                main.notes.append(
                    f"{service} (port {service_port(postfix, service)}) serves it too"
                )
            continue
        target = Target(TargetKind.SERVICE, service=service)
        found = _found(postfix, target, "")
        key = tuple(found.served_from)
        if key in by_files:
            by_files[key].targets.append(service)
            by_files[key].ports.append(service_port(postfix, service))
            continue
        found.name = _table_name(service.split("/")[0], taken)
        found.ports = [service_port(postfix, service)]
        by_files[key] = found
        certificates.append(found)
    table = sni_table(postfix)
    if table is not None:
        for line in _lines(table.source):
            target = Target(TargetKind.SNI, name=line.split()[0].lower())
            found = _found(postfix, target, _table_name(target.name, taken))
            found.domains = found.domains or [target.name]
            found.ports = [25]
            certificates.append(found)
    zone_notes, primary = _dns(certificates, options)
    interfaces = [i for i in split_list(values.get("inet_interfaces", "")) if i[0].isdigit()]
    layout = (
        "chain-files"
        if values.get(CHAIN_FILES) or not values.get("smtpd_tls_cert_file")
        else "key-cert"
    )
    return Scan(
        postfix.config_dir,
        values.get("mail_version", ""),
        hostname,
        interfaces[0] if interfaces else "127.0.0.1",
        layout,
        certificates,
        zone_notes,
        primary,
    )


def _lines(source: Path) -> list[str]:
    try:
        text = source.read_text()
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("#", " ", "\t"))]


def _found(postfix: Postfix, target: Target, name: str) -> Found:
    try:
        served = served_keys_for(_Dummy(), postfix, target)  # type: ignore[arg-type]
    except CertmanError as exc:
        return Found(name, [], [str(target)], [], [], [], [f"could not read: {exc}"])
    notes = []
    owner = foreign_owner([s.source_path for s in served])
    if owner:
        notes.append(f"{owner}: see docs/certbot.md before the first run")
    return Found(
        name,
        [n for n in _leaf_names(served) if not n.startswith("*.")],
        [str(target)],
        [],
        [s.source_path for s in served],
        [s.key_type.value for s in served],
        notes,
    )


class _Dummy:
    name = "init"


def _dns(certificates: list[Found], options: InitOptions) -> tuple[list[str], str | None]:
    """Current TLSA RRsets (their TTL is kept) and the zone's primary (SOA MNAME)."""
    from certman.dns.propagation import validated_rrset
    from certman.dns.zone import find_zone_name, resolve_addresses, soa_mname

    notes: list[str] = []
    primary = None
    zones: set[str] = set()
    for found in certificates:
        for host in found.domains[:1]:
            for port in found.ports:
                name = f"_{port}._tcp.{host}"
                try:
                    rrset = validated_rrset(name, "TLSA", options.resolvers, options.timeout)
                except CertmanError as exc:
                    found.notes.append(f"{name}: {exc}")
                    continue
                if rrset is None:
                    found.notes.append(f"{name}: no TLSA RRset published yet")
                else:
                    found.ttl = rrset.ttl if found.ttl is None else max(found.ttl, rrset.ttl)
                    records = ", ".join(sorted(rrset.rdatas))
                    found.notes.append(f"{name}: TTL {rrset.ttl}, {records}")
            try:
                zones.add(find_zone_name(host, options.resolvers, options.timeout))
            except CertmanError as exc:
                notes.append(f"zone of {host}: {exc}")
    for zone in sorted(zones):
        try:
            mname = soa_mname(zone, options.resolvers, options.timeout)
            addresses = resolve_addresses(mname, options.resolvers, options.timeout)
        except CertmanError as exc:
            notes.append(f"zone {zone}: {exc}")
            continue
        notes.append(f"zone {zone}: primary nameserver {mname} ({', '.join(addresses)})")
        primary = primary or (addresses[0] if addresses else None)
    return notes, primary


def render(found: Scan, options: InitOptions, now: float) -> str:
    q = json.dumps
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
    out = [
        f"# Written by `certman init` at {stamp} from what Postfix {found.version} serves",
        f"# ({found.config_dir}). Read it, then: certman config check; certman preflight.",
        "",
        "[certman]",
        f"state_dir = {q(options.state_dir)}",
        f"resolvers = {q(list(options.resolvers))}",
        "",
        "[acme]",
        f"directory = {q(options.acme_directory)}",
    ]
    out.append(
        f"email = {q(options.email)}" if options.email else '#email = "postmaster@example.org"'
    )
    if options.ca_bundle:
        out.append(f"ca_bundle = {q(options.ca_bundle)}")
    out += ["", *[f"# {n}" for n in found.zone_notes]]
    server = options.dns_server or found.primary or "192.0.2.53"
    prefix = "" if options.tsig_key_file else "#"
    if not options.tsig_key_file:
        out.append("# Fill in the TSIG key allowed to update the TLSA names (RFC 2136), or another")
        out.append("# provider (docs/providers.md); certman never writes DNS before you run it.")
    out += [
        f"{prefix}[dns.main]",
        f'{prefix}type = "rfc2136"',
        f"{prefix}server = {q(server)}",
        f"{prefix}tsig_key_file = {q(options.tsig_key_file or '/etc/certman/tsig.key')}",
        "",
        "[postfix]",
        f"config_dir = {q(found.config_dir)}",
    ]
    for cert in found.certificates:
        out += _render_cert(cert, found, options)
    return "\n".join(out) + "\n"


def _render_cert(cert: Found, found: Scan, options: InitOptions) -> list[str]:
    q = json.dumps
    kinds = cert.key_types or ["ecdsa-p256"]
    key_type = q(kinds[0]) if len(kinds) == 1 else q(kinds)
    out = ["", f"# Served from: {', '.join(cert.served_from) or 'nothing yet'}"]
    out += [f"# {note}" for note in cert.notes]
    out += [
        f"[certificates.{cert.name}]",
        f"domains = {q(cert.domains)}",
        f"key_type = {key_type}",
        "",
        f"[certificates.{cert.name}.dane]",
        f"ports = {q(sorted(set(cert.ports)))}",
    ]
    out.append(f"ttl = {cert.ttl}" if cert.ttl else "#ttl = 300")
    out += [
        f"probe_address = {q(found.probe_address)}",
        "",
        f"[certificates.{cert.name}.postfix]",
        f"layout = {q(found.layout)}",
        f"directory = {q(options.directory)}",
        f"targets = {q(cert.targets)}",
    ]
    return out
