"""Malformed configurations: each one fails with a ONE-line ConfigError (exit code 2) that names
the file, the TOML key path and what was expected, before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from test_config_support import (
    TEST_PROVIDER,
    assert_config_error,
    install_test_provider,
    write_toml,
)

from certman.config.load import load_config as load
from certman.errors import ConfigError

PROVIDER = f'[dns.main]\ntype = "{TEST_PROVIDER}"\n'
CERT = '[certificates.mx]\ndomains = ["mx1.example.org"]\n'
EAB = '[acme.eab]\nkid = "kid-1"\n'


@dataclass(frozen=True)
class Case:
    id: str
    toml: str
    key: str
    expected: tuple[str, ...]


def case(id: str, toml: str, key: str, *expected: str) -> Case:
    return Case(id, toml, key, expected)


CASES = [
    # -- unknown keys, with a suggestion ---------------------------------------------------------
    case(
        "unknown-top-level-table",
        PROVIDER + '[certificate.mx]\ndomains = ["mx1.example.org"]\n',
        "certificate",
        "unknown key",
        "did you mean 'certificates'?",
    ),
    case(
        "unknown-certificate-key",
        PROVIDER + CERT + 'key_typ = "rsa2048"\n',
        "certificates.mx.key_typ",
        "unknown key",
        "did you mean 'key_type'?",
        "valid keys here:",
    ),
    case(
        "unknown-acme-key",
        '[acme]\ndiretory = "https://ca.example/dir"\n',
        "acme.diretory",
        "did you mean 'directory'?",
    ),
    case(
        "unknown-dane-key",
        PROVIDER + CERT + "[certificates.mx.dane]\nport = [25]\n",
        "certificates.mx.dane.port",
        "did you mean 'ports'?",
    ),
    # -- wrong types ---------------------------------------------------------------------------
    case(
        "string-for-int",
        '[acme]\nretries = "4"\n',
        "acme.retries",
        "expected an integer, got a string",
    ),
    case(
        "int-for-bool",
        "[propagation]\nvalidate = 1\n",
        "propagation.validate",
        "expected true or false, got an integer",
    ),
    case(
        "bool-for-int",
        "[dhparams]\ninterval_days = true\n",
        "dhparams.interval_days",
        "expected an integer, got true/false",
    ),
    case(
        "bool-in-int-list",
        PROVIDER + CERT + "[certificates.mx.dane]\nports = [true]\n",
        "certificates.mx.dane.ports[0]",
        "expected an integer, got true/false",
    ),
    case(
        "float-for-int",
        PROVIDER + CERT + "[certificates.mx.dane]\nttl = 300.5\n",
        "certificates.mx.dane.ttl",
        "expected an integer, got a number",
    ),
    case(
        "string-for-number",
        '[propagation]\ntimeout = "10s"\n',
        "propagation.timeout",
        "expected a number, got a string",
    ),
    case(
        "string-for-list",
        PROVIDER + '[certificates.mx]\ndomains = "mx1.example.org"\n',
        "certificates.mx.domains",
        "expected a list of strings, got a string",
    ),
    case(
        "certificate-not-a-table",
        'certificates = { mx = "mx1.example.org" }\n',
        "certificates.mx",
        "expected a table, got a string",
    ),
    case(
        "int-for-choice",
        PROVIDER + CERT + "challenge = 1\n",
        "certificates.mx.challenge",
        "expected one of dns-01, http-01, got an integer",
    ),
    # -- missing required keys -----------------------------------------------------------------
    case(
        "missing-domains",
        PROVIDER + '[certificates.mx]\nkey_type = "rsa2048"\n',
        "certificates.mx.domains",
        "missing required key, expected a list of strings",
    ),
    case(
        "missing-provider-type",
        '[dns.main]\nzone = "example.org"\n',
        "dns.main.type",
        "missing required key, expected a string",
    ),
    case(
        "missing-eab-kid",
        '[acme.eab]\nhmac_key_env = "CERTMAN_TEST_TOKEN"\n',
        "acme.eab.kid",
        "missing required key",
    ),
    case(
        "empty-domains",
        PROVIDER + "[certificates.mx]\ndomains = []\n",
        "certificates.mx.domains",
        "expected a non-empty list",
    ),
    # -- domain names --------------------------------------------------------------------------
    case(
        "empty-label",
        PROVIDER + '[certificates.mx]\ndomains = ["mx1..example"]\n',
        "certificates.mx.domains[0]",
        "expected a fully qualified domain name, got 'mx1..example'",
    ),
    case(
        "leading-hyphen",
        PROVIDER + '[certificates.mx]\ndomains = ["mx1.example.org", "-bad.example"]\n',
        "certificates.mx.domains[1]",
        "expected a fully qualified domain name, got '-bad.example'",
    ),
    case(
        "label-over-63",
        PROVIDER + f'[certificates.mx]\ndomains = ["{"a" * 64}.example.org"]\n',
        "certificates.mx.domains[0]",
        "expected a fully qualified domain name",
    ),
    case(
        "single-label",
        PROVIDER + '[certificates.mx]\ndomains = ["localhost"]\n',
        "certificates.mx.domains[0]",
        "expected a fully qualified domain name, got 'localhost'",
    ),
    case(
        "duplicate-domain",
        PROVIDER + '[certificates.mx]\ndomains = ["mx1.example.org", "MX1.example.org."]\n',
        "certificates.mx.domains[1]",
        "expected each name once",
    ),
    case(
        "wildcard-dane-host",
        PROVIDER + CERT + '[certificates.mx.dane]\nhosts = ["*.example.org"]\n',
        "certificates.mx.dane.hosts[0]",
        "expected a concrete host name (no wildcard), got '*.example.org'",
    ),
    case(
        "dane-only-wildcards",
        PROVIDER + '[certificates.mx]\ndomains = ["*.example.org"]\n[certificates.mx.dane]\n',
        "certificates.mx.dane.hosts",
        "expected at least one host name",
    ),
    case(
        "unquoted-dotted-zone",
        PROVIDER + CERT + '[certificates.mx.zones]\nexample.org = "main"\n',
        "certificates.mx.zones.example",
        'quote dotted zones: "example.org" = "NAME"',
    ),
    case(
        "bad-certificate-name",
        PROVIDER + '[certificates."../etc"]\ndomains = ["mx1.example.org"]\n',
        'certificates."../etc"',
        "expected a certificate name of letters, digits",
    ),
    # -- provider references -------------------------------------------------------------------
    case(
        "unknown-dns-provider",
        PROVIDER + CERT + 'dns_provider = "mian"\n',
        "certificates.mx.dns_provider",
        "unknown DNS provider 'mian' (providers: main)",
    ),
    case(
        "unknown-zone-provider",
        PROVIDER + CERT + '[certificates.mx.zones]\n"example.org" = "other"\n',
        'certificates.mx.zones."example.org"',
        "unknown DNS provider 'other' (providers: main)",
    ),
    case(
        "unknown-dane-provider",
        PROVIDER + CERT + '[certificates.mx.dane]\ndns_provider = "other"\n',
        "certificates.mx.dane.dns_provider",
        "unknown DNS provider 'other' (providers: main)",
    ),
    case(
        "no-provider-for-dns-01",
        CERT,
        "certificates.mx.dns_provider",
        "no DNS provider for mx1.example.org (needed for dns-01)",
    ),
    case(
        "unknown-provider-type",
        '[dns.main]\ntype = "nosuch"\n',
        "dns.main.type",
        "unknown provider type 'nosuch'; known:",
        TEST_PROVIDER,
    ),
    # -- secrets -------------------------------------------------------------------------------
    case(
        "secret-file-missing",
        EAB + 'hmac_key_file = "@TMP@/missing.key"\n',
        "acme.eab.hmac_key_file",
        "cannot read secret file",
        "missing.key: No such file or directory",
    ),
    case(
        "secret-file-is-directory",
        EAB + 'hmac_key_file = "@TMP@"\n',
        "acme.eab.hmac_key_file",
        "cannot read secret file",
        "Is a directory",
    ),
    case(
        "secret-file-empty",
        EAB + 'hmac_key_file = "@TMP@/empty.key"\n',
        "acme.eab.hmac_key_file",
        "empty.key is empty",
    ),
    case(
        "secret-file-binary",
        EAB + 'hmac_key_file = "@TMP@/binary.key"\n',
        "acme.eab.hmac_key_file",
        "is not UTF-8 text",
    ),
    case(
        "secret-env-unset",
        EAB + 'hmac_key_env = "CERTMAN_TEST_UNSET"\n',
        "acme.eab.hmac_key_env",
        "environment variable CERTMAN_TEST_UNSET is not set or empty",
    ),
    case(
        "secret-env-bad-name",
        EAB + 'hmac_key_env = "$TOKEN"\n',
        "acme.eab.hmac_key_env",
        "expected an environment variable name",
    ),
    case(
        "secret-inline",
        EAB + 'hmac_key = "c2VjcmV0"\n',
        "acme.eab.hmac_key",
        "inline secrets are not accepted; use hmac_key_file or hmac_key_env",
    ),
    case(
        "secret-inline-in-provider",
        PROVIDER + 'token = "s3cr3t"\n',
        "dns.main.token",
        "inline secrets are not accepted",
    ),
    case(
        "secret-file-and-env",
        EAB + 'hmac_key_file = "@TMP@/eab.key"\nhmac_key_env = "CERTMAN_TEST_TOKEN"\n',
        "acme.eab.hmac_key_file",
        "give either hmac_key_file or hmac_key_env, not both",
    ),
    case(
        "secret-missing",
        EAB,
        "acme.eab.hmac_key_file",
        "missing required key, expected hmac_key_file or hmac_key_env",
    ),
    case(
        "secret-file-relative",
        EAB + 'hmac_key_file = "eab.key"\n',
        "acme.eab.hmac_key_file",
        "expected an absolute path, got 'eab.key'",
    ),
    # -- paths ---------------------------------------------------------------------------------
    case(
        "relative-state-dir",
        '[certman]\nstate_dir = "var/lib/certman"\n',
        "certman.state_dir",
        "expected an absolute path, got 'var/lib/certman'",
    ),
    case(
        "relative-install-directory",
        PROVIDER + CERT + '[certificates.mx.postfix]\ndirectory = "~/certs"\n',
        "certificates.mx.postfix.directory",
        "expected an absolute path",
    ),
    case(
        "ca-bundle-missing",
        '[acme]\nca_bundle = "@TMP@/nosuch.pem"\n',
        "acme.ca_bundle",
        "nosuch.pem does not exist",
    ),
    # -- keys and TLSA -------------------------------------------------------------------------
    case(
        "bad-key-type",
        PROVIDER + CERT + 'key_type = "rsa1024"\n',
        "certificates.mx.key_type",
        "expected one of rsa2048, rsa3072, rsa4096, ecdsa-p256, ecdsa-p384, got 'rsa1024'",
    ),
    case(
        "two-rsa-key-types",
        PROVIDER + CERT + 'key_type = ["rsa2048", "rsa4096"]\n',
        "certificates.mx.key_type",
        "expected one key type, or one RSA and one ECDSA type",
    ),
    case(
        "bad-tlsa-spec",
        PROVIDER + CERT + '[certificates.mx.dane]\nrecords = ["3 1 1", "3 0 9"]\n',
        "certificates.mx.dane.records[1]",
        "expected one of '3 1 1', '3 1 2', '2 1 1', got '3 0 9'",
    ),
    case(
        "issuer-record-not-allowed",
        PROVIDER + CERT + '[certificates.mx.dane]\nrecords = ["3 1 1", "2 1 1"]\n',
        "certificates.mx.dane.records",
        "set allow_issuer_records = true",
    ),
    case(
        "dane-port-out-of-range",
        PROVIDER + CERT + "[certificates.mx.dane]\nports = [25, 70000]\n",
        "certificates.mx.dane.ports[1]",
        "expected a value <= 65535, got 70000",
    ),
    case(
        "dane-ttl-zero",
        PROVIDER + CERT + "[certificates.mx.dane]\nttl = 0\n",
        "certificates.mx.dane.ttl",
        "expected a value >= 1, got 0",
    ),
    case(
        "renew-fraction-out-of-range",
        PROVIDER + CERT + "renew_fraction = 1.5\n",
        "certificates.mx.renew_fraction",
        "expected a value <= 0.99, got 1.5",
    ),
    # -- challenges ----------------------------------------------------------------------------
    case(
        "bad-challenge",
        PROVIDER + CERT + 'challenge = "tls-alpn-01"\n',
        "certificates.mx.challenge",
        "expected one of dns-01, http-01, got 'tls-alpn-01'",
    ),
    case(
        "http-01-without-http-table",
        CERT + 'challenge = "http-01"\n',
        "certificates.mx.http",
        "expected a [http] table with webroot or listen",
    ),
    case(
        "http-table-with-dns-01",
        PROVIDER + CERT + '[certificates.mx.http]\nwebroot = "/var/www"\n',
        "certificates.mx.http",
        'expected no [http] table unless challenge = "http-01"',
    ),
    case(
        "http-webroot-and-listen",
        CERT + 'challenge = "http-01"\n'
        '[certificates.mx.http]\nwebroot = "/var/www"\nlisten = "0.0.0.0"\n',
        "certificates.mx.http.webroot",
        "expected exactly one of webroot",
    ),
    case(
        "http-port-out-of-range",
        CERT + 'challenge = "http-01"\n[certificates.mx.http]\nlisten = "::"\nport = 0\n',
        "certificates.mx.http.port",
        "expected a value >= 1, got 0",
    ),
    case(
        "http-listen-not-an-address",
        CERT + 'challenge = "http-01"\n[certificates.mx.http]\nlisten = "localhost"\n',
        "certificates.mx.http.listen",
        "expected an IP address, got 'localhost'",
    ),
    case(
        "http-01-wildcard",
        '[certificates.mx]\ndomains = ["*.example.org"]\nchallenge = "http-01"\n'
        '[certificates.mx.http]\nwebroot = "/var/www"\n',
        "certificates.mx.domains[0]",
        'a wildcard (*.example.org) needs challenge = "dns-01"',
    ),
    # -- dhparams ------------------------------------------------------------------------------
    case(
        "dhparams-1024-bits",
        '[dhparams]\nmode = "generate"\n[[dhparams.file]]\npath = "/etc/postfix/dh.pem"\n'
        "bits = 1024\n",
        "dhparams.file[0].bits",
        "expected 2048, 3072, 4096, 6144 or 8192, got 1024",
    ),
    case(
        "dhparams-generate-without-files",
        '[dhparams]\nmode = "generate"\n',
        "dhparams.file",
        "mode 'generate' needs at least one [[dhparams.file]]",
    ),
    case(
        "dhparams-file-not-a-table",
        '[dhparams]\nfile = ["/etc/postfix/dh.pem"]\n',
        "dhparams.file[0]",
        "expected a table, got a string",
    ),
    case(
        "dhparams-nice-out-of-range",
        "[dhparams]\nnice = 20\n",
        "dhparams.nice",
        "expected a value <= 19, got 20",
    ),
    # -- global, acme, postfix -----------------------------------------------------------------
    case(
        "directory-not-a-url",
        '[acme]\ndirectory = "acme-v02.api.letsencrypt.org/directory"\n',
        "acme.directory",
        "expected an https:// URL, got 'acme-v02.api.letsencrypt.org/directory'",
    ),
    case(
        "directory-without-host",
        '[acme]\ndirectory = "https:///directory"\n',
        "acme.directory",
        "expected an https:// URL",
    ),
    case(
        "email-without-at",
        '[acme]\nemail = "hostmaster.example.org"\n',
        "acme.email",
        "expected an e-mail address like name@example.org, got 'hostmaster.example.org'",
    ),
    case(
        "email-empty-local-part",
        '[acme]\nemail = "@example.org"\n',
        "acme.email",
        "expected an e-mail address",
    ),
    case(
        "email-bad-domain",
        '[acme]\nemail = "hostmaster@example..org"\n',
        "acme.email",
        "expected an e-mail address",
    ),
    case(
        "resolver-not-an-address",
        '[certman]\nresolvers = ["127.0.0.53", "resolver.example"]\n',
        "certman.resolvers[1]",
        "expected an IP address, optionally @PORT, got 'resolver.example'",
    ),
    case(
        "resolver-port-out-of-range",
        '[certman]\nresolvers = ["127.0.0.53@99999"]\n',
        "certman.resolvers[0]",
        "expected an IP address, optionally @PORT",
    ),
    case(
        "account-key-type-bad",
        '[acme]\naccount_key_type = "ed25519"\n',
        "acme.account_key_type",
        "expected one of rsa2048",
        "got 'ed25519'",
    ),
    case(
        "acme-timeout-zero",
        "[acme]\ntimeout = 0\n",
        "acme.timeout",
        "expected a value >= 1",
    ),
    case(
        "two-certificates-one-target",
        PROVIDER + CERT + '[certificates.sub]\ndomains = ["mail.example.org"]\n'
        '[certificates.sub.postfix]\ntargets = ["submission/inet", "main.cf"]\n',
        "certificates.sub.postfix.targets",
        "main.cf of /etc/postfix is already the target of certificates.mx",
    ),
    case(
        "two-certificates-one-service",
        PROVIDER
        + '[certificates.a]\ndomains = ["a.example.org"]\n'
        + '[certificates.a.postfix]\ntargets = ["submission/inet"]\n'
        + '[certificates.b]\ndomains = ["b.example.org"]\n'
        + '[certificates.b.postfix]\ntargets = ["sni:b.example.org", "submission/inet"]\n',
        "certificates.b.postfix.targets",
        "submission/inet of /etc/postfix is already the target of certificates.a",
    ),
    case(
        "two-certificates-one-tlsa-name",
        PROVIDER
        + CERT
        + "[certificates.mx.dane]\n"
        + '[certificates.sub]\ndomains = ["mail.example.org"]\n'
        + '[certificates.sub.dane]\nhosts = ["mx1.example.org"]\n'
        + '[certificates.sub.postfix]\ntargets = ["submission/inet"]\n',
        "certificates.sub.dane",
        "_25._tcp.mx1.example.org is already published by certificates.mx",
    ),
    case(
        "unknown-target",
        PROVIDER + CERT + '[certificates.mx.postfix]\ntargets = ["master.cf"]\n',
        "certificates.mx.postfix.targets[0]",
        '"submission/inet"',
        "got 'master.cf'",
    ),
    case(
        "target-twice",
        PROVIDER
        + CERT
        + '[certificates.mx.postfix]\ntargets = ["sni:a.example.org", "sni:A.example.org"]\n',
        "certificates.mx.postfix.targets[1]",
        "sni:a.example.org is listed twice",
    ),
    case(
        "reload-command-not-strings",
        "[postfix]\nreload_command = [1]\n",
        "postfix.reload_command[0]",
        "expected a non-empty string, got an integer",
    ),
]


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    install_test_provider(tmp_path, monkeypatch)
    (tmp_path / "eab.key").write_text("c2VjcmV0\n")
    (tmp_path / "empty.key").write_text(" \n")
    (tmp_path / "binary.key").write_bytes(b"\xff\xfe\x00secret")
    for secret in ("eab.key", "empty.key", "binary.key"):
        (tmp_path / secret).chmod(0o600)
    monkeypatch.delenv("CERTMAN_TEST_UNSET", raising=False)
    monkeypatch.setenv("CERTMAN_TEST_TOKEN", "token-value")
    return tmp_path


def test_there_are_at_least_twenty_malformed_cases() -> None:
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_malformed_config_fails_with_one_line_naming_file_key_and_expectation(
    config_dir: Path, bad: Case
) -> None:
    path = write_toml(config_dir / "certman.toml", bad.toml, config_dir)
    with pytest.raises(ConfigError) as error:
        load(path)
    assert_config_error(error, path, bad.key, *bad.expected)


def test_error_never_shows_a_secret_value(config_dir: Path) -> None:
    path = write_toml(
        config_dir / "certman.toml",
        EAB + 'hmac_key = "SUPER-SECRET-VALUE"\n',
        config_dir,
    )
    with pytest.raises(ConfigError) as error:
        load(path)
    assert "SUPER-SECRET-VALUE" not in str(error.value)


def test_invalid_toml_names_file_and_line(config_dir: Path) -> None:
    path = write_toml(config_dir / "certman.toml", '[acme]\ndirectory = "https://x\n', config_dir)
    with pytest.raises(ConfigError) as error:
        load(path)
    assert_config_error(error, path, None, "not valid TOML", "line 2")


def test_duplicate_table_is_invalid_toml(config_dir: Path) -> None:
    path = write_toml(
        config_dir / "certman.toml", PROVIDER + CERT + CERT.replace("mx1", "mx2"), config_dir
    )
    with pytest.raises(ConfigError) as error:
        load(path)
    assert_config_error(error, path, None, "not valid TOML", "line 5")


def test_non_utf8_config_is_refused(config_dir: Path) -> None:
    path = config_dir / "certman.toml"
    path.write_bytes(b'[acme]\nemail = "h\xe9@example.org"\n')
    with pytest.raises(ConfigError) as error:
        load(path)
    assert_config_error(error, path, None, "not valid TOML", "utf-8")


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nosuch.toml"
    with pytest.raises(ConfigError) as error:
        load(path)
    assert_config_error(error, path, None, "cannot read config: No such file or directory")
