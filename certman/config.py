"""certman's configuration: one TOML file parsed into frozen dataclasses.

Every error names the file, the TOML key path and what was expected (``ConfigError``, exit 2);
loading never writes anything. See ``contrib/certman.toml.example`` and the README for the schema.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from certman.errors import ConfigError
from certman.tomlreader import Secret, Section, normalize_domain

DEFAULT_CONFIG = Path("/etc/certman/certman.toml")
DEFAULT_STATE_DIR = Path("/var/lib/certman")


class KeyType(StrEnum):
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa")


class Layout(StrEnum):
    """How Postfix reads the key and chain (Postfix TLS_README, "Server-side certificate")."""

    CHAIN_FILES = "chain-files"  # smtpd_tls_chain_files: key + leaf + chain in one file (3.4+)
    KEY_CERT = "key-cert"  # smtpd_tls_key_file + smtpd_tls_cert_file (chain appended)


class Challenge(StrEnum):
    DNS01 = "dns-01"
    HTTP01 = "http-01"


class DhMode(StrEnum):
    GENERATE = "generate"
    RFC7919 = "rfc7919"
    RFC3526 = "rfc3526"
    AUTO = "auto"
    OFF = "off"


@dataclass(frozen=True)
class TlsaParams:
    """A TLSA (usage, selector, matching type) combination, e.g. 3 1 1 (RFC 6698 §2.1)."""

    usage: int
    selector: int
    mtype: int

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype}"


ALLOWED_TLSA = {
    "3 1 1": TlsaParams(3, 1, 1),
    "3 1 2": TlsaParams(3, 1, 2),
    "2 1 1": TlsaParams(2, 1, 1),
}


@dataclass(frozen=True)
class EabConfig:
    kid: str
    hmac_key: Secret


@dataclass(frozen=True)
class AcmeConfig:
    directory: str
    email: str | None
    ca_bundle: Path | None
    account_key: Path
    account_key_type: KeyType
    eab: EabConfig | None
    profile: str | None
    preferred_chain: str | None
    timeout: float
    retries: int


@dataclass(frozen=True)
class ProviderConfig:
    """A named DNS provider instance; ``options`` is what the provider class parsed."""

    name: str
    type: str
    options: Any = field(repr=False)


@dataclass(frozen=True)
class PropagationConfig:
    timeout: float = 600.0
    interval: float = 1.0
    query_timeout: float = 3.0
    min_wait: float = 0.0
    validate: bool = True


@dataclass(frozen=True)
class DaneConfig:
    hosts: tuple[str, ...]
    ports: tuple[int, ...]
    records: tuple[TlsaParams, ...]
    ttl: int | None
    margin: float
    provider: str
    probe_address: str
    rollover_days: int

    def tlsa_names(self) -> list[str]:
        """``_PORT._tcp.HOST`` for every host and port (RFC 6698 §3, RFC 7672 §3.1.1)."""
        return [f"_{port}._tcp.{host}" for host in self.hosts for port in self.ports]


@dataclass(frozen=True)
class InstallConfig:
    layout: Layout
    directory: Path
    postfix_parameters: bool


@dataclass(frozen=True)
class HttpChallengeConfig:
    webroot: Path | None
    listen: str | None
    port: int


@dataclass(frozen=True)
class CertificateConfig:
    name: str
    domains: tuple[str, ...]
    key_types: tuple[KeyType, ...]
    challenge: Challenge
    dns_provider: str | None
    zone_providers: Mapping[str, str]
    http: HttpChallengeConfig | None
    dane: DaneConfig | None
    install: InstallConfig
    renew_fraction: float | None
    use_ari: bool
    profile: str | None

    def provider_for(self, fqdn: str) -> str | None:
        """The provider for ``fqdn``: the longest ``zones`` suffix match, else the default."""
        best = ""
        for zone in self.zone_providers:
            if (fqdn == zone or fqdn.endswith("." + zone)) and len(zone) > len(best):
                best = zone
        return self.zone_providers[best] if best else self.dns_provider


@dataclass(frozen=True)
class PostfixConfig:
    config_dir: Path
    postconf: str
    postfix: str
    reload_command: tuple[str, ...] | None

    def reload_argv(self) -> list[str]:
        if self.reload_command:
            return list(self.reload_command)
        return [self.postfix, "-c", str(self.config_dir), "reload"]


@dataclass(frozen=True)
class DhFile:
    path: Path
    bits: int


@dataclass(frozen=True)
class DhParamsConfig:
    mode: DhMode
    files: tuple[DhFile, ...]
    interval_days: int
    postfix_parameter: str | None
    nice: int
    workers: int


@dataclass(frozen=True)
class Config:
    path: Path
    state_dir: Path
    resolvers: tuple[str, ...]
    acme: AcmeConfig
    providers: Mapping[str, ProviderConfig]
    propagation: PropagationConfig
    postfix: PostfixConfig
    certificates: Mapping[str, CertificateConfig]
    dhparams: DhParamsConfig

    def certificate(self, name: str) -> CertificateConfig:
        try:
            return self.certificates[name]
        except KeyError:
            known = ", ".join(self.certificates) or "none"
            raise ConfigError(
                f"{self.path}: no certificate named {name!r} (configured: {known})"
            ) from None


def config_path(cli_value: str | None) -> Path:
    """``--config``, else ``$CERTMAN_CONFIG``, else /etc/certman/certman.toml."""
    return Path(cli_value or os.environ.get("CERTMAN_CONFIG") or DEFAULT_CONFIG)


def load(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(path, data)


def parse(path: Path, data: Mapping[str, object]) -> Config:
    root = Section(path, "", data)
    general = root.subtable("certman")
    state_dir = general.path("state_dir", DEFAULT_STATE_DIR)
    resolvers = tuple(general.str_list("resolvers", []))
    general.finish()
    acme = _acme(root.subtable("acme"), state_dir)
    providers = _providers(root, resolvers)
    propagation = _propagation(root.subtable("propagation"))
    postfix = _postfix(root.subtable("postfix"))
    certificates = {
        name: _certificate(name, section, providers)
        for name, section in root.tables("certificates")
    }
    dhparams = _dhparams(root.subtable("dhparams"))
    root.finish()
    return Config(
        path, state_dir, resolvers, acme, providers, propagation, postfix, certificates, dhparams
    )


def _acme(s: Section, state_dir: Path) -> AcmeConfig:
    directory = s.string("directory", "https://acme-v02.api.letsencrypt.org/directory")
    if not directory.startswith(("https://", "http://")):
        raise s.error("directory", f"expected an https:// URL, got {directory!r}")
    email = s.opt_string("email")
    if email is not None and ("@" not in email or normalize_domain(email.split("@")[-1]) is None):
        raise s.error("email", f"expected an e-mail address, got {email!r}")
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


def _providers(root: Section, resolvers: tuple[str, ...]) -> dict[str, ProviderConfig]:
    from certman.dns.provider import load_provider_class

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


def _certificate(name: str, s: Section, providers: Mapping[str, object]) -> CertificateConfig:
    domains = tuple(s.domain_list("domains", wildcard=True))
    key_types = _key_types(s)
    challenge = s.choice("challenge", Challenge, Challenge.DNS01)
    default_provider = s.opt_string("dns_provider")
    if default_provider is None and len(providers) == 1:
        default_provider = next(iter(providers))
    elif default_provider is not None:
        default_provider = _provider_ref(s, "dns_provider", default_provider, providers)
    zones_section = s.subtable("zones")
    zone_providers = {}
    for zone in zones_section.keys():  # noqa: SIM118 (a Section, not a dict)
        value = zones_section.string(zone)
        normal = normalize_domain(zone)
        if normal is None:
            raise zones_section.error(zone, "expected a zone name as the key")
        zone_providers[normal] = _provider_ref(zones_section, zone, value, providers)
    zones_section.finish()
    if challenge is Challenge.DNS01:
        for domain in domains:
            if default_provider is None and not _covered(domain, zone_providers):
                raise s.error("dns_provider", f"no DNS provider for {domain} (needed for dns-01)")
    http = _http(s.table("http")) if challenge is Challenge.HTTP01 else None
    if challenge is Challenge.HTTP01 and http is None:
        raise s.error(
            "http", "challenge is http-01: expected a [http] table with webroot or listen"
        )
    dane = _dane(s.table("dane"), domains, default_provider, providers)
    install = _install(s.subtable("postfix"), name)
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


def _covered(domain: str, zones: Mapping[str, str]) -> bool:
    return any(domain == z or domain.endswith("." + z) for z in zones)


def _http(s: Section | None) -> HttpChallengeConfig | None:
    if s is None:
        return None
    webroot = s.opt_path("webroot")
    listen = s.opt_string("listen")
    if (webroot is None) == (listen is None):
        raise s.error(
            "webroot", "expected exactly one of webroot (a directory) or listen (an address)"
        )
    config = HttpChallengeConfig(webroot, listen, s.integer("port", 80, low=1, high=65535))
    s.finish()
    return config


def _dane(
    s: Section | None,
    domains: tuple[str, ...],
    provider: str | None,
    providers: Mapping[str, object],
) -> DaneConfig | None:
    if s is None:
        return None
    if not s.boolean("enabled", True):
        s.finish()
        return None
    hosts = tuple(s.domain_list("hosts", [d for d in domains if not d.startswith("*.")]))
    records = []
    for index, text in enumerate(s.str_list("records", ["3 1 1"])):
        params = ALLOWED_TLSA.get(" ".join(text.split()))
        if params is None:
            allowed = ", ".join(repr(k) for k in ALLOWED_TLSA)
            raise s.error(f"records[{index}]", f"expected one of {allowed}, got {text!r}")
        records.append(params)
    if TlsaParams(2, 1, 1) in records and not s.boolean("allow_issuer_records", False):
        raise s.error(
            "records",
            "'2 1 1' pins the CA's intermediate, which Let's Encrypt rotates; "
            "set allow_issuer_records = true to accept the risk",
        )
    dane_provider = s.opt_string("dns_provider") or provider
    if dane_provider is None:
        raise s.error("dns_provider", "no DNS provider to publish TLSA records with")
    config = DaneConfig(
        hosts=hosts,
        ports=tuple(s.int_list("ports", [25], low=1, high=65535)),
        records=tuple(dict.fromkeys(records)),
        ttl=s.opt_integer("ttl", low=1, high=86400),
        margin=s.number("margin", 60.0, low=0),
        provider=_provider_ref(s, "dns_provider", dane_provider, providers),
        probe_address=s.string("probe_address", "127.0.0.1"),
        rollover_days=s.integer("rollover_days", 0, low=0),
    )
    s.has("allow_issuer_records")
    s.finish()
    return config


def _install(s: Section, name: str) -> InstallConfig:
    config = InstallConfig(
        layout=s.choice("layout", Layout, Layout.CHAIN_FILES),
        directory=s.path("directory", Path("/etc/postfix/certman")),
        postfix_parameters=s.boolean("set_parameters", True),
    )
    s.finish()
    return config


def _dhparams(s: Section) -> DhParamsConfig:
    mode = s.choice("mode", DhMode, DhMode.OFF)
    files = []
    for item in s.table_list("file"):
        bits = item.integer("bits", 2048)
        if bits not in (2048, 3072, 4096, 6144, 8192):
            raise item.error("bits", f"expected 2048, 3072, 4096, 6144 or 8192, got {bits}")
        files.append(DhFile(item.path("path"), bits))
        item.finish()
    if mode in (DhMode.GENERATE, DhMode.RFC7919, DhMode.RFC3526) and not files:
        raise s.error("file", f"mode {mode.value!r} needs at least one [[dhparams.file]]")
    config = DhParamsConfig(
        mode=mode,
        files=tuple(files),
        interval_days=s.integer("interval_days", 30, low=1),
        postfix_parameter=s.opt_string("postfix_parameter"),
        nice=s.integer("nice", 19, low=0, high=19),
        workers=s.integer("workers", 2, low=1, high=64),
    )
    s.finish()
    return config
