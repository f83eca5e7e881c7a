"""Loading the configuration: read the file, parse the TOML tree into the schema's dataclasses.

Every check raises ``ConfigError`` naming the file, the key path and what was expected.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from certman.config.schema import (
    _NAME,
    ALLOWED_TLSA,
    DEFAULT_CONFIG,
    DEFAULT_STATE_DIR,
    AcmeConfig,
    CertificateConfig,
    Challenge,
    Config,
    DaneConfig,
    DhFile,
    DhMode,
    DhParamsConfig,
    EabConfig,
    FleetConfig,
    HttpChallengeConfig,
    InstallConfig,
    Layout,
    MetricsConfig,
    NotifyConfig,
    PostfixConfig,
    PropagationConfig,
    ProviderConfig,
    Target,
    TlsaParams,
)
from certman.config.toml import Section, normalize_domain
from certman.errors import ConfigError
from certman.model import KeyType


def parse(path: Path, data: Mapping[str, object]) -> Config:
    root = Section(path, "", data)
    general = root.subtable("certman")
    state_dir = general.path("state_dir", DEFAULT_STATE_DIR)
    resolvers = _resolvers(general)
    general.finish()
    acme = _acme(root.subtable("acme"), state_dir)
    providers = _providers(root, resolvers)
    propagation = _propagation(root.subtable("propagation"))
    postfix = _postfix(root.subtable("postfix"))
    certificates = {
        name: _certificate(name, section, providers, postfix.config_dir)
        for name, section in root.tables("certificates")
    }
    _check_claims(path, certificates)
    dhparams = _dhparams(root.subtable("dhparams"))
    metrics = _metrics(root.subtable("metrics"))
    notify = _notify(root.subtable("notify"))
    fleet_section = root.table("fleet")
    fleet = _fleet(fleet_section) if fleet_section is not None else None
    root.finish()
    return Config(
        path,
        state_dir,
        resolvers,
        acme,
        providers,
        propagation,
        postfix,
        certificates,
        dhparams,
        metrics,
        notify,
        fleet,
    )


def _metrics(s: Section) -> MetricsConfig:
    config = MetricsConfig(textfile=s.opt_path("textfile"))
    s.finish()
    return config


def _notify(s: Section) -> NotifyConfig:
    emails = s.str_list("email", [], nonempty=False)
    for index, address in enumerate(emails):
        if "@" not in address or address.startswith("-") or any(c.isspace() for c in address):
            raise s.error(f"email[{index}]", f"expected a mail address, got {address!r}")
    config = NotifyConfig(
        email=tuple(emails),
        command=tuple(s.str_list("command", [], nonempty=False)),
        sendmail=s.string("sendmail", "/usr/sbin/sendmail"),
        sender=s.opt_string("sender"),
        expiring_days=s.number("expiring_days", 14.0, low=0),
    )
    s.finish()
    return config


def _fleet(s: Section) -> FleetConfig:
    """``[fleet]`` (docs/fleet.md); credentials come from boto3's usual chain, never from here."""
    import socket

    prefix = s.string("prefix", "certman").strip("/")
    host = s.opt_string("host") or socket.gethostname().split(".")[0] or "localhost"
    if not _NAME.match(host):
        raise s.error("host", f"expected a name of letters, digits, '.', '_' or '-', got {host!r}")
    endpoint = s.opt_string("endpoint_url")
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise s.error("endpoint_url", f"expected an http(s) URL, got {endpoint!r}")
    config = FleetConfig(
        bucket=s.string("bucket"),
        prefix=prefix,
        region=s.opt_string("region"),
        endpoint_url=endpoint,
        host=host,
        lease_seconds=s.number("lease_seconds", 300.0, low=2),
        key_file=s.path("key_file"),
        silent_after=s.number("silent_after", 3 * 86400.0, low=1),
        check_interval=s.number("check_interval", 3600.0, low=0),
        lead=s.boolean("lead", True),
    )
    s.finish()
    return config


def _resolvers(s: Section) -> tuple[str, ...]:
    """Validating resolvers as ``ADDRESS`` or ``ADDRESS@PORT`` (dnspython asks addresses)."""
    values = s.str_list("resolvers", [], nonempty=False)
    for index, value in enumerate(values):
        address, at, port = value.strip().partition("@")
        try:
            ipaddress.ip_address(address)
            ok = not at or (port.isdigit() and 0 < int(port) < 65536)
        except ValueError:
            ok = False
        if not ok:
            raise s.error(
                f"resolvers[{index}]", f"expected an IP address, optionally @PORT, got {value!r}"
            )
    return tuple(values)


