"""Valid configurations parse into the expected dataclasses, defaults applied, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_config_support import (
    TEST_PROVIDER,
    assert_config_error,
    fake_options,
    install_test_provider,
    write_toml,
)

from certman.config.load import config_path
from certman.config.load import load_config as load
from certman.config.schema import (
    DEFAULT_CONFIG,
    AcmeConfig,
    CertificateConfig,
    Challenge,
    Config,
    DaneConfig,
    DhFile,
    DhMode,
    DhParamsConfig,
    EabConfig,
    HttpChallengeConfig,
    InstallConfig,
    Layout,
    PostfixConfig,
    PropagationConfig,
    ProviderConfig,
    Target,
    TargetKind,
    TlsaParams,
)
from certman.config.toml import Secret
from certman.errors import ConfigError
from certman.model import KeyType

FULL = f"""
    [certman]
    state_dir = "@TMP@/state"
    resolvers = ["127.0.0.53", "::1@5353"]

    [acme]
    directory = "https://acme.example.net/dir"
    email = "hostmaster@example.org"
    ca_bundle = "@TMP@/ca.pem"
    account_key = "@TMP@/keys/account.key"
    account_key_type = "rsa3072"
    profile = "tlsserver"
    preferred_chain = "ISRG Root X1"
    timeout = 10
    retries = 2

    [acme.eab]
    kid = "kid-1"
    hmac_key_file = "@TMP@/eab.key"

    [dns.primary]
    type = "{TEST_PROVIDER}"
    zone = "example.org"

    [dns.cloud]
    type = "{TEST_PROVIDER}"
    token_env = "CERTMAN_TEST_TOKEN"

    [propagation]
    timeout = 120
    interval = 0.5
    query_timeout = 2
    min_wait = 5
    validate = false

    [postfix]
    config_dir = "@TMP@/postfix-out"
    postconf = "/usr/sbin/postconf"
    postfix = "/usr/sbin/postfix"
    reload_command = ["/usr/sbin/postmulti", "-i", "postfix-out", "-p", "reload"]

    [certificates.mx]
    domains = ["MX1.Example.org.", "*.mail.example.org"]
    key_type = ["ecdsa-p384", "rsa2048"]
    dns_provider = "primary"
    renew_fraction = 0.5
    ari = false
    profile = "shortlived"

    [certificates.mx.zones]
    "mail.example.org" = "cloud"

    [certificates.mx.dane]
    hosts = ["mx1.example.org", "mx2.example.org"]
    ports = [25, 465, 25]
    records = ["3 1 1", "3  1 2", "2 1 1"]
    allow_issuer_records = true
    ttl = 300
    margin = 30
    dns_provider = "cloud"
    probe_address = "192.0.2.25"
    rollover_days = 90

    [certificates.mx.postfix]
    layout = "key-cert"
    directory = "/etc/postfix-out/certman"
    set_parameters = false

    [certificates.web]
    domains = ["www.example.org"]
    challenge = "http-01"

    [certificates.web.http]
    listen = "::"
    port = 8080

    [certificates.web.postfix]
    targets = ["submission/inet", "sni:WWW.example.org"]
    probe_address = "192.0.2.26"

    [dhparams]
    mode = "generate"
    interval_days = 14
    postfix_parameter = "smtpd_tls_dh1024_param_file"
    nice = 10
    workers = 1

    [[dhparams.file]]
    path = "/etc/postfix/dh2048.pem"

    [[dhparams.file]]
    path = "/etc/postfix/dh4096.pem"
    bits = 4096
"""

MINIMAL = f"""
    [dns.main]
    type = "{TEST_PROVIDER}"

    [certificates.mx]
    domains = ["mx1.example.org"]
