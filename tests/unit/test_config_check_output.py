"""`certman config check` prints the effective config and never a secret's value."""

from __future__ import annotations

from pathlib import Path

import pytest

from certman.cli.main import main

SECRETS = ("SUPERSECRETVALUE12345678==", "EABSECRETXYZ", "PDNSSECRETXYZ")


def _write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tsig = tmp_path / "tsig.key"
    tsig.write_text(
        f'key "certman-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRETS[0]}";\n}};\n'
    )
    tsig.chmod(0o600)
    monkeypatch.setenv("EABKEY", SECRETS[1])
    monkeypatch.setenv("PDNSKEY", SECRETS[2])
    config = tmp_path / "certman.toml"
    config.write_text(
        f"""
[acme.eab]
kid = "kid1"
hmac_key_env = "EABKEY"
[dns.bind]
type = "rfc2136"
server = "192.0.2.53"
tsig_key_file = "{tsig}"
[dns.pdns]
type = "powerdns"
api_url = "http://127.0.0.1:8081"
api_key_env = "PDNSKEY"
[certificates.mx1]
domains = ["mx1.example.org"]
dns_provider = "bind"
"""
    )
    return config


def test_config_check_shows_where_secrets_come_from_but_not_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, monkeypatch)
    tsig = tmp_path / "tsig.key"
    assert main(["--config", str(config), "config", "check"]) == 0
    out = capsys.readouterr().out
    for secret in SECRETS:
        assert secret not in out
    lines = out.splitlines()
    assert 'server = "192.0.2.53"' in lines
    assert 'tsig_key_name = "certman-key"' in lines
    assert f'tsig_key_file = "{tsig}"' in lines
    assert 'api_key_env = "PDNSKEY"' in lines
    assert 'hmac_key_env = "EABKEY"' in lines
    # The secret values themselves have no key of their own in the output.
    assert not [line for line in lines if line.startswith(("api_key =", "secret", "hmac_key ="))]
    assert f"{config}: OK" in out


def test_config_check_output_fed_back_to_config_check_gives_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path, monkeypatch)
    assert main(["--config", str(config), "config", "check"]) == 0
    first = capsys.readouterr().out
    echoed = tmp_path / "echoed.toml"
    echoed.write_text(first)  # the whole output, verbatim: it is TOML (the OK line a comment)
    assert main(["--config", str(echoed), "config", "check"]) == 0
    second = capsys.readouterr().out
    assert second.splitlines()[1:-1] == first.splitlines()[1:-1]
    for secret in SECRETS:
        assert secret not in second