def _acme(s: Section, state_dir: Path) -> AcmeConfig:
    directory = s.string("directory", "https://acme-v02.api.letsencrypt.org/directory")
    url = urlsplit(directory)
    if url.scheme not in ("https", "http") or not url.hostname or " " in directory:
        raise s.error("directory", f"expected an https:// URL, got {directory!r}")
    email = s.opt_string("email")
    if email is not None and not _is_email(email):
        raise s.error("email", f"expected an e-mail address like name@example.org, got {email!r}")
    ca_bundle = s.opt_path("ca_bundle")
    if ca_bundle is not None and not ca_bundle.is_file():
        raise s.error("ca_bundle", f"file {ca_bundle} does not exist")
    account_key = s.path("account_key", state_dir / "acme" / "account.key")
    key_type = s.choice("account_key_type", KeyType, KeyType.ECDSA_P256)
    eab_section = s.table("eab")
    eab = None
    if eab_section is not None:
        hmac = eab_section.secret("hmac_key")
        assert hmac is not None
        eab = EabConfig(eab_section.string("kid"), hmac)
        eab_section.finish()
    config = AcmeConfig(
        directory=directory,
        email=email,
        ca_bundle=ca_bundle,
        account_key=account_key,
        account_key_type=key_type,
        eab=eab,
        profile=s.opt_string("profile"),
        preferred_chain=s.opt_string("preferred_chain"),
        timeout=s.number("timeout", 30.0, low=1),
        retries=s.integer("retries", 4, low=0, high=20),
    )
    s.finish()
    return config


def _is_email(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    ok_local = bool(local) and "@" not in local and not any(c.isspace() for c in local)
    return bool(at) and ok_local and normalize_domain(domain) is not None


def _providers(root: Section, resolvers: tuple[str, ...]) -> dict[str, ProviderConfig]:
    from certman.plugins import load_provider_class

    providers = {}
    for name, section in root.tables("dns"):
        type_name = section.string("type")
        cls = load_provider_class(type_name, f"{section.file}: {section.key_path('type')}")
        options = cls.parse_options(section)
        section.finish()
        providers[name] = ProviderConfig(name, type_name, options)
    return providers


def _propagation(s: Section) -> PropagationConfig:
    config = PropagationConfig(
        timeout=s.number("timeout", 600.0, low=1),
        interval=s.number("interval", 1.0, low=0.05),
        query_timeout=s.number("query_timeout", 3.0, low=0.1),
        min_wait=s.number("min_wait", 0.0, low=0),
        validate=s.boolean("validate", True),
        first_interval=s.number("first_interval", 0.05, low=0.01),
    )
    s.finish()
    return config


def _postfix(s: Section) -> PostfixConfig:
    config_dir = s.path("config_dir", Path("/etc/postfix"))
    reload = s.str_list("reload_command", [])
    config = PostfixConfig(
        config_dir=config_dir,
        postconf=s.string("postconf", "postconf"),
        postfix=s.string("postfix", "postfix"),
        reload_command=tuple(reload) or None,
    )
    s.finish()
    return config


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


def _certificate(
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


def _check_claims(path: Path, certificates: Mapping[str, CertificateConfig]) -> None:
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


def _dhparams(s: Section) -> DhParamsConfig:
    mode = s.choice("mode", DhMode, DhMode.OFF)
    files: list[DhFile] = []
    for index, item in enumerate(s.table_list("file")):
        files.append(_dh_file(item, mode))
        if files[-1].path in [f.path for f in files[:-1]]:
            raise s.error(f"file[{index}]", f"{files[-1].path} is listed twice")
    if mode in (DhMode.GENERATE, DhMode.RFC7919, DhMode.RFC3526) and not files:
        raise s.error("file", f"mode {mode.value!r} needs at least one [[dhparams.file]]")
    parameter = s.opt_string("postfix_parameter")
    if parameter is not None and not re.fullmatch(r"[a-z0-9_]+", parameter):
        raise s.error("postfix_parameter", f"expected a main.cf parameter name, got {parameter!r}")
    config = DhParamsConfig(
        mode=mode,
        files=tuple(files),
        interval_days=s.integer("interval_days", 30, low=1),
        postfix_parameter=parameter,
        nice=s.integer("nice", 19, low=0, high=19),
        workers=s.integer("workers", 2, low=1, high=64),
        openssl=s.string("openssl", "openssl"),
    )
    s.finish()
    return config


def _dh_file(item: Section, mode: DhMode) -> DhFile:
    """One ``[[dhparams.file]]``: never below 2048 bits (Logjam; RFC 7919 §1); generation only up
    to 4096 bits (a safe-prime search for 6144 or 8192 bits takes hours of CPU)."""
    bits = item.integer("bits", 2048)
    if bits not in (2048, 3072, 4096, 6144, 8192):
        weak = " (DH parameters below 2048 bits are refused as too weak)" if bits < 2048 else ""
        raise item.error("bits", f"expected 2048, 3072, 4096, 6144 or 8192, got {bits}{weak}")
    if mode is DhMode.GENERATE and bits > 4096:
        raise item.error(
            "bits",
            f"expected 2048, 3072 or 4096 for mode generate, got {bits} (6144 and 8192 only with "
            "mode rfc7919 or rfc3526: generating them takes hours)",
        )
    path = item.path("path")
    item.finish()
    return DhFile(path, bits)


def config_path(cli_value: str | None) -> Path:
    """``--config``, else ``$CERTMAN_CONFIG``, else /etc/certman/certman.toml."""
    return Path(cli_value or os.environ.get("CERTMAN_CONFIG") or DEFAULT_CONFIG)


def load_config(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(path, data)
