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

from certman.config import paths
from certman.config.certificates import check_claims, read_certificate
from certman.config.schema import (
    _NAME,
    DEFAULT_CONFIG,
    DEFAULT_STATE_DIR,
    AcmeConfig,
    Config,
    DhFile,
    DhMode,
    DhParamsConfig,
    EabConfig,
    FleetConfig,
    MetricsConfig,
    NotifyConfig,
    PostfixConfig,
    PropagationConfig,
    ProviderConfig,
)
from certman.config.toml import Section, normalize_domain
from certman.errors import ConfigError
from certman.model import KeyType


def parse(path: Path, data: Mapping[str, object]) -> Config:
    root = Section(path, "", data)
    general = root.subtable("certman")
    state_dir = general.path("state_dir", DEFAULT_STATE_DIR)
    paths.writable_dir(general, "state_dir", state_dir)
    resolvers = _resolvers(general)
    general.finish()
    acme = _acme(root.subtable("acme"), state_dir)
    providers = _providers(root, resolvers)
    propagation = _propagation(root.subtable("propagation"))
    postfix = _postfix(root.subtable("postfix"))
    certificates = {
        name: read_certificate(name, section, providers, postfix.config_dir)
        for name, section in root.tables("certificates")
    }
    check_claims(path, certificates)
    dhparams = _dhparams(root.subtable("dhparams"))
    metrics = _metrics(root.subtable("metrics"))
    notify = _notify(root.subtable("notify"))
    fleet_section = root.table("fleet")
    fleet = _fleet(fleet_section) if fleet_section is not None else None
    root.finish()
    if not certificates and dhparams.mode is DhMode.OFF:
        raise ConfigError(
            f"{path}: manages nothing: expected a [certificates.NAME] table or [dhparams] mode"
        )
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
        concurrency=s.integer("concurrency", 1, low=1, high=16),
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
    paths.existing_dir(s, "config_dir", config_dir)
    reload = s.str_list("reload_command", [])
    config = PostfixConfig(
        config_dir=config_dir,
        postconf=s.string("postconf", "postconf"),
        postfix=s.string("postfix", "postfix"),
        reload_command=tuple(reload) or None,
    )
    paths.program(s, "postconf", config.postconf)
    if config.reload_command is None:
        paths.program(s, "postfix", config.postfix)
    s.finish()
    return config


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
    raw = paths.read_config_file(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(path, data)
