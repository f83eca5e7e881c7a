"""Reading ``[certificates.NAME]`` and its tables (zones, http, dane, postfix) into the schema.

Each check raises ``ConfigError`` naming the file, the key path and what was expected; a
certificate is checked against the others of its Postfix instance (``check_claims``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

from certman.config import paths
from certman.config.schema import (
    _NAME,
    ALLOWED_TLSA,
    CertificateConfig,
    Challenge,
    DaneConfig,
    HttpChallengeConfig,
    InstallConfig,
    Layout,
    Target,
    TlsaParams,
)
from certman.config.toml import Section, normalize_domain
from certman.errors import ConfigError
from certman.model import KeyType


def _provider_ref(s: Section, key: str, value: str, providers: Mapping[str, object]) -> str:
    if value not in providers:
        known = ", ".join(providers) or "none defined"
        raise s.error(key, f"unknown DNS provider {value!r} (providers: {known})")
    return value


def _key_types(s: Section) -> tuple[KeyType, ...]:
    if not s.has("key_type"):
        return (KeyType.ECDSA_P256,)
    raw = s.raw("key_type")
    values = raw if isinstance(raw, list) else [raw]
    kinds = []
    for value in values:
        try:
            kinds.append(KeyType(str(value)))
        except ValueError:
            options = ", ".join(k.value for k in KeyType)
            raise s.error("key_type", f"expected one of {options}, got {value!r}") from None
    if not kinds or len({k.is_rsa for k in kinds}) != len(kinds):
        raise s.error(
            "key_type", "expected one key type, or one RSA and one ECDSA type for a dual setup"
        )
    return tuple(kinds)


def read_certificate(
    name: str, s: Section, providers: Mapping[str, object], config_dir: Path
) -> CertificateConfig:
    if not _NAME.match(name):
        raise ConfigError(
            f"{s.file}: {s.prefix}: expected a certificate name of letters, digits, '.', '_', '-' "
            f"(it names files), got {name!r}"
        )
    domains = _domains(s)
    key_types = _key_types(s)
    challenge = s.choice("challenge", Challenge, Challenge.DNS01)
    default_provider = s.opt_string("dns_provider")
    if default_provider is None and len(providers) == 1:
        default_provider = next(iter(providers))
    elif default_provider is not None:
        default_provider = _provider_ref(s, "dns_provider", default_provider, providers)
    zone_providers = _zones(s.subtable("zones"), providers)
    if challenge is Challenge.DNS01:
        for domain in domains:
            if default_provider is None and not _covered(domain, zone_providers):
                raise s.error("dns_provider", f"no DNS provider for {domain} (needed for dns-01)")
    http = _challenge_http(s, challenge, domains)
    dane = _dane(s.table("dane"), domains, default_provider, zone_providers, providers)
    install = _install(s.subtable("postfix"), name, config_dir)
    renew_fraction = (
        s.number("renew_fraction", low=0.01, high=0.99) if s.has("renew_fraction") else None
    )
    config = CertificateConfig(
        name=name,
        domains=domains,
        key_types=key_types,
        challenge=challenge,
        dns_provider=default_provider,
        zone_providers=zone_providers,
        http=http,
        dane=dane,
        install=install,
        renew_fraction=renew_fraction,
        use_ari=s.boolean("ari", True),
        profile=s.opt_string("profile"),
    )
    s.finish()
    return config


def _domains(s: Section) -> tuple[str, ...]:
    domains = s.domain_list("domains", wildcard=True)
    for index, domain in enumerate(domains):
        if domain in domains[:index]:
            raise s.error(f"domains[{index}]", f"expected each name once, got {domain!r} twice")
    return tuple(domains)


def _zones(s: Section, providers: Mapping[str, object]) -> dict[str, str]:
    """``[certificates.NAME.zones]``: ``"zone" = "provider"``, longest suffix wins."""
    zone_providers = {}
    for zone in s.keys():  # noqa: SIM118 (a Section, not a dict)
        if isinstance(s.raw(zone), dict):
            # example.org = "x" unquoted is the nested table {example = {org = "x"}} in TOML.
            raise s.error(
                zone, 'expected a provider name; quote dotted zones: "example.org" = "NAME"'
            )
        value = s.string(zone)
        normal = normalize_domain(zone)
        if normal is None:
            raise s.error(zone, "expected a zone name as the key")
        zone_providers[normal] = _provider_ref(s, zone, value, providers)
    s.finish()
    return zone_providers


def _covered(domain: str, zones: Mapping[str, str]) -> bool:
    return any(domain == z or domain.endswith("." + z) for z in zones)


def _challenge_http(
    s: Section, challenge: Challenge, domains: tuple[str, ...]
) -> HttpChallengeConfig | None:
    section = s.table("http")
    if challenge is not Challenge.HTTP01:
        if section is not None:
            raise s.error("http", 'expected no [http] table unless challenge = "http-01"')
        return None
    if section is None:
        raise s.error(
            "http", "challenge is http-01: expected a [http] table with webroot or listen"
        )
    for index, domain in enumerate(domains):
        if domain.startswith("*."):
            # RFC 8555 §7.1.3 / CA policy: wildcard identifiers are validated by dns-01 only.
            raise s.error(f"domains[{index}]", f'a wildcard ({domain}) needs challenge = "dns-01"')
    return _http(section)


def _http(s: Section) -> HttpChallengeConfig:
    webroot = s.opt_path("webroot")
    listen = s.opt_string("listen")
    if (webroot is None) == (listen is None):
        raise s.error(
            "webroot", "expected exactly one of webroot (a directory) or listen (an address)"
        )
    if listen is not None:
        try:
            ipaddress.ip_address(listen)
        except ValueError:
            raise s.error("listen", f"expected an IP address, got {listen!r}") from None
    config = HttpChallengeConfig(webroot, listen, s.integer("port", 80, low=1, high=65535))
    s.finish()
    return config


def _tlsa_records(s: Section) -> tuple[TlsaParams, ...]:
    records = []
    for index, text in enumerate(s.str_list("records", ["3 1 1"])):
        params = ALLOWED_TLSA.get(" ".join(text.split()))
        if params is None:
            allowed = ", ".join(repr(k) for k in ALLOWED_TLSA)
            raise s.error(f"records[{index}]", f"expected one of {allowed}, got {text!r}")
        records.append(params)
    allow_issuer = s.boolean("allow_issuer_records", False)
    if TlsaParams(2, 1, 1) in records and not allow_issuer:
        raise s.error(
            "records",
            "'2 1 1' pins the CA's intermediate, which Let's Encrypt rotates; "
            "set allow_issuer_records = true to accept the risk",
        )
    return tuple(dict.fromkeys(records))


def _dane(
    s: Section | None,
    domains: tuple[str, ...],
    provider: str | None,
    zone_providers: Mapping[str, str],
    providers: Mapping[str, object],
) -> DaneConfig | None:
    if s is None:
        return None
    enabled = s.boolean("enabled", True)
    if not enabled:
        # A switched-off [dane] table may keep its settings for later; they are not checked.
        return None
    hosts = tuple(s.domain_list("hosts", [d for d in domains if not d.startswith("*.")]))
    if not hosts:
        raise s.error("hosts", "expected at least one host name for TLSA records")
    records = _tlsa_records(s)
    dane_provider = s.opt_string("dns_provider") or _host_provider(hosts, zone_providers, provider)
    if dane_provider is None:
        raise s.error("dns_provider", "no DNS provider to publish TLSA records with")
    config = DaneConfig(
        hosts=hosts,
        ports=tuple(dict.fromkeys(s.int_list("ports", [25], low=1, high=65535))),
        records=records,
        ttl=s.opt_integer("ttl", low=1, high=86400),
        margin=s.number("margin", 60.0, low=0),
        provider=_provider_ref(s, "dns_provider", dane_provider, providers),
        probe_address=s.string("probe_address", "127.0.0.1"),
        rollover_days=s.integer("rollover_days", 0, low=0),
    )
    s.finish()
    return config


def _host_provider(
    hosts: tuple[str, ...], zone_providers: Mapping[str, str], default: str | None
) -> str | None:
    """The provider of the zones holding the TLSA names, when [zones] maps them all to one."""
    found = set()
    for host in hosts:
        zones = [z for z in zone_providers if host == z or host.endswith("." + z)]
        found.add(zone_providers[max(zones, key=len)] if zones else default)
    return found.pop() if len(found) == 1 else default


def _install(s: Section, name: str, config_dir: Path) -> InstallConfig:
    config = InstallConfig(
        layout=s.choice("layout", Layout, Layout.CHAIN_FILES),
        directory=s.path("directory", Path("/etc/postfix/certman")),
        postfix_parameters=s.boolean("set_parameters", True),
        config_dir=s.opt_path("config_dir") or config_dir,
        targets=_targets(s),
        probe_address=s.opt_string("probe_address"),
    )
    paths.writable_dir(s, "directory", config.directory)
    s.finish()
    return config


def _targets(s: Section) -> tuple[Target, ...]:
    """``targets``: where Postfix serves the certificate (default main.cf only)."""
    targets: list[Target] = []
    for index, text in enumerate(s.str_list("targets", ["main.cf"])):
        target = Target.parse(text)
        if target is None:
            raise s.error(
                f"targets[{index}]",
                f'expected "main.cf", a master.cf service "NAME/TYPE" such as '
                f'"submission/inet", or "sni:HOST", got {text!r}',
            )
        if target in targets:
            raise s.error(f"targets[{index}]", f"{target} is listed twice")
        targets.append(target)
    return tuple(targets)


def check_claims(path: Path, certificates: Mapping[str, CertificateConfig]) -> None:
    """Two certificates may not write one target, nor own one TLSA RRset on one instance:
    each would install over, or publish its keys over, the other's (RFC 7671 §8.1)."""
    targets: dict[tuple[Path, str], str] = {}
    names: dict[tuple[Path, str], str] = {}
    for cert in certificates.values():
        where = cert.install.config_dir
        for target in cert.install.targets:
            other = targets.setdefault((where, str(target)), cert.name)
            if other != cert.name:
                raise ConfigError(
                    f"{path}: certificates.{cert.name}.postfix.targets: {target} of {where} "
                    f"is already the target of certificates.{other}; give each its own target"
                )
        for tlsa in cert.dane.tlsa_names() if cert.dane else []:
            other = names.setdefault((where, tlsa), cert.name)
            if other != cert.name:
                raise ConfigError(
                    f"{path}: certificates.{cert.name}.dane: {tlsa} is already published by "
                    f"certificates.{other} for {where}; one certificate per TLSA name"
                )
