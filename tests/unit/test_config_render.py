"""`config check` prints the effective configuration as TOML that loads back to the same Config.

For each configuration: the output parses as TOML, loading it gives a Config equal to the original
(ignoring ``path``), rendering that again gives the same text, and no secret value appears.
"""

from __future__ import annotations

import dataclasses
import textwrap
import tomllib
from pathlib import Path

import pytest
from test_config_example import rewritten
from test_config_support import TEST_PROVIDER, install_test_provider

from certman.config.load import load_config, parse
from certman.config.render import describe_config
from certman.config.schema import Config

# Realistic secrets (random, never used anywhere), so a leak of any of them shows.
TSIG_SECRET = "pnuCA5KrZ5y9bKgLuTH++9Q6VftTgALsIsty4Ma0LU8="
TSIG_ENV_SECRET = "hmac-sha512:ddns-key.example.org:Vq0w8tJ3kXb1yZc7Ue2Rg9Hs4Nd6Lf5Pa0Mx3Ko8Wj1="
PDNS_API_KEY = "Zx9LqT2vW8pR4mN7kJ3hF6dS1aY5uE0c"
EAB_HMAC_KEY = "aW50ZXJuYWwtZWFiLWhtYWMta2V5LWZvci1jZXJ0bWFuLXRlc3Q"
SECRETS = (TSIG_SECRET, TSIG_ENV_SECRET, PDNS_API_KEY, EAB_HMAC_KEY)

TSIG_FILE = f'key "certman-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{TSIG_SECRET}";\n}};\n'

RFC2136_ENV = """
    [certman]
    state_dir = "@TMP@/state"
    resolvers = ["127.0.0.53", "::1@5353"]

    [acme.eab]
    kid = "kid-1"
    hmac_key_env = "CERTMAN_TEST_EAB"

    [dns."ns1.example.org"]
    type = "rfc2136"
    tsig_key_env = "CERTMAN_TEST_TSIG"
    timeout = 2.5

    [certificates."mx.example"]
    domains = ["MX1.Example.org.", "*.mail.example.org"]
    key_type = ["rsa4096", "ecdsa-p384"]
    renew_fraction = 0.5
    ari = false

    [certificates."mx.example".dane]
    hosts = ["mx1.example.org"]
    ports = [25, 465, 25]
    records = ["3 1 1", "3  1 2", "2 1 1"]
    allow_issuer_records = true
    ttl = 300
    margin = 0.25

    [certificates."mx.example".postfix]
    layout = "key-cert"
    set_parameters = false
"""

POWERDNS_EXEC_ROUTE53 = """
    [acme]
    directory = "https://acme.internal.example/directory"
    ca_bundle = "@TMP@/ca.pem"
    preferred_chain = "Root \\"X1\\" \\\\ ünïcode\\ttab"

    [dns.pdns]
    type = "powerdns"
    api_url = "https://pdns.example.org:8081/api/v1/"
    api_key_env = "CERTMAN_TEST_PDNS"
    ca_bundle = "@TMP@/ca.pem"

    [dns.script]
    type = "exec"
    command = ["/usr/local/bin/dns-hook", "--zone=example.net", "a b"]

    [dns.aws]
    type = "route53"
    hosted_zone_id = "/hostedzone/Z0123456789"

    [propagation]
    timeout = 1e3
    validate = false

    [postfix]
    config_dir = "@TMP@/postfix-out"
    reload_command = ["/usr/sbin/postmulti", "-i", "postfix-out", "-p", "reload"]

    [certificates.web]
    domains = ["www.example.org"]
    challenge = "http-01"
    dns_provider = "pdns"
    profile = "shortlived"

    [certificates.web.zones]
    "example.net" = "script"
    "sub.example.org" = "aws"

    [certificates.web.http]
    webroot = "/var/www/html"

    [certificates.web.dane]
    hosts = ["smtp.example.net"]
    ports = [587]
    rollover_days = 90

    [certificates.web.postfix]
    targets = ["submission/inet", "sni:smtp.example.net"]
    probe_address = "192.0.2.1"

    [certificates.off]
    domains = ["other.example.org"]
    dns_provider = "aws"

    [certificates.off.dane]
    enabled = false
    dns_provider = "later"

    [dhparams]
    mode = "rfc7919"
    postfix_parameter = "smtpd_tls_dh1024_param_file"
    openssl = "/usr/local/bin/openssl"

    [[dhparams.file]]
    path = "/etc/postfix/dh8192.pem"
    bits = 8192

    [[dhparams.file]]
    path = "/etc/postfix/dh3072.pem"
    bits = 3072
"""

HTTP_ONLY = """
    [certificates.mail]
    domains = ["mail.example.org"]
    challenge = "http-01"

    [certificates.mail.http]
    listen = "::"
    port = 8080

    [dhparams]
    mode = "auto"
"""


@pytest.fixture
def secrets_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CERTMAN_TEST_TSIG", TSIG_ENV_SECRET)
    monkeypatch.setenv("CERTMAN_TEST_PDNS", PDNS_API_KEY)
    monkeypatch.setenv("CERTMAN_TEST_EAB", EAB_HMAC_KEY)
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "postfix-out").mkdir()
    return tmp_path


