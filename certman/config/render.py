"""The effective configuration as ``certman config check`` prints it: TOML that loads back the same.

The inverse of ``certman.config.load``: the tables and keys of the file (``[dns.NAME]``, ``ari``,
``set_parameters``), every default written out, enums as their values, paths as strings. A secret
shows only where it comes from (``NAME_file = "/path"`` or ``NAME_env = "VARIABLE"``), never its
value. TOML has no null: a None value is left out, which the loader reads back as None.
Options of a third-party DNS provider are not shown (certman cannot tell which of them are
secrets); a comment says so.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from certman.config.schema import (
    AcmeConfig,
    CertificateConfig,
    Config,
    DaneConfig,
    DhParamsConfig,
    HttpChallengeConfig,
    InstallConfig,
    PostfixConfig,
    PropagationConfig,
    ProviderConfig,
    TlsaParams,
)
from certman.config.toml import Secret
from certman.plugins import BUILTIN_PROVIDERS

Items = Sequence[tuple[str, object]]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def describe_config(cfg: Config) -> list[str]:
    """The effective configuration as lines of TOML; ``load.parse`` of them gives ``cfg`` back."""
    lines = [f"# effective configuration from {_string(str(cfg.path))[1:-1]}"]
    lines += _table("certman", [("state_dir", cfg.state_dir), ("resolvers", cfg.resolvers)])
    lines += _acme(cfg.acme)
    for provider in cfg.providers.values():
        lines += _provider(provider)
    lines += _table("propagation", _propagation(cfg.propagation))
    lines += _table("postfix", _postfix(cfg.postfix))
    for cert in cfg.certificates.values():
        lines += _certificate(cert)
    lines += _dhparams(cfg.dhparams)
    lines += _table("metrics", [("textfile", cfg.metrics.textfile)])
    n = cfg.notify
    lines += _table(
        "notify",
        [
            ("email", n.email or None),
            ("command", n.command or None),
            ("sendmail", n.sendmail),
            ("sender", n.sender),
            ("expiring_days", n.expiring_days),
        ],
    )
    if cfg.fleet is not None:  # issue 14
        fleet = cfg.fleet
        lines += _table(
            "fleet", [(f.name, getattr(fleet, f.name)) for f in dataclasses.fields(fleet)]
        )
    return lines


# -- TOML text ----------------------------------------------------------------------------------


def _table(header: str, items: Items, *, array: bool = False) -> list[str]:
    """A blank line, ``[header]`` (``[[header]]`` for an array of tables) and its keys."""
    brackets = ("[[", "]]") if array else ("[", "]")
    lines = ["", f"{brackets[0]}{header}{brackets[1]}"]
    return lines + [f"{_key(key)} = {_value(value)}" for key, value in items if value is not None]


def _key(key: str) -> str:
    """A bare key when TOML allows one, else a quoted key (``"example.org"``)."""
    return key if _BARE_KEY.match(key) else _string(key)


def _string(text: str) -> str:
    # JSON escapes quotes, backslashes and C0 controls the way TOML basic strings do; TOML also
    # forbids a raw DEL (U+007F) there (TOML 1.0, "String").
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: object) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass in Python
        return "true" if value else "false"
    if isinstance(value, Enum):
        return _string(str(value.value))
    if isinstance(value, str | Path | TlsaParams):
        return _string(str(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 30.0, 1e-05, inf, nan: all valid TOML floats
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _secret(key: str, source: str) -> tuple[str, str]:
    """``Secret.source`` (``file:/path`` or ``env:NAME``) as the key the file gave it in."""
    kind, _, where = source.partition(":")
    return f"{key}_{kind}", where


# -- the tables -----------------------------------------------------------------------------------


def _acme(acme: AcmeConfig) -> list[str]:
    items: Items = [
        ("directory", acme.directory),
        ("email", acme.email),
        ("ca_bundle", acme.ca_bundle),
        ("account_key", acme.account_key),
        ("account_key_type", acme.account_key_type),
        ("profile", acme.profile),
        ("preferred_chain", acme.preferred_chain),
        ("timeout", acme.timeout),
        ("retries", acme.retries),
        ("concurrency", acme.concurrency),
    ]
    lines = _table("acme", items)
    if acme.eab is not None:
        eab = [("kid", acme.eab.kid), _secret("hmac_key", acme.eab.hmac_key.source)]
        lines += _table("acme.eab", eab)
    return lines


def _provider(provider: ProviderConfig) -> list[str]:
    header = f"dns.{_key(provider.name)}"
    options = provider.options
    if provider.type not in BUILTIN_PROVIDERS or not dataclasses.is_dataclass(options):
        note = f"# options of provider type {provider.type!r} (not built in) are not shown"
        return [*_table(header, [("type", provider.type)]), note]
    return _table(header, [("type", provider.type), *_provider_options(options)])


def _provider_options(options: Any) -> Items:
    """A built-in provider's options: their fields are named after the keys they come from."""
    items: list[tuple[str, object]] = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if not f.repr or value is None:
            continue  # repr=False marks the secret value itself (PowerDNS api_key)
        if isinstance(value, Secret):
            items.append(_secret(f.name, value.source))
        elif f.name.endswith("_source"):  # PowerDNS api_key_source -> api_key_file / _env
            items.append(_secret(f.name.removesuffix("_source"), value))
        elif f.name == "tsig":  # rfc2136: the TsigKey read from tsig_key_file / tsig_key_env
            items += [_secret("tsig_key", value.source), ("tsig_key_name", value.name)]
        else:
            items.append((f.name, value))
    return items


