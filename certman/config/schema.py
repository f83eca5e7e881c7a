"""certman's configuration schema: frozen dataclasses and enums, defaults filled in.

``certman.config.load`` reads the TOML file into these; docs/configuration.md documents every key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from certman.config.toml import Secret
from certman.errors import ConfigError
from certman.model import KeyType

DEFAULT_CONFIG = Path("/etc/certman/certman.toml")


DEFAULT_STATE_DIR = Path("/var/lib/certman")


# Certificate names become file and directory names under state_dir and the install directory.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
    concurrency: int = 1  # certificates `certman run` advances at once (orders in flight)


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
    first_interval: float = 0.05  # adaptive poll: from this up to ``interval``


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


class TargetKind(StrEnum):
    """Where Postfix reads a certificate from (postconf(5), master(5), TLS_README "SNI")."""

    MAIN = "main.cf"  # smtpd_tls_* in main.cf: every smtpd without its own -o override
    SERVICE = "service"  # -o smtpd_tls_* overrides of one master.cf service (postconf -P)
    SNI = "sni"  # one name's entry in tls_server_sni_maps (Postfix 3.4+, postmap -F)


@dataclass(frozen=True)
class Target:
    """One place a certificate is served: ``main.cf``, ``SERVICE/TYPE``, or ``sni:NAME``."""

    kind: TargetKind
    service: str = ""  # master.cf "name/type", e.g. "submission/inet"
    name: str = ""  # the SNI name

    def __str__(self) -> str:
        if self.kind is TargetKind.SERVICE:
            return self.service
        if self.kind is TargetKind.SNI:
            return f"sni:{self.name}"
        return "main.cf"

    @classmethod
    def parse(cls, text: str) -> Target | None:
        """``main.cf`` | ``NAME/TYPE`` (a master.cf service) | ``sni:HOST``; None if neither."""
        text = text.strip()
        if text == "main.cf":
            return cls(TargetKind.MAIN)
        if text.lower().startswith("sni:"):
            name = text[4:].strip().lower().rstrip(".")
            ok = re.fullmatch(
                r"[a-z0-9*]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+", name
            )
            return cls(TargetKind.SNI, name=name) if ok else None
        if re.fullmatch(r"[A-Za-z0-9_.:\[\]-]+/(inet|unix|fifo|pass|unix-dgram)", text):
            return cls(TargetKind.SERVICE, service=text)
        return None


MAIN_TARGET = Target(TargetKind.MAIN)


@dataclass(frozen=True)
class InstallConfig:
    layout: Layout
    directory: Path
    postfix_parameters: bool
    config_dir: Path = Path("/etc/postfix")  # the Postfix instance (postmulti: its directory)
    targets: tuple[Target, ...] = (MAIN_TARGET,)
    probe_address: str | None = None  # where verification connects; default the DANE one


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
    openssl: str = "openssl"  # the openssl binary `generate` runs (`openssl dhparam`)


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: a Prometheus textfile-collector file, rewritten atomically each run."""

    textfile: Path | None = None


@dataclass(frozen=True)
class NotifyConfig:
    """``[notify]``: who learns of failures, rollbacks, finished rollovers, expiring
    certificates and critical checks; one message per state change."""

    email: tuple[str, ...] = ()
    command: tuple[str, ...] = ()  # argv; the event as JSON on stdin
    sendmail: str = "/usr/sbin/sendmail"
    sender: str | None = None
    expiring_days: float = 14.0


@dataclass(frozen=True)
class FleetConfig:
    """``[fleet]``: one lineage shared by many hosts through an S3 bucket (docs/fleet.md)."""

    bucket: str
    prefix: str
    region: str | None
    endpoint_url: str | None
    host: str
    lease_seconds: float
    key_file: Path
    silent_after: float
    check_interval: float = 3600.0  # an idle run reuses the lineage read this recently
    lead: bool = True  # may take the lease (needs the ACME account and DNS credentials)


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
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    fleet: FleetConfig | None = None  # issue 14: None unless a [fleet] table is configured

    def certificate(self, name: str) -> CertificateConfig:
        try:
            return self.certificates[name]
        except KeyError:
            known = ", ".join(self.certificates) or "none"
            raise ConfigError(
                f"{self.path}: no certificate named {name!r} (configured: {known})"
            ) from None
