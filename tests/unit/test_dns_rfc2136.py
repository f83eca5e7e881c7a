"""rfc2136 options: TSIG keys from BIND key files or the environment, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from certman.config.toml import Section
from certman.dns.provider import ProviderContext
from certman.dns.providers.rfc2136 import Rfc2136Options, Rfc2136Provider, TsigKey, parse_tsig_key
from certman.errors import ConfigError

SECRET = "3bHXNP3SFdrqMxFNCVjFOqJ1evUQfgsAyXXvONVc1Rg="
KEYGEN = f"""key "certman-key" {{
\talgorithm hmac-sha256;
\tsecret "{SECRET}";
}};
"""


def parse(data: dict[str, object]) -> Rfc2136Options:
    section = Section(Path("/etc/certman/certman.toml"), "dns.bind", data)
    options = Rfc2136Provider.parse_options(section)
    section.finish()
    return options


def test_tsig_keygen_output_is_read() -> None:
    key = parse_tsig_key(KEYGEN, "file:/k")
    assert key == TsigKey("certman-key", "hmac-sha256", SECRET, "file:/k")
    assert key.secret == SECRET


def test_one_key_of_several_is_chosen_by_name() -> None:
    other = KEYGEN.replace("certman-key", "other").replace("sha256", "sha512")
    text = f"# keys\n{KEYGEN}\n// second\n{other}"
    assert parse_tsig_key(text, "f", "other").algorithm == "hmac-sha512"
    with pytest.raises(ValueError, match="several keys; choose one with tsig_key_name"):
        parse_tsig_key(text, "f")
    with pytest.raises(ValueError, match="no key named 'third'"):
        parse_tsig_key(text, "f", "third")


def test_nsupdate_style_keys_are_read() -> None:
    assert parse_tsig_key(f"hmac-sha512:k1:{SECRET}", "env:K") == TsigKey(
        "k1", "hmac-sha512", SECRET, "env:K"
    )
    assert parse_tsig_key(f"k2:{SECRET}", "env:K").algorithm == "hmac-sha256"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (KEYGEN.replace("hmac-sha256", "hmac-md5"), "algorithm 'hmac-md5' not supported"),
        (KEYGEN.replace(SECRET, "not*base64"), "is not valid base64"),
        ("just-a-secret", "expected a BIND key block"),
        ('key "k" { algorithm hmac-sha256; };', "lacks an algorithm or secret"),
    ],
)
def test_bad_keys_are_refused_without_showing_the_secret(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_tsig_key(text, "f")
    assert SECRET not in str(caught.value) and "not*base64" not in str(caught.value)


def test_options_read_the_key_file_and_keep_the_secret_out_of_reprs(tmp_path: Path) -> None:
    key_file = tmp_path / "certman.key"
    key_file.write_text(KEYGEN)
    key_file.chmod(0o600)
    options = parse({"server": "192.0.2.1", "zone": "Example.COM.", "tsig_key_file": str(key_file)})
    assert options.zone == "example.com" and options.port == 53
    assert options.tsig is not None and options.tsig.secret == SECRET
    provider = Rfc2136Provider("bind", options, ProviderContext())
    assert SECRET not in repr(options) and SECRET not in repr(provider)


def test_options_read_the_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTMAN_TSIG", f"hmac-sha512:certman:{SECRET}")
    options = parse({"tsig_key_env": "CERTMAN_TSIG", "timeout": 2})
    assert options.tsig == TsigKey("certman", "hmac-sha512", SECRET, "env:CERTMAN_TSIG")
    assert options.timeout == 2.0 and options.server is None


def test_config_errors_name_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"dns\.bind\.tsig_key: inline secrets are not accepted"):
        parse({"tsig_key": SECRET})
    monkeypatch.setenv("BAD_TSIG", "hmac-md5:k:" + SECRET)
    with pytest.raises(
        ConfigError, match=r"certman\.toml: dns\.bind\.tsig_key_env: algorithm 'hmac-md5'"
    ):
        parse({"tsig_key_env": "BAD_TSIG"})
    with pytest.raises(ConfigError, match=r"dns\.bind\.tsig_key_name: needs tsig_key_file"):
        parse({"tsig_key_name": "k"})
    with pytest.raises(ConfigError, match=r"dns\.bind\.srever: unknown key \(did you mean"):
        parse({"srever": "192.0.2.1"})


def test_constructing_the_provider_does_no_network_io() -> None:
    provider = Rfc2136Provider("bind", Rfc2136Options(server="192.0.2.1"), ProviderContext())
    assert provider.name == "bind"


def test_a_secret_containing_double_slashes_is_not_taken_for_a_comment() -> None:
    """Base64 secrets contain "//" often enough (seen in a testbed run); only comments go."""
    text = (
        'key "certman-key" { // made by tsig-keygen\n'
        "\talgorithm hmac-sha256; # sha256\n"
        '\tsecret "NWlpfEbAwKqU/3LiETjkCblFTwRkHnGDUyW7k//z7TU=";\n};\n'
    )
    key = parse_tsig_key(text, "file:/etc/certman/tsig.key")
    assert key.name == "certman-key" and key.algorithm == "hmac-sha256"
    assert key.secret == "NWlpfEbAwKqU/3LiETjkCblFTwRkHnGDUyW7k//z7TU="