"""


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    install_test_provider(tmp_path, monkeypatch)
    (tmp_path / "eab.key").write_text("c2VjcmV0\n")
    (tmp_path / "eab.key").chmod(0o600)
    (tmp_path / "postfix-out").mkdir()
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("CERTMAN_TEST_TOKEN", "token-value")
    return tmp_path


def expected_full(tmp: Path, path: Path) -> Config:
    web_install = InstallConfig(
        Layout.CHAIN_FILES,
        Path("/etc/postfix/certman"),
        True,
        tmp / "postfix-out",
        (
            Target(TargetKind.SERVICE, service="submission/inet"),
            Target.parse("sni:www.example.org"),
        ),  # type: ignore[arg-type]
        "192.0.2.26",
    )
    mx = CertificateConfig(
        name="mx",
        domains=("mx1.example.org", "*.mail.example.org"),
        key_types=(KeyType.ECDSA_P384, KeyType.RSA2048),
        challenge=Challenge.DNS01,
        dns_provider="primary",
        zone_providers={"mail.example.org": "cloud"},
        http=None,
        dane=DaneConfig(
            hosts=("mx1.example.org", "mx2.example.org"),
            ports=(25, 465),
            records=(TlsaParams(3, 1, 1), TlsaParams(3, 1, 2), TlsaParams(2, 1, 1)),
            ttl=300,
            margin=30.0,
            provider="cloud",
            probe_address="192.0.2.25",
            rollover_days=90,
        ),
        install=InstallConfig(
            Layout.KEY_CERT, Path("/etc/postfix-out/certman"), False, tmp / "postfix-out"
        ),
        renew_fraction=0.5,
        use_ari=False,
        profile="shortlived",
    )
    web = CertificateConfig(
        name="web",
        domains=("www.example.org",),
        key_types=(KeyType.ECDSA_P256,),
        challenge=Challenge.HTTP01,
        dns_provider=None,
        zone_providers={},
        http=HttpChallengeConfig(None, "::", 8080),
        dane=None,
        install=web_install,
        renew_fraction=None,
        use_ari=True,
        profile=None,
    )
    return Config(
        path=path,
        state_dir=tmp / "state",
        resolvers=("127.0.0.53", "::1@5353"),
        acme=AcmeConfig(
            directory="https://acme.example.net/dir",
            email="hostmaster@example.org",
            ca_bundle=tmp / "ca.pem",
            account_key=tmp / "keys" / "account.key",
            account_key_type=KeyType.RSA3072,
            eab=EabConfig("kid-1", Secret(f"file:{tmp / 'eab.key'}", "")),
            profile="tlsserver",
            preferred_chain="ISRG Root X1",
            timeout=10.0,
            retries=2,
        ),
        providers={
            "primary": ProviderConfig("primary", TEST_PROVIDER, fake_options("example.org")),
            "cloud": ProviderConfig(
                "cloud", TEST_PROVIDER, fake_options(None, Secret("env:CERTMAN_TEST_TOKEN", ""))
            ),
        },
        propagation=PropagationConfig(120.0, 0.5, 2.0, 5.0, False),
        postfix=PostfixConfig(
            tmp / "postfix-out",
            "/usr/sbin/postconf",
            "/usr/sbin/postfix",
            ("/usr/sbin/postmulti", "-i", "postfix-out", "-p", "reload"),
        ),
        certificates={"mx": mx, "web": web},
        dhparams=DhParamsConfig(
            mode=DhMode.GENERATE,
            files=(
                DhFile(Path("/etc/postfix/dh2048.pem"), 2048),
                DhFile(Path("/etc/postfix/dh4096.pem"), 4096),
            ),
            interval_days=14,
            postfix_parameter="smtpd_tls_dh1024_param_file",
            nice=10,
            workers=1,
        ),
    )


def test_full_config_parses_into_expected_dataclasses(config_dir: Path) -> None:
    path = write_toml(config_dir / "certman.toml", FULL, config_dir)
    config = load(path)
    assert config == expected_full(config_dir, path)
    assert list(config.certificates) == ["mx", "web"]  # file order
    assert list(config.providers) == ["primary", "cloud"]


def test_secret_values_are_read_but_never_shown(config_dir: Path) -> None:
    config = load(write_toml(config_dir / "certman.toml", FULL, config_dir))
    assert config.acme.eab is not None
    assert config.acme.eab.hmac_key.value == "c2VjcmV0"  # stripped of the newline
    assert "c2VjcmV0" not in repr(config)
    assert "token-value" not in repr(config)
    assert str(config.acme.eab.hmac_key) == f"<secret from file:{config_dir / 'eab.key'}>"


def test_minimal_config_gets_every_default(config_dir: Path) -> None:
    path = write_toml(config_dir / "certman.toml", MINIMAL, config_dir)
    config = load(path)
    assert config.state_dir == Path("/var/lib/certman")
    assert config.resolvers == ()
    assert config.acme == AcmeConfig(
        directory="https://acme-v02.api.letsencrypt.org/directory",
        email=None,
        ca_bundle=None,
        account_key=Path("/var/lib/certman/acme/account.key"),
        account_key_type=KeyType.ECDSA_P256,
        eab=None,
        profile=None,
        preferred_chain=None,
        timeout=30.0,
        retries=4,
    )
    assert config.propagation == PropagationConfig()
    assert config.postfix == PostfixConfig(Path("/etc/postfix"), "postconf", "postfix", None)
    assert config.postfix.reload_argv() == ["postfix", "-c", "/etc/postfix", "reload"]
    assert config.dhparams == DhParamsConfig(DhMode.OFF, (), 30, None, 19, 2)
    mx = config.certificate("mx")
    assert mx.key_types == (KeyType.ECDSA_P256,)
    assert mx.challenge is Challenge.DNS01
    assert mx.dns_provider == "main"  # the only provider is the default
    assert mx.dane is None
    assert mx.install == InstallConfig(Layout.CHAIN_FILES, Path("/etc/postfix/certman"), True)
    assert (mx.renew_fraction, mx.use_ari, mx.profile) == (None, True, None)


def test_empty_dane_table_means_3_1_1_on_port_25_for_every_concrete_name(
    config_dir: Path,
) -> None:
    text = f"""
        [dns.main]
        type = "{TEST_PROVIDER}"
        [certificates.mx]
        domains = ["mx1.example.org", "*.example.org", "mx2.example.org"]
        [certificates.mx.dane]
    """
    dane = load(write_toml(config_dir / "c.toml", text, config_dir)).certificate("mx").dane
    assert dane == DaneConfig(
        hosts=("mx1.example.org", "mx2.example.org"),
        ports=(25,),
        records=(TlsaParams(3, 1, 1),),
        ttl=None,
        margin=60.0,
        provider="main",
        probe_address="127.0.0.1",
        rollover_days=0,
    )
    assert dane.tlsa_names() == ["_25._tcp.mx1.example.org", "_25._tcp.mx2.example.org"]


def test_disabled_dane_table_keeps_its_settings_unchecked(config_dir: Path) -> None:
    text = MINIMAL + '[certificates.mx.dane]\nenabled = false\ndns_provider = "later"\n'
    assert load(write_toml(config_dir / "c.toml", text, config_dir)).certificate("mx").dane is None


def test_dane_provider_follows_the_zone_table(config_dir: Path) -> None:
    text = f"""
        [dns.a]
        type = "{TEST_PROVIDER}"
        [dns.b]
        type = "{TEST_PROVIDER}"
        [certificates.mx]
        domains = ["mx1.example.org", "mx1.example.net"]
        dns_provider = "a"
        [certificates.mx.zones]
        "example.org" = "b"
        [certificates.mx.dane]
        hosts = ["mx1.example.org"]
    """
    mx = load(write_toml(config_dir / "c.toml", text, config_dir)).certificate("mx")
    assert mx.dane is not None
    assert mx.dane.provider == "b"
    assert mx.provider_for("mx1.example.org") == "b"
    assert mx.provider_for("mx1.example.net") == "a"


def test_provider_for_takes_the_longest_zone_suffix(config_dir: Path) -> None:
    text = f"""
        [dns.a]
        type = "{TEST_PROVIDER}"
        [dns.b]
        type = "{TEST_PROVIDER}"
        [certificates.mx]
        domains = ["mx1.mail.example.org", "www.example.org"]
        [certificates.mx.zones]
        "example.org" = "a"
        "mail.example.org" = "b"
    """
    mx = load(write_toml(config_dir / "c.toml", text, config_dir)).certificate("mx")
    assert mx.dns_provider is None  # two providers, none named: the zones table decides
    assert mx.provider_for("mx1.mail.example.org") == "b"
    assert mx.provider_for("_acme-challenge.www.example.org") == "a"
    assert mx.provider_for("notmail.example.org") == "a"
    assert mx.provider_for("example.com") is None


def test_unknown_certificate_name_lists_the_configured_ones(config_dir: Path) -> None:
    path = write_toml(config_dir / "c.toml", MINIMAL, config_dir)
    with pytest.raises(ConfigError) as error:
        load(path).certificate("web")
    assert_config_error(error, path, None, "no certificate named 'web' (configured: mx)")


def test_load_writes_nothing(config_dir: Path) -> None:
    path = write_toml(config_dir / "certman.toml", FULL, config_dir)
    before = sorted(os.walk(config_dir))
    stat_before = {p: p.stat().st_mtime_ns for p in config_dir.rglob("*")}
    load(path)
    assert not (config_dir / "state").exists()
    assert not (config_dir / "keys").exists()
    assert sorted(os.walk(config_dir)) == before
    assert {p: p.stat().st_mtime_ns for p in config_dir.rglob("*")} == stat_before


def test_config_path_prefers_option_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CERTMAN_CONFIG", raising=False)
    assert config_path(None) == DEFAULT_CONFIG == Path("/etc/certman/certman.toml")
    monkeypatch.setenv("CERTMAN_CONFIG", "/srv/certman.toml")
    assert config_path(None) == Path("/srv/certman.toml")
    assert config_path("/tmp/x.toml") == Path("/tmp/x.toml")
    monkeypatch.setenv("CERTMAN_CONFIG", "")
    assert config_path(None) == DEFAULT_CONFIG


def test_tlsa_params_print_as_in_a_zone_file() -> None:
    assert str(TlsaParams(3, 1, 1)) == "3 1 1"
    assert KeyType.RSA4096.is_rsa
    assert not KeyType.ECDSA_P384.is_rsa