def write_config(tmp: Path, text: str) -> Path:
    path = tmp / "certman.toml"
    path.write_text(textwrap.dedent(text).replace("@TMP@", str(tmp)), encoding="utf-8")
    return path


def example(tmp: Path, *, everything: bool) -> Path:
    """contrib/certman.toml.example, loadable here, its secret files holding realistic secrets."""
    path = rewritten(tmp, everything=everything)
    (tmp / "etc-certman" / "tsig.key").write_text(TSIG_FILE)
    (tmp / "etc-certman" / "eab.key").write_text(EAB_HMAC_KEY + "\n")
    (tmp / "etc-certman" / "pdns-api.key").write_text(PDNS_API_KEY + "\n")
    return path


def assert_round_trip(cfg: Config, tmp: Path) -> str:
    """The four promises of `config check`; returns the rendered text."""
    text = "\n".join(describe_config(cfg)) + "\n"
    data = tomllib.loads(text)  # (1) valid TOML
    again_path = tmp / "rendered.toml"
    again = parse(again_path, data)
    assert again == dataclasses.replace(cfg, path=again_path)  # (2) the same configuration
    assert describe_config(again)[1:] == text.splitlines()[1:]  # (3) a fixed point
    for secret in SECRETS:  # (4) sources only, never a value
        assert secret not in text
        assert secret[:12] not in text
    return text


def test_the_shipped_example_renders_to_toml_that_loads_back_the_same(
    secrets_env: Path,
) -> None:
    text = assert_round_trip(load_config(example(secrets_env, everything=False)), secrets_env)
    assert "[dns.primary]" in text
    assert f'tsig_key_file = "{secrets_env}/etc-certman/tsig.key"' in text


def test_the_example_with_every_alternative_round_trips(secrets_env: Path) -> None:
    cfg = load_config(example(secrets_env, everything=True))
    assert {p.type for p in cfg.providers.values()} == {"rfc2136", "route53", "powerdns", "exec"}
    text = assert_round_trip(cfg, secrets_env)
    assert f'hmac_key_file = "{secrets_env}/etc-certman/eab.key"' in text
    assert f'api_key_file = "{secrets_env}/etc-certman/pdns-api.key"' in text
    assert 'layout = "key-cert"' in text
    assert "set_parameters = true" in text
    assert '"example.net" = "aws"' in text


def test_secrets_from_the_environment_render_as_the_variable_name(secrets_env: Path) -> None:
    cfg = load_config(write_config(secrets_env, RFC2136_ENV))
    text = assert_round_trip(cfg, secrets_env)
    assert 'tsig_key_env = "CERTMAN_TEST_TSIG"' in text
    assert 'tsig_key_name = "ddns-key.example.org"' in text
    assert 'hmac_key_env = "CERTMAN_TEST_EAB"' in text
    assert '[dns."ns1.example.org"]' in text
    assert '[certificates."mx.example".dane]' in text


def test_issuer_records_keep_the_flag_that_allows_them(secrets_env: Path) -> None:
    text = assert_round_trip(load_config(write_config(secrets_env, RFC2136_ENV)), secrets_env)
    assert 'records = ["3 1 1", "3 1 2", "2 1 1"]' in text
    assert "allow_issuer_records = true" in text
    assert "ports = [25, 465]" in text


def test_powerdns_exec_route53_http_webroot_and_dhparams_round_trip(secrets_env: Path) -> None:
    cfg = load_config(write_config(secrets_env, POWERDNS_EXEC_ROUTE53))
    text = assert_round_trip(cfg, secrets_env)
    assert 'api_key_env = "CERTMAN_TEST_PDNS"' in text
    assert 'api_url = "https://pdns.example.org:8081"' in text
    assert 'command = ["/usr/local/bin/dns-hook", "--zone=example.net", "a b"]' in text
    assert 'webroot = "/var/www/html"' in text
    assert "[[dhparams.file]]" in text
    assert "timeout = 1000.0" in text


def test_defaults_are_written_out_and_unset_values_left_out(secrets_env: Path) -> None:
    cfg = load_config(write_config(secrets_env, HTTP_ONLY))
    text = assert_round_trip(cfg, secrets_env)
    for line in (
        'state_dir = "/var/lib/certman"',
        "resolvers = []",
        'account_key_type = "ecdsa-p256"',
        "retries = 4",
        'key_type = "ecdsa-p256"',
        "ari = true",
        'directory = "/etc/postfix/certman"',
        'mode = "auto"',
        "interval_days = 30",
    ):
        assert line in text.splitlines()
    for absent in ("None", "null", "reload_command", "renew_fraction", "email", "[dns."):
        assert absent not in text


def test_a_third_party_providers_options_are_not_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_test_provider(tmp_path, monkeypatch)
    monkeypatch.setenv("CERTMAN_TEST_TOKEN", PDNS_API_KEY)
    text = f"""
        [dns.cloud]
        type = "{TEST_PROVIDER}"
        token_env = "CERTMAN_TEST_TOKEN"

        [certificates.mx]
        domains = ["mx1.example.org"]
    """
    rendered = "\n".join(describe_config(load_config(write_config(tmp_path, text))))
    tomllib.loads(rendered)
    assert f'type = "{TEST_PROVIDER}"' in rendered
    assert "are not shown" in rendered
    assert PDNS_API_KEY not in rendered
    assert "CERTMAN_TEST_TOKEN" not in rendered