def _propagation(p: PropagationConfig) -> Items:
    return [
        ("timeout", p.timeout),
        ("interval", p.interval),
        ("query_timeout", p.query_timeout),
        ("min_wait", p.min_wait),
        ("validate", p.validate),
        ("first_interval", p.first_interval),
    ]


def _postfix(p: PostfixConfig) -> Items:
    return [
        ("config_dir", p.config_dir),
        ("postconf", p.postconf),
        ("postfix", p.postfix),
        ("reload_command", p.reload_command),  # None: postfix -c <config_dir> reload
    ]


def _certificate(cert: CertificateConfig) -> list[str]:
    base = f"certificates.{_key(cert.name)}"
    key_type = cert.key_types[0] if len(cert.key_types) == 1 else cert.key_types
    items: Items = [
        ("domains", cert.domains),
        ("key_type", key_type),
        ("challenge", cert.challenge),
        ("dns_provider", cert.dns_provider),
        ("ari", cert.use_ari),
        ("renew_fraction", cert.renew_fraction),  # None: certman's own rule
        ("profile", cert.profile),
    ]
    lines = _table(base, items)
    if cert.zone_providers:
        lines += _table(f"{base}.zones", list(cert.zone_providers.items()))
    if cert.http is not None:
        lines += _table(f"{base}.http", _http(cert.http))
    if cert.dane is not None:
        lines += _table(f"{base}.dane", _dane(cert.dane))
    return lines + _table(f"{base}.postfix", _install(cert.install))


def _http(http: HttpChallengeConfig) -> Items:
    return [("webroot", http.webroot), ("listen", http.listen), ("port", http.port)]


def _dane(dane: DaneConfig) -> Items:
    return [
        ("enabled", True),
        ("hosts", dane.hosts),
        ("ports", dane.ports),
        ("records", dane.records),
        # '2 1 1' is accepted only with this flag (load._tlsa_records).
        ("allow_issuer_records", TlsaParams(2, 1, 1) in dane.records),
        ("ttl", dane.ttl),  # None: the existing RRset's TTL
        ("margin", dane.margin),
        ("dns_provider", dane.provider),
        ("probe_address", dane.probe_address),
        ("rollover_days", dane.rollover_days),
    ]


def _install(install: InstallConfig) -> Items:
    return [
        ("layout", install.layout),
        ("directory", install.directory),
        ("set_parameters", install.postfix_parameters),
        ("config_dir", install.config_dir),
        ("targets", [str(target) for target in install.targets]),
        ("probe_address", install.probe_address),
    ]


def _dhparams(dh: DhParamsConfig) -> list[str]:
    items: Items = [
        ("mode", dh.mode),
        ("interval_days", dh.interval_days),
        ("postfix_parameter", dh.postfix_parameter),
        ("nice", dh.nice),
        ("workers", dh.workers),
        ("openssl", dh.openssl),
    ]
    lines = _table("dhparams", items)
    for file in dh.files:
        lines += _table("dhparams.file", [("path", file.path), ("bits", file.bits)], array=True)
    return lines
